#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make ./.venv with the project and its test
# dependencies installed (editable), reinstalling only when setup.cfg changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.installed-setup.cfg"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$root/setup.cfg" "$stamp"; then
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  cp "$root/setup.cfg" "$stamp"
fi
export PATH="$venv/bin:$PATH"
