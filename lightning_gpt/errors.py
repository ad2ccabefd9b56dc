"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix: the message says what is wrong and what to do."""
