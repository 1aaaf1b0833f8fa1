"""The pure core: wire format, measurement maths, E-model, ladder, check session, responder,
classifier, results, monitoring windows and hysteresis, the agent's policy.

Nothing here does I/O, imports asyncio, aiortc, aiohttp, psutil or socket, or reads the clock:
time comes in as `now` (tests/test_layout.py proves it).
"""
