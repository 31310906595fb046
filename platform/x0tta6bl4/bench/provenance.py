"""Provenance rows of the security suite: the signed audit ledger and signed model versions.

Each figure has a baseline measured in the same run that does the same work without the
hybrid signatures (Ed25519 + ML-DSA-65), so the ratio is the price of the signatures:
appends against durable appends of the same lines; verification against the hash-chain
check alone; signing a model version against writing it; verifying a signature against
the registry's own integrity check of the version (every file's SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from x0tta6bl4.bench._report import result
from x0tta6bl4.durable import append_synced, write_atomic
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.identity import WorkloadKind
from x0tta6bl4.security.ledger import Ledger, entry_body
from x0tta6bl4.security.provenance import ProvenanceConfig, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureVerifier


def results(quick: bool = False) -> list[dict[str, Any]]:
    """Ledger appends and verification, model version signing and verification."""
    with tempfile.TemporaryDirectory(prefix="x0-bench-provenance-") as tmp:
        root = Path(tmp)
        policy = ProvenancePolicy(ProvenanceConfig(ca_dir=str(root / "ca"), ledger_dir=str(root / "ledger")))
        EmbeddedCA.open(policy.config.ca_dir)
        rows = _ledger(root, policy, 100 if quick else 1000)
        rows += _artifact(root, policy, 3 if quick else 20)
    return rows


def _ledger(root: Path, policy: ProvenancePolicy, entries: int) -> list[dict[str, Any]]:
    signer = policy.signer(WorkloadKind.CONTROLLER)
    ledger = Ledger(policy.config.ledger_dir)
    data = {"phase": "judged", "action": "reroute", "node": 1234, "verdict": "success", "tick": 77}
    t0 = time.perf_counter()
    for i in range(entries):
        ledger.append(signer, "remediation.action", f"incident {i}", data)
    signed_s = time.perf_counter() - t0
    lines = ledger.entries_path.read_text().splitlines()
    plain = root / "plain.jsonl"
    t0 = time.perf_counter()
    for i, line in enumerate(lines):  # the same bytes, fsynced, and a head rewritten each time
        append_synced(plain, [line])
        write_atomic(root / "plain-head.json", json.dumps({"seq": i}))
    plain_s = time.perf_counter() - t0
    params = {"entries": entries, "signature": "Ed25519 + ML-DSA-65", "entry_bytes": len(lines[-1])}
    rows = [
        result(
            "ledger_appends_per_s",
            entries / signed_s,
            "entries/s",
            params,
            baseline=("unsigned_durable_appends_per_s", entries / plain_s),
        )
    ]
    verifier = SignatureVerifier(str(policy.config.ca_dir))
    t0 = time.perf_counter()
    report = ledger.verify(verifier)
    verify_s = time.perf_counter() - t0
    if (
        not report.ok or report.entries != entries
    ):  # pragma: no cover - a bench must not report a broken ledger
        raise RuntimeError(f"bench ledger failed verification: {report.problem}")
    t0 = time.perf_counter()
    prev = "0" * 64
    for line in lines:  # the chain and hash checks alone
        entry = json.loads(line)
        if entry["prev"] != prev or hashlib.sha256(entry_body(entry)).hexdigest() != entry["hash"]:
            raise RuntimeError("bench ledger chain broken")  # pragma: no cover
        prev = entry["hash"]
    chain_s = time.perf_counter() - t0
    rows.append(
        result(
            "ledger_verify_entries_per_s",
            entries / verify_s,
            "entries/s",
            params,
            baseline=("hash_chain_check_entries_per_s", entries / chain_s),
        )
    )
    return rows


def _artifact(root: Path, policy: ProvenancePolicy, repeats: int) -> list[dict[str, Any]]:
    from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
    from x0tta6bl4.models.lora import full_arrays
    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.models.signing import check_signature, sign_version

    spec = DetectorSpec.load()
    tensors = full_arrays(GraphSAGEDetector(spec))
    registry = ModelRegistry(str(root / "registry"))
    signer = policy.signer(WorkloadKind.TRAINER)
    write_ms, sign_ms, verify_ms, load_ms = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        version = registry.write_version(spec.name, tensors, spec.to_dict(), {"bench": 1}, "# bench\n")
        t1 = time.perf_counter()
        sign_version(registry, version.model, version.version, signer)
        t2 = time.perf_counter()
        check_signature(registry, version.model, version.version, policy)
        t3 = time.perf_counter()
        registry.load(version.model, version.version)
        t4 = time.perf_counter()
        write_ms.append((t1 - t0) * 1e3)
        sign_ms.append((t2 - t1) * 1e3)
        verify_ms.append((t3 - t2) * 1e3)
        load_ms.append((t4 - t3) * 1e3)
    size = sum(int(v.nbytes) for v in tensors.values())
    params = {"model": spec.name, "weights_bytes": size, "repeats": repeats}
    return [
        result(
            "artifact_sign_ms",
            statistics.median(sign_ms),
            "ms",
            params,
            baseline=("write_version_ms", statistics.median(write_ms)),
        ),
        result(
            "artifact_verify_ms",
            statistics.median(verify_ms),
            "ms",
            params,
            baseline=("verified_load_ms", statistics.median(load_ms)),
        ),
    ]
