#!/usr/bin/env python3
"""Ansible dynamic inventory from venusctl's inventory.toml.

    ansible-playbook -i playbooks/inventory.py playbooks/deploy-agent.yml

Runs ``venusctl.py inventory --ansible`` from the checkout this file lives in,
with the Python running this script, so Ansible and venusctl always see the
same hosts, groups, addresses, users, keys, and agent config and socket paths.

The inventory file: $VENUSCTL_INVENTORY if set, else ./inventory.toml if there
is one, else the checkout's inventory.toml (so it also works from playbooks/,
where ansible.cfg names this script).

    inventory.py --list         the whole inventory, with _meta.hostvars
    inventory.py --host NAME    one host's variables ({} for an unknown host)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
VENUSCTL = CHECKOUT / "venusctl.py"


def inventory_file() -> str:
    chosen = os.environ.get("VENUSCTL_INVENTORY")
    if chosen:
        return chosen
    here = Path("inventory.toml")
    return str(here.resolve() if here.is_file() else CHECKOUT / "inventory.toml")


def venusctl_inventory() -> dict:
    env = dict(os.environ, VENUSCTL_INVENTORY=inventory_file())
    done = subprocess.run(
        [sys.executable, str(VENUSCTL), "inventory", "--ansible"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
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
