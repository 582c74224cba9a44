"""`make test-matrix`: the whole pytest suite on every CPython 3.11-3.13 found, in public mode,
and with the lowest and the latest driver versions pyproject.toml allows.

Each run gets its own venv under .venv-matrix/ (made on first use, refreshed when pyproject.toml
changes). Pythons are found on PATH (python3.X) or through pyenv; a missing one is reported as
skipped. Extra pytest arguments: MATRIX_PYTEST_ARGS="-x -q tests/sqlite"; parallel workers:
PYTEST_WORKERS (pytest-xdist; default 4, 0 runs the suite in one process). Only some runs:
MATRIX_RUNS="py3.12 public". Runs: py3.11, py3.12, py3.13-latest (the newest
Python with the newest driver releases, re-resolved every time; py3.12 on asyncio's loop alone:
AIOLEASE_TEST_LOOPS), public (AIOLEASE_COMPAT=public),
lowest (the lowest versions pyproject.toml allows of the drivers, the HTTP clients, the metrics
libraries and the test tools: PINNED).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venv-matrix"
PYTHONS = ("3.11", "3.12", "3.13")
# The lowest run pins each of these to its `>=` bound in pyproject.toml's extras: what aiolease's
# modules import (the database drivers, the HTTP clients, the metrics libraries, pytest-asyncio
# for aiolease.testing's plugin) and what the suite runs on.
PINNED = (
    *("asyncpg", "psycopg", "aiosqlite", "redis", "httpx", "aiohttp"),
    *("opentelemetry-api", "opentelemetry-sdk", "prometheus-client"),
    *("pytest", "pytest-asyncio", "pytest-timeout", "pytest-xdist", "hypothesis"),
    *("uvloop", "uvicorn", "fastapi"),
)
# Each run is bounded (a hang ends it), with room for a slower machine and for PYTEST_WORKERS=0:
# a run of the whole suite takes 5.5 to 6.5 minutes on CI's 2-core machine on 4 workers, 14 to 18
# in one process.
RUN_TIMEOUT = 1500


@dataclass
class Run:
    name: str
    python: str
    env: dict[str, str] = field(default_factory=dict)
    pins: list[str] = field(default_factory=list)  # pip constraints: NAME==VERSION
    upgrade: bool = False  # re-resolve to the newest releases on every run


def lowest_pins() -> list[str]:
    """NAME==LOWEST for each of PINNED, from the `>=` bounds of pyproject.toml's extras."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    specs = [spec.replace(" ", "") for group in extras.values() for spec in group]
    pins = []
    for name in PINNED:
        for spec in specs:
            m = re.fullmatch(rf"{name}(\[[^]]*\])?>=([\w.]+)(;.*)?", spec)
            if m:
                pins.append(f"{name}=={m.group(2)}")
                break
        else:
            raise SystemExit(f"no `{name}>=X` lower bound in pyproject.toml's extras")
    return pins


def find_python(version: str) -> str | None:
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        versions = sorted(Path(root, "versions").glob(f"{version}.*"), reverse=True)
        candidates += [str(v / "bin" / "python") for v in versions]
    for cand in candidates:
        if not cand:
            continue
        try:
            out = subprocess.run(
                [cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == version:
            return cand
    return None


def make_venv(run: Run, python: str) -> Path:
    venv = VENVS / run.name
    stamp_text = (ROOT / "pyproject.toml").read_text() + python + "\n".join(run.pins)
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = venv / ".stamp"
    if not run.upgrade and stamp_file.exists() and stamp_file.read_text() == stamp:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    cmd = [*pip, "-e", ".[test]"]
    if run.upgrade:
        cmd.append("--upgrade")
    if run.pins:
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(run.pins) + "\n")
        cmd += ["--constraint", str(constraints)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp_file.write_text(stamp)
    return venv


def versions(venv: Path) -> str:
    code = (
        "import importlib.metadata as m, sys;"
        f"print(', '.join(['python %d.%d.%d' % sys.version_info[:3]]"
        f" + [n + ' ' + m.version(n) for n in {PINNED!r}]))"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip()


def summary(output: str) -> str:
    lines = [
        line
        for line in output.splitlines()
        if re.match(r"=* ?\d+ (passed|failed|errors?|skipped|deselected)\b", line)
    ]
    return lines[-1].strip("= ") if lines else "no pytest summary (crashed or timed out?)"


def main() -> int:
    lowest = lowest_pins()
    # The newest Python also takes the newest drivers (re-resolved on every run): "latest".
    # The loops (asyncio's and uvloop) are covered on 3.11 (`make test`), 3.13 and by the
    # public and lowest runs; 3.12 runs the suite on asyncio's loop alone, which keeps the
    # matrix inside CI's time limit.
    runs = [Run(f"py{v}", v) for v in PYTHONS[:-1]]
    for run in runs:
        if run.python != PYTHONS[0]:
            run.env["AIOLEASE_TEST_LOOPS"] = "asyncio"
    runs.append(Run(f"py{PYTHONS[-1]}-latest", PYTHONS[-1], upgrade=True))
    runs.append(Run("public", PYTHONS[0], env={"AIOLEASE_COMPAT": "public"}))
    runs.append(Run("lowest", PYTHONS[0], pins=lowest))
    wanted = os.environ.get("MATRIX_RUNS", "").split()
    if wanted:
        runs = [r for r in runs if r.name in wanted]
    # faulthandler: a run that hangs past pytest-timeout still shows where. PYTEST_WORKERS
    # parallel workers (pytest-xdist), as `make test`; 0 runs the suite in one process.
    pytest_args = [
        *("-n", os.environ.get("PYTEST_WORKERS", "4")),
        *os.environ.get(
            "MATRIX_PYTEST_ARGS", "-q -p no:cacheprovider -o faulthandler_timeout=120"
        ).split(),
    ]
    results: list[tuple[str, str, str, bool]] = []
    for run in runs:
        python = find_python(run.python)
        if python is None:
            print(f"test-matrix: SKIPPED {run.name}: no Python {run.python} on PATH or in pyenv")
            results.append((run.name, "-", f"skipped: no Python {run.python}", True))
            continue
        print(f"test-matrix: {run.name} ({python}) {' '.join(run.pins)}", flush=True)
        try:
            venv = make_venv(run, python)
        except subprocess.CalledProcessError as exc:
            results.append((run.name, "-", f"venv failed: {exc}", False))
            continue
        env = dict(os.environ)
        env.pop("AIOLEASE_COMPAT", None)
        env.update(run.env)
        started = time.monotonic()
        log = VENVS / f"{run.name}.log"
        try:
            with log.open("w") as out:  # written as it runs: `tail -f` it
                proc = subprocess.run(
                    ["timeout", "--kill-after=30", str(RUN_TIMEOUT),
                     str(venv / "bin" / "python"), "-m", "pytest", *pytest_args],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
        except OSError as exc:
            results.append((run.name, versions(venv), f"could not run: {exc}", False))
            continue
        took = time.monotonic() - started
        text = log.read_text()
        failures = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
        for line in failures:
            print(f"  {line}")
        results.append(
            (run.name, versions(venv), f"{summary(text)} ({took:.0f} s)", proc.returncode == 0)
        )
        print(f"  -> {results[-1][2]}", flush=True)
    print("\ntest-matrix results (logs in .venv-matrix/<run>.log):")
    for name, vers, outcome, ok in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:8} {outcome}\n         {vers}")
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
