"""ebpf_blockers() where a prerequisite really is missing: no BPF capabilities, no tracefs, no headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]

PLATFORM = str(Path(__file__).resolve().parents[3] / "platform")

REPORT = """
import dataclasses, json
from x0tta6bl4.telemetry.source import HostTelemetry, ebpf_blockers
host = HostTelemetry(3)
row = host.poll().to_dict()["nodes"][0]
blockers = [dataclasses.asdict(b) for b in ebpf_blockers()]
print(json.dumps({"blockers": blockers, "source": host.source, "off": host.ebpf_off_reason, "row": row}))
"""


def _report(prefix: list[str]) -> dict[str, object]:
    """Run REPORT under ``prefix`` (setpriv, unshare ...) in a fresh interpreter; its JSON output."""
    env = {**os.environ, "PYTHONPATH": PLATFORM}
    out = subprocess.run(
        [*prefix, sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _checks(report: dict[str, object]) -> dict[str, dict[str, str]]:
    return {b["check"]: b for b in report["blockers"]}  # type: ignore[attr-defined, index]


def test_a_process_without_bpf_capabilities_falls_back_to_procfs_and_says_why() -> None:
    report = _report(["setpriv", "--bounding-set=-all", "--"])
    checks = _checks(report)
    assert list(checks) == ["privileges"]
    assert "CAP_BPF" in checks["privileges"]["reason"]
    assert "--cap-add BPF" in checks["privileges"]["fix"]
    assert report["source"] == "procfs"
    assert "CAP_BPF" in str(report["off"])
    assert report["row"]["mem_util"] is not None  # type: ignore[index]


def test_missing_tracefs_and_headers_are_reported_with_their_fix_commands() -> None:
    release = os.uname().release
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; "
        'mount -t tmpfs none /lib/modules && exec "$@"'
    )
    report = _report(["unshare", "--mount", "--", "sh", "-c", script, "sh"])
    checks = _checks(report)
    assert set(checks) == {"tracefs", "kernel_headers"}
    assert checks["tracefs"]["fix"] == "mount -t tracefs nodev /sys/kernel/tracing"
    assert f"/lib/modules/{release}/build" in checks["kernel_headers"]["fix"]
    assert report["source"] == "procfs"
