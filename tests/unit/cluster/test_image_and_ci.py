"""The image (cluster/Dockerfile) and CI (.github/workflows/ci.yml) set up as scripts/setup.sh and the README say."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT.parent / "shared" / "kuberay-crds"
TORCH_CPU_WHEELS = "https://download.pytorch.org/whl/cpu/torch/"


def _ci() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def _ci_steps() -> list[dict]:
    return _ci()["jobs"]["test"]["steps"]


def _dockerfile() -> str:
    return (ROOT / "cluster" / "Dockerfile").read_text()


def _setup_stamp_inputs() -> set[str]:
    """What scripts/setup.sh hashes into its stamp (its want_hash): the files the set-up depends on."""
    (line,) = [x for x in (ROOT / "scripts" / "setup.sh").read_text().splitlines() if "| sha256sum" in x]
    return set(re.search(r"cat ([^;]+);", line).group(1).split())


def test_ci_runs_the_readme_test_command_in_privileged_debian_12():
    job = _ci()["jobs"]["test"]
    assert job["container"]["image"] == "debian:12" and "--privileged" in job["container"]["options"]
    runs = [step.get("run", "") for step in _ci_steps()]
    assert "bash .ci/run" in runs and "make lint" in runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test " in (ROOT / "README.md").read_text()


def test_ci_fetches_the_same_kuberay_crds_as_the_shared_checkout():
    (step,) = [s for s in _ci_steps() if "kuberay-crds" in s.get("run", "")]
    pins = dict(reversed(m) for m in re.findall(r"^([0-9a-f]{64})  (ray\.io_\w+\.yaml)$", step["run"], re.M))
    assert set(pins) == {"ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"}
    if not CRD_DIR.is_dir():
        pytest.skip(f"{CRD_DIR} is missing: nothing to compare the pinned sha256s with")
    commit = re.search(r"commit\s+([0-9a-f]{40})", (CRD_DIR / "SOURCE.md").read_text()).group(1)
    assert f"/kuberay/{commit}/" in step["run"]
    for name, digest in pins.items():
        assert hashlib.sha256((CRD_DIR / name).read_bytes()).hexdigest() == digest, name


def test_the_image_is_debian_12_set_up_by_setup_sh_from_the_files_its_stamp_hashes():
    dockerfile = _dockerfile()
    assert re.search(r"^FROM debian:(12|bookworm)\S*$", dockerfile, re.M)
    copied_before_setup = dockerfile.split("RUN bash scripts/setup.sh")[0]
    for pattern in _setup_stamp_inputs():
        stem = pattern.split("*")[0].rstrip("/")
        assert re.search(rf"^COPY {re.escape(stem)}\S* ", copied_before_setup, re.M), pattern
    # The editable install reads pyproject's readme and the version from the package's __init__.py;
    # the .pth setup.sh writes imports _ray_backports in every process from then on.
    for needed in ("README.md", "platform/x0tta6bl4/__init__.py", "platform/x0tta6bl4/_ray_backports.py"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", copied_before_setup, re.M), needed
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".x0tta6bl4", ".venv", ".git", "models/registry"} <= ignored


def test_torch_comes_from_pytorchs_cpu_wheels_wherever_the_lock_is_installed():
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    torch_pin = re.search(r"^torch==\S+ \\\n((?:\s+--hash=\S+ ?\\?\n?)+)", lock, re.M)
    assert torch_pin and torch_pin.group(1).count("--hash=") == 1  # the CPU wheel only
    assert f"PIP_FIND_LINKS={TORCH_CPU_WHEELS}" in _dockerfile()
    assert _ci()["jobs"]["test"]["env"]["PIP_FIND_LINKS"] == TORCH_CPU_WHEELS
