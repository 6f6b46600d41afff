"""The one exception type for mistakes a user can fix: the CLI prints it without a traceback."""


class DftuneError(Exception):
    """A user-facing error whose message names what is wrong and how to fix it."""

    exit_code = 2


class RunStopped(DftuneError):
    """Training stopped early on purpose (a signal, too many non-finite steps), after saving a checkpoint."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
