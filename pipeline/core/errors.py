"""The one exception type a stage turns into a clean one-line error."""


class PipelineError(Exception):
    """A user-facing failure: the message says what is wrong and how to fix it."""
