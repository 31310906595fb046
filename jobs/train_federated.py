"""Entry point for `ray job submit -- python jobs/train_federated.py [options]` (= `x0tta6bl4 train`).

Joins the cluster named by RAY_ADDRESS (set by `ray job submit`) and runs as its own driver:
Flower's Ray backend shuts Ray down when the federation ends.
"""

import sys
from pathlib import Path

# Prefer the package next to this script (the job's uploaded working dir) over an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))

from x0tta6bl4.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
