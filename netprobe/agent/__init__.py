"""The background agent: its runtime, local HTTP API, measuring child process and passive
signals (the policy it follows is pure, in `netprobe.core.policy`).
"""
