"""Client transports against a rate-limited server: 429s per pause and the share of the limit achieved.

``make bench-clients``. A server on 127.0.0.1 allows ``--rate`` requests per
second with a bucket of ``--burst``; ``--requests`` GETs are started at once
through a client whose own limiter (``--limiter``: a ``RateLimiter``, a
``LimitGroup``, or a ``RedisRateLimiter`` on ``AIOLEASE_REDIS_URL``) is set to
``--client-rate`` (above the server's limit, as when the documented limit is
wrong or shared). The server runs in a child process, as a remote server
does not share the client's event loop (``--in-process``: in this one, where
its request handling delays the client's own limiter). Printed per client and
header style: the 429s, the server's throttling episodes (a 429 after the
previous announced wait had passed), 429s per episode, and the achieved share
of the limit (the time the limit needs for the requests over the time taken);
with ``--rounds`` above 1, each round and then the medians. Not a test:
nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "_throttled", Path(__file__).with_name("_throttled.py")
)
assert _spec is not None
assert _spec.loader is not None
throttled = importlib.util.module_from_spec(_spec)
sys.modules["_throttled"] = throttled
_spec.loader.exec_module(throttled)

HEADER = (
    f"{'client':40} {'style':16} {'429s':>5} {'episodes':>8} {'429/ep':>6} {'ok':>5} "
    f"{'time s':>7} {'of limit':>8} {'steady':>7}"
)


def _row(client: str, style: str, runs: list[Any]) -> str:
    """One line: the run's figures, or the medians of several runs."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    throttled_ = med([r.throttled for r in runs])
    episodes = med([r.episodes for r in runs])
    per = med([r.throttled / r.episodes if r.episodes else 0.0 for r in runs])
    steady = [r.steady for r in runs if r.steady is not None]
    return (
        f"{client:40} {style:16} {throttled_:5g} {episodes:8g} {per:6.2f} "
        f"{med([r.ok for r in runs]):5g} {med([r.elapsed for r in runs]):7.2f} "
        f"{med([r.efficiency for r in runs]):8.1%} "
        + (f"{med(steady):7.1%}" if steady else f"{'-':>7}")
    )


async def main(args: argparse.Namespace) -> None:
    print(
        f"server: {args.rate:g}/s, bucket {args.burst:g}; client limiter {args.client_rate:g}/s "
        f"({args.limiter}); {args.requests} concurrent GETs; {args.rounds} round(s); "
        f"server {'in this process' if args.in_process else 'in a child process'}"
    )
    print(HEADER)
    runs: dict[tuple[str, str], list[Any]] = {}
    for _ in range(args.rounds):
        for style in args.styles:
            for client in throttled.CLIENTS:
                if client.startswith("aiolimiter") and (
                    style != "retry-after" or args.limiter != "local"
                ):
                    continue  # the hand-written baseline reads delta-seconds only
                run = await throttled.measure(
                    client,
                    rate=args.rate,
                    burst=args.burst,
                    client_rate=args.client_rate,
                    n=args.requests,
                    style=style,
                    limiter=args.limiter,
                    in_process=args.in_process,
                )
                runs.setdefault((client, style), []).append(run)
                print(_row(client, style, [run]))
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds:")
        print(HEADER)
        for (client, style), results in runs.items():
            print(_row(client, style, results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=float, default=20.0)
    parser.add_argument("--client-rate", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limiter", default="local", choices=throttled.LIMITERS)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the server on the client's event loop (the figures before 2026-12-05)",
    )
    parser.add_argument(
        "--styles", nargs="+", default=list(throttled.STYLES), choices=throttled.STYLES
    )
    asyncio.run(main(parser.parse_args()))
