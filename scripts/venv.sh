#!/usr/bin/env bash
# Sourced by demo.sh and test.sh (or by you: `. scripts/venv.sh`): make
# ./.venv with the project and its test dependencies installed (editable),
# reinstalling only when setup.cfg changed, and put it first on PATH. It sets
# no shell options and leaves no variables behind, so sourcing it leaves an
# interactive shell as it was.
_venusctl_venv() {
  local root venv stamp py
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv="$root/.venv"
  stamp="$venv/.installed-setup.cfg"
  py=${PYTHON:-python3}
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || return 1
  fi
  if [ ! -f "$stamp" ] || ! cmp -s "$root/setup.cfg" "$stamp"; then
    echo "installing venusctl and its test dependencies into $venv" >&2
    # The build backend's warnings are noise here; the log is shown on failure.
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
      "$venv/bin/python" -m pip install -q -e "$root[test]"; } >"$venv/pip.log" 2>&1; then
      cat "$venv/pip.log" >&2
      return 1
    fi
    cp "$root/setup.cfg" "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
_venusctl_venv
_venusctl_status=$?
unset -f _venusctl_venv
return "$_venusctl_status" 2>/dev/null || exit "$_venusctl_status"
