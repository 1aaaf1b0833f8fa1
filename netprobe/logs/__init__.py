"""JSON-lines logs and the redaction that keeps addresses and names out of them.
"""
