"""The one exception type for a user's mistake: train/eval print its message on one line
and exit with status 2 instead of showing a traceback."""


class UserError(Exception):
    """A bad config value, file, folder or checkpoint; the message says what to do."""
