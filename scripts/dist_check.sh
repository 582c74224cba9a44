#!/usr/bin/env bash
# Smoke-test built distributions: install the wheel (and, separately, the sdist) into fresh
# virtual environments outside the source tree, import aiolease and run the demo.
# Usage: scripts/dist_check.sh DIST_DIR   (as `make dist-check` calls it after `python -m build`)
set -euo pipefail
dist="$(cd "${1:?usage: dist_check.sh DIST_DIR}" && pwd)"
python="${PYTHON:-python3}"
wheel=$(ls "$dist"/aiolease-*.whl)
sdist=$(ls "$dist"/aiolease-*.tar.gz)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for artefact in "$wheel" "$sdist"; do
  venv="$work/venv-$(basename "$artefact")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "${artefact}[sqlite]"
  # Run from an empty directory so the source tree cannot be imported by accident.
  (
    cd "$work"
    "$venv/bin/python" -W error -c 'import aiolease, aiolease.asgi, aiolease.testing, sys; assert aiolease.__file__.startswith(sys.prefix), aiolease.__file__; print("imported", aiolease.__version__, "from", aiolease.__file__)'
    "$venv/bin/python" -m aiolease demo > "$work/demo.out"
    tail -n 3 "$work/demo.out"
  )
  echo "dist-check: $(basename "$artefact") OK"
done
# The wheel carries the licence and the typing marker.
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names), names
assert "aiolease/py.typed" in names, names
print("dist-check: wheel has LICENSE and py.typed")
PY
