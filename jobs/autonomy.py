"""Entry point for `ray job submit -- python jobs/autonomy.py [run options]` (same as `x0tta6bl4 run`)."""

import sys
from pathlib import Path

# Prefer the package next to this script (the job's uploaded working dir) over an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))

from x0tta6bl4.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
