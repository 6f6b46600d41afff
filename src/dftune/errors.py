"""The one exception type for mistakes a user can fix: the CLI prints it without a traceback."""


class DftuneError(Exception):
    """A user-facing error whose message names what is wrong and how to fix it."""
