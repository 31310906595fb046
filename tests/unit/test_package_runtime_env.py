"""What a driver that joins a cluster ships to its workers: the package and the eBPF programs."""

from __future__ import annotations

import json
from pathlib import Path

import x0tta6bl4
from x0tta6bl4.connect import package_runtime_env
from x0tta6bl4.telemetry.ebpf.codegen import bpf_dir

PACKAGE = Path(x0tta6bl4.__file__).resolve().parent


def test_the_package_and_the_bpf_programs_go_in_py_modules(monkeypatch):
    monkeypatch.delenv("X0TTA6BL4_SHIP_PACKAGE", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env = package_runtime_env()
    assert env == {"py_modules": [str(PACKAGE), str(PACKAGE.parents[1] / "bpf")]}


def test_the_image_switch_and_a_job_with_its_own_py_modules_ship_nothing(monkeypatch):
    monkeypatch.setenv("X0TTA6BL4_SHIP_PACKAGE", "off")
    assert package_runtime_env() is None
    monkeypatch.delenv("X0TTA6BL4_SHIP_PACKAGE")
    job = {"runtime_env": {"py_modules": ["s3://bucket/pkg.zip"]}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert package_runtime_env() is None


def test_a_worker_finds_bpf_shipped_beside_the_package_on_its_path(tmp_path, monkeypatch):
    # As Ray unpacks py_modules: <runtime_resources>/py_modules_files/_ray_pkg_<hash>/bpf on sys.path.
    shipped = tmp_path / "_ray_pkg_0123" / "bpf"
    shipped.mkdir(parents=True)
    (shipped / "tcp_retransmit.c").write_text("// program\n")
    monkeypatch.delenv("X0TTA6BL4_BPF_DIR", raising=False)
    monkeypatch.setattr("x0tta6bl4.telemetry.ebpf.codegen.__file__", str(tmp_path / "a/b/c/d/codegen.py"))
    monkeypatch.syspath_prepend(str(tmp_path / "_ray_pkg_0123"))
    assert bpf_dir() == shipped
