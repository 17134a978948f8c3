"""The one exception type for user mistakes: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad value, bad file): one clear sentence."""
