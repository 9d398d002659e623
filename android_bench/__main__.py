"""``python -m android_bench``: benchmark commands (see ``--help``)."""

import argparse
import sys

from android_bench import kernels


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m android_bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kernels.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
