"""Command line: ``python -m aiolease demo`` runs the tour on the embedded default (SQLite);
``--metrics`` then prints the Prometheus metrics it produced."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

try:
    from ._demo import SCENARIOS
except ImportError as exc:  # a core install: the tour runs on SQLite (aiolease[sqlite])
    SCENARIOS = []
    _MISSING: ImportError | None = exc
else:
    _MISSING = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiolease")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the scenarios (no server needed)")
    demo.add_argument(
        "scenario",
        nargs="*",
        help=f"run only these scenarios: {', '.join(name for name, _ in SCENARIOS)} (default: all)",
    )
    demo.add_argument(
        "--metrics",
        action="store_true",
        help="then print the Prometheus metrics the scenarios produced (aiolease[prometheus])",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        if _MISSING is not None:
            parser.error(f"the demo runs on SQLite: {_MISSING}")
        names = [name for name, _ in SCENARIOS]
        unknown = sorted(set(args.scenario) - set(names))
        if unknown:
            parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(names)}")
        chosen = set(args.scenario or names)
        exposition = _metrics_exposition(parser) if args.metrics else None
        for name, scenario in SCENARIOS:
            if name in chosen:
                print(f"\n=== {name} ===", flush=True)
                asyncio.run(scenario(print))
        if exposition is not None:
            print("\n=== metrics (Prometheus text format) ===")
            print(exposition(), end="", flush=True)
    return 0


def _metrics_exposition(parser: argparse.ArgumentParser) -> Callable[[], str]:
    """Start recording every pool's, limiter's and transaction's metrics; returns what
    renders them as a ``/metrics`` endpoint would."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from . import prometheus
    except ImportError:
        parser.error("--metrics needs prometheus_client: pip install 'aiolease[prometheus]'")
    registry = CollectorRegistry()
    registry.register(prometheus.Collector())
    return lambda: generate_latest(registry).decode()


if __name__ == "__main__":
    sys.exit(main())
