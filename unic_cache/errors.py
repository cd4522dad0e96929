"""The exceptions for what a user can fix (bad input, missing weights, wrong cache) or asked for (an interrupted run)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its message as one line, without a traceback."""


class UnknownTeacher(UserError):
    """A --teacher that is no alias (it may still name a teacher of a made cache)."""


class RunInterrupted(Exception):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it did; the message says how to continue, and the
    exit code which signal asked (128 + ``signum``: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)


def reason(exc: BaseException) -> str:
    """What went wrong, without the advice that follows a ';' in our messages (a report adds its own advice)."""
    return str(exc).split(";")[0]
