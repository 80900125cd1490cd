"""The ``kvstore`` command line: ``kvstore serve``, ``kvstore admin ...``, ``kvstore version``."""

from __future__ import annotations

import argparse
import sys

import kvstore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(kvstore.__version__)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
