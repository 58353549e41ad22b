"""Errors the command line turns into one message and an exit status, never a traceback."""


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and how to resume it (exit status 1)."""
