#!/usr/bin/env bash
# The README's demo: start a local agent on the embedded mock config (three
# sealing threads whose C2 fails like the seed's), wait until they pause at
# C1Done, then show them with the agent's own CLI and with venusctl through
# the shipped inventory (host "local", no SSH). Stops the agent at the end
# unless KEEP=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"
cfg=worker_agent/assets/venus-worker.mock.toml
mkdir -p mock-tmp
venus-worker daemon -c "$cfg" >mock-tmp/daemon.log 2>&1 &
pid=$!
stop() { [ "${KEEP:-0}" = 1 ] || { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; }
trap stop EXIT
for _ in $(seq 100); do
  paused=$(venus-worker worker -c "$cfg" list 2>/dev/null | grep -c 'paused=true.*state=C1Done' || true)
  [ "$paused" = 3 ] && break
  sleep 0.2
done
echo "\$ venus-worker worker -c $cfg list"
venus-worker worker -c "$cfg" list
echo
echo "\$ venusctl list"
python venusctl.py list
echo
echo "\$ venusctl info local"
python venusctl.py info local
