"""``python -m android_bench`` (also ``android-bench``): benchmark commands.

- ``run MODEL...``: latency and memory on an Android device over adb, or on
  this machine with ``--host`` (``run.py``);
- ``build-delegate --ndk PATH``: our delegate for Android (``ndk.py``);
- ``kernels``: GQ kernels against XNNPACK on this machine (``kernels.py``);
- ``profile MODEL...``: op-level profile (time per node and per op type) on
  this machine (``opprofile.py``; on a phone: ``run --op-profile``).
"""

import argparse
import sys

from android_bench import kernels, ndk, opprofile, run
from android_bench.errors import BenchError


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m android_bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parser(sub)
    ndk.add_parser(sub)
    kernels.add_parser(sub)
    opprofile.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
