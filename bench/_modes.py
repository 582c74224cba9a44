"""Run a benchmark in both modes: as is, then with ``AIOLEASE_COMPAT=public`` (aiolease on
public APIs only, see docs/compat.md), and print each mode's headline ratios side by side.

    python bench/_modes.py bench/pool.py [ARGS...]

The mode is fixed when aiolease is imported, so each runs in its own process; the
benchmark's own output is shown in full for each. Headline lines are those with a ratio in
them (``a / b ... 0.97``) or a ``Target:`` verdict.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_HEADLINE = re.compile(r"^(Target:|.+ / .+\d\.\d\d)")


def run(script: str, args: list[str], public: bool) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "AIOLEASE_COMPAT"}
    if public:
        env["AIOLEASE_COMPAT"] = "public"
    mode = "AIOLEASE_COMPAT=public" if public else "default (private fast paths where kept)"
    print(f"\n######## {script}: {mode}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, script, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    headlines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        if _HEADLINE.match(line.strip()):
            headlines.append(line.rstrip())
    return proc.wait(), headlines


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    script, args = argv[0], argv[1:]
    code_default, default = run(script, args, public=False)
    code_public, public = run(script, args, public=True)
    print(f"\n######## {script}: headline ratios in both modes")
    for title, lines in (("default", default), ("AIOLEASE_COMPAT=public", public)):
        print(f"{title}:")
        print("\n".join(f"  {line.strip()}" for line in lines) or "  (none printed)")
    return code_default or code_public


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
