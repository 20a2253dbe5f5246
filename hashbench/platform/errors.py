"""The one error type users see.

Every error caused by user input (a file, a field, a value) is raised as
:class:`HashbenchError` with a message that names what is wrong and what
would be valid. The CLI prints the message (no traceback) and exits with
status 2.
"""


class HashbenchError(Exception):
    """A user-facing error: bad input, a missing file, an invalid setting."""

    exit_code = 2


class HashbenchWarning(UserWarning):
    """A user-facing warning (e.g. a skipped file); the CLI prints it as one line naming what was skipped."""
