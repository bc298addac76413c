#!/usr/bin/env python3
"""Ansible dynamic inventory from venusctl's inventory.toml.

    ansible-playbook -i playbooks/inventory.py playbooks/deploy-agent.yml

Runs ``venusctl.py inventory --ansible`` from the checkout this file lives in,
with the Python running this script, so Ansible and venusctl always see the
same hosts, groups, addresses, users, keys, and agent config and socket paths.

The inventory file is the one venusctl itself reads ($VENUSCTL_INVENTORY,
$VENUSCTL_FLEET, ./inventory.toml, ~/.config/venusctl/inventory.toml,
/etc/venusctl/inventory.toml: `venusctl inventory` says which), and when
venusctl finds none, the checkout's inventory.toml (so it also works from
playbooks/, where ansible.cfg names this script). Groups are the hosts'
`groups` (`ungrouped` for a host without any), so Ansible's host patterns
(`-l 'gpu:!gpu-03'`, `-l 'gpu:&rack1'`, `-l '!gpu-03'`) select the very hosts
venusctl's `-l` does.

    inventory.py --list         the whole inventory, with _meta.hostvars
    inventory.py --host NAME    one host's variables ({} for an unknown host)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
VENUSCTL = CHECKOUT / "venusctl.py"


def run_venusctl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(VENUSCTL), *argv, "inventory", "--ansible", "--json"],
        capture_output=True,
        text=True,
    )


def _error_code(done: subprocess.CompletedProcess) -> str | None:
    try:
        return json.loads(done.stdout)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def venusctl_inventory() -> dict:
    done = run_venusctl()
    if done.returncode != 0 and _error_code(done) == "no-inventory":
        done = run_venusctl("-i", str(CHECKOUT / "inventory.toml"))
    if done.returncode != 0:
        try:
            reason = json.loads(done.stdout)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = done.stderr.strip() or f"exit code {done.returncode}"
        raise SystemExit(f"inventory.py: venusctl inventory --ansible failed: {reason}")
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise SystemExit(f"inventory.py: venusctl printed no JSON: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print the whole inventory")
    mode.add_argument("--host", metavar="NAME", help="print one host's variables")
    args = parser.parse_args(argv)
    inventory = venusctl_inventory()
    if args.list:
        result = inventory
    else:
        result = inventory.get("_meta", {}).get("hostvars", {}).get(args.host, {})
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
