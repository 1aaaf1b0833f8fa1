"""WebRTC adapters: the aiortc engine, the client that runs a check, the reflector server.
"""
