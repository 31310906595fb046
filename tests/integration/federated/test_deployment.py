"""`x0tta6bl4 train --deployment`: a real SuperLink (TLS from the CA) and SuperNodes; a rogue one and a poisoned update refused."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_a_tiny_deployment_trains_over_tls_and_refuses_a_rogue_supernode_and_a_poisoned_update(
    ray_local, tmp_path
):
    """Two regions, one round: region 1 sends NaN (rejected, counted), an unregistered SuperNode is
    refused, and the version is written from the one accepted update; nothing is left running."""
    import psutil
    from cryptography import x509

    from x0tta6bl4.models.registry import ModelRegistry

    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    args = "--deployment --rogue-supernode --poison-region 1 --nodes 200 --regions 2 --ticks 40 --rounds 1"
    args += " --lora-rounds 0 --min-clients 1 --eval-nodes 200 --eval-ticks 40 --round-timeout-s 120"
    args += f" --ca-dir {tmp_path / 'ca'} --registry {tmp_path / 'registry'} --runs-dir {tmp_path / 'runs'} --run-id d"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4.cli", "train", *args.split(), "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]

    (version,) = ModelRegistry(str(tmp_path / "registry")).versions("graphsage-anomaly")
    m = ModelRegistry(str(tmp_path / "registry")).load("graphsage-anomaly", version.version).metrics
    assert m["runtime"] == "deployment"
    dep = m["deployment"]
    root = tmp_path / "runs" / "d" / "deployment"

    # TLS: the SuperLink served a certificate of the run's CA for the Flower server's SPIFFE ID.
    assert dep["tls"]["spiffe_id"] == dep["tls"]["verified_peer"] == "spiffe://x0tta6bl4.local/flower/server"
    leaf = x509.load_pem_x509_certificate((root / "tls" / "superlink.pem").read_bytes())
    authority = x509.load_pem_x509_certificate((tmp_path / "ca" / "bundle.pem").read_bytes())
    leaf.verify_directly_issued_by(authority)
    assert dep["superlink"].startswith("127.0.0.1:") and dep["supernode_auth"] is True

    # SuperNode authentication: two registered nodes trained; the unregistered key was refused.
    assert sorted(dep["supernodes"]) == ["region-0", "region-1"]
    (rogue,) = dep["refused_supernodes"]
    assert rogue["exit_code"] != 0 and "[code: 2004]" in rogue["reason"]
    assert "Failed to initialize the connection to the SuperLink" in (root / "logs" / "rogue.log").read_text()
    assert "No SuperNode found with the given public key" in (root / "logs" / "superlink.log").read_text()

    # The poisoned update was rejected and counted; the round went on with the honest one.
    (rnd,) = m["round_table"]
    assert (rnd["sampled"], rnd["replied"], rnd["rejected"], rnd["failed"], rnd["regions"]) == (
        2,
        1,
        1,
        0,
        [0],
    )
    assert (
        rnd["rejections"] == [rnd["rejections"][0]] and "region 1: non-finite values" in rnd["rejections"][0]
    )
    assert m["rejected_updates"] == 1 and "(1 rejected)" in proc.stderr
    assert 0 <= m["auprc"] <= 1

    # Private keys are gone with the processes; nothing of the deployment is still running.
    assert not list(root.rglob("*.key")) and len(list((root / "keys").glob("*.pub"))) == 3
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(root) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    print(f"deployment run: {elapsed:.1f} s")
