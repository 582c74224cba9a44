"""Command line: ``python -m aiolease demo`` runs the tour on the embedded default (SQLite)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ._demo import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiolease")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the scenarios (no server needed)")
    demo.add_argument(
        "scenario",
        nargs="*",
        help=f"run only these scenarios: {', '.join(name for name, _ in SCENARIOS)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        names = [name for name, _ in SCENARIOS]
        unknown = sorted(set(args.scenario) - set(names))
        if unknown:
            parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(names)}")
        chosen = set(args.scenario or names)
        for name, scenario in SCENARIOS:
            if name in chosen:
                print(f"\n=== {name} ===", flush=True)
                asyncio.run(scenario(print))
    return 0


if __name__ == "__main__":
    sys.exit(main())
