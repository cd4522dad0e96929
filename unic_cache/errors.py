"""The one exception type for mistakes a user can fix (bad input, missing weights, wrong cache)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its message as one line, without a traceback."""
