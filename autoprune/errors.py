"""The one error type that reaches the user as a single line (exit code 2), never a traceback."""


class UserError(Exception):
    """Bad input: an unknown model, a missing file, an invalid option value."""
