"""`python -m worker_agent` is the same as the `venus-worker` command."""

import sys

from worker_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
