"""Installing the agent as a service: one backend per platform behind one interface.
"""
