"""The one error type the benchmark commands report to the user."""


class BenchError(Exception):
    """A failure the user can act on (missing tool, no device, bad input).

    The CLI prints its message, without a traceback, and exits with status 2.
    Code raises it with a message that says what was expected, what was
    found, and what to do.
    """
