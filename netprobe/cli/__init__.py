"""The command line: argument parsing, commands and the text report for a person.
"""
