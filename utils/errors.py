"""Errors caused by the user's input or files; ``main`` prints them as one line and exits with 2."""


class UserError(Exception):
    """Bad input: the message names the bad value and the valid choices."""


class DataError(UserError):
    """Missing or corrupt data files: the message names the files and where they must be."""
