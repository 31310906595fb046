"""The quality gates of `make lint` run as tests, so CI (`make test`) guards them too."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "platform", "jobs", "tests"],
        ["ruff", "format", "--check", "platform", "jobs", "tests"],
        ["mypy"],
    ],
    ids=["ruff", "ruff-format", "mypy-strict"],
)
def test_quality_gate_passes(command):
    proc = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_platform_is_a_source_root_not_a_package():
    # platform/__init__.py would shadow the standard library's `platform` module.
    assert not (REPO / "platform" / "__init__.py").exists()
