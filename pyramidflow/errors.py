"""Errors that the command line reports as one line (no traceback)."""


class PyramidflowError(ValueError):
    """Bad user input: a message that names the problem and the valid values."""
