"""Errors that the command line reports as one line (no traceback), and one-line warnings."""


class PyramidflowError(ValueError):
    """Bad user input: a message that names the problem and the valid values."""


class DamagedFileError(PyramidflowError):
    """A checkpoint or saved-model file is missing, truncated, unreadable or fails its checksum; the
    message names the file. Loading the newest checkpoint falls back to an older one on this error."""


class OutOfSpaceError(PyramidflowError):
    """A write failed because the disk is full; the message names the folder and the space needed."""


class PyramidflowWarning(UserWarning):
    """A problem worth a line on stderr that does not stop the command (the CLI prints it as one
    line: ``pyramidflow: warning: MESSAGE``)."""
