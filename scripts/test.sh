#!/usr/bin/env bash
# The README's test command: installs what the tests need on a bare Debian
# machine (OpenSSH's sshd, curl, promtool and node_exporter, sudo, systemd,
# ShellCheck, the Python dependencies in ./.venv), then runs ruff and the
# whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
# the ssh tests judge venusctl by OpenSSH's own client tools (ssh -G, ssh-keygen,
# ssh-agent, ssh-add), and make network namespaces for the jump-host tests (ip)
command -v ssh-agent >/dev/null 2>&1 || need+=(openssh-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# promtool (in Debian's prometheus package) and node_exporter judge the agent's
# metrics textfile and the alert rules; the tests run them as plain processes (a
# container's policy-rc.d keeps apt from starting their services, as for sshd's).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
# The deploy tests log in as a user with sudo, systemd-analyze judges the
# unit, and shellcheck judges the scripts.
command -v sudo >/dev/null 2>&1 || need+=(sudo)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# venusctl's completion scripts are loaded by the real shells, its man page rendered by man.
command -v zsh >/dev/null 2>&1 || need+=(zsh)
command -v fish >/dev/null 2>&1 || need+=(fish)
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} (the tests run sshd, curl, promtool, node_exporter, sudo, systemd-analyze, shellcheck, zsh, fish, man)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (the tests run sshd, curl, promtool, node_exporter, sudo, systemd-analyze, shellcheck, zsh, fish, man); install them" >&2
    exit 2
  fi
fi
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"
ruff format --check --quiet . && ruff check --quiet .
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
