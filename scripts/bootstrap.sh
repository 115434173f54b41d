#!/usr/bin/env bash
# Creates and fills ./.venv when it is missing (or when pyproject.toml changed since the
# last fill), then runs the given command inside it. Used by the README's two commands
# and by CI, so a fresh machine needs nothing but Python 3.10+.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.filled-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] creating $VENV (first run only; torch is large, this takes a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    # These two releases are on this kind of machine's local disk; elsewhere pip falls
    # back to whatever satisfies pyproject's ranges.
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
      || "$VENV/bin/python" -m pip install -q "torch>=2.4" "torchvision>=0.19"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  rm -f "$VENV"/.filled-*
  touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
exec "$@"
