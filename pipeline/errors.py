"""The one exception type a user can cause, and how stages report it."""


class PipelineError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it."""
