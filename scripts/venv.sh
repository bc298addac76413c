#!/usr/bin/env bash
# Sourced by demo.sh and test.sh (or by you: `. scripts/venv.sh`): make
# ./.venv with the project and its test dependencies installed (editable),
# reinstalling only when setup.cfg changed, and put it first on PATH. It sets
# no shell options and leaves no variables behind, so sourcing it leaves an
# interactive shell as it was; its status is non-zero when it failed.
# It needs bash, whose BASH_SOURCE finds the checkout: sourced from sh/dash it
# refuses with a message (and fails) instead of guessing a folder.
# No `return` at the top level: the last command's status is the status of `.`.
if [ -z "${BASH_VERSION:-}" ]; then
  echo "scripts/venv.sh: needs bash; run: bash -c '. scripts/venv.sh && ...' (not sh/dash)" >&2
  false
else
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
        "$venv/bin/python" -m pip install -q -e "${root}[test]"; } >"$venv/pip.log" 2>&1; then
        cat "$venv/pip.log" >&2
        return 1
      fi
      cp "$root/setup.cfg" "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
  }
  if _venusctl_venv; then
    unset -f _venusctl_venv
  else
    unset -f _venusctl_venv
    false
  fi
fi
