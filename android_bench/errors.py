"""The error types the benchmark commands report to the user, and how messages name settings."""


class BenchError(Exception):
    """A failure the user can act on (missing tool, no device, bad input).

    The CLI prints its message, without a traceback, and exits with status 2.
    Code raises it with a message that says what was expected, what was
    found, and what to do.
    """


class BenchArgumentError(BenchError, ValueError):
    """A bad argument or setting (a value out of range, a missing model file, ...).

    A :class:`BenchError` (the CLI reports it the same way) and a
    ``ValueError`` (what ``android_bench.benchmark`` callers catch).
    """


# The command line's flag of each setting whose flag is not ``--`` + its name
# with dashes.
_FLAGS = {"out_dir": "--out", "benchmark_args": "--benchmark-arg"}


class Wording:
    """How messages name a setting: a flag of ``android_bench run`` or an argument of ``benchmark()``.

    Attributes:
      cli: True for the command line's flags (``--cpu-mask``), False for the
        function's arguments (``cpu_mask``).
    """

    def __init__(self, cli: bool):
        self.cli = cli

    def name(self, key: str) -> str:
        """The setting ``key`` (an argument name of ``benchmark()``) as the user wrote it."""
        if self.cli:
            return _FLAGS.get(key, "--" + key.replace("_", "-"))
        return "target" if key == "serial" else key

    def setting(self, key: str, meta: str) -> str:
        """How to give ``key`` a value: ``--delegate PATH`` or ``delegate=PATH``."""
        return f"{self.name(key)} {meta}" if self.cli else f"{self.name(key)}={meta}"

    @property
    def host(self) -> str:
        """How to choose this machine as the target."""
        return "--host" if self.cli else "target='host'"


CLI = Wording(cli=True)
API = Wording(cli=False)
