"""The ``metered-realtime`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metered_realtime import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metered-realtime",
        description="Metered Realtime Messaging for Python: tools around the SDK.",
    )
    parser.add_argument("--version", action="version", version=f"metered-realtime {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "walkthrough",
        help="drive the sans-IO core over a blocking socket against a scripted local peer",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metered-realtime`` script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "walkthrough":
        from metered_realtime.walkthrough import main as walkthrough

        return walkthrough()
    parser.print_help(sys.stderr)
    return 2
