"""Errors that reach the user as one line and exit code 2 (the CLI catches UsageError)."""


class UsageError(Exception):
    """Bad input from the user: unknown name, bad size, unreadable or corrupt file, ..."""
