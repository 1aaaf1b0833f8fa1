"""netprobe: can this connection hold a video call right now?"""

__version__ = "0.1.0"
