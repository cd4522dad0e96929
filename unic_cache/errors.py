"""The exceptions for what a user can fix (bad input, missing weights, wrong cache) or asked for (an interrupted run)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its message as one line, without a traceback."""


class RunInterrupted(Exception):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it did; the message says how to continue."""
