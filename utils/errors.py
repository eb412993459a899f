"""The exception type for mistakes the user can fix."""


class UserError(Exception):
    """Bad input, configuration or environment that the user can fix.

    Scripts print the message without a traceback and exit with status 1, so the message must
    name the offending value and the fix.
    """
