"""Security suite: SVIDs, mTLS handshakes, the front vs plain HTTP, refusals, rotation, Ray auth, provenance.

The front is measured in front of the real Serve application (the scoring route, as ``bench
serve`` loads it): the baseline is the same app reached over plain loopback HTTP at the same
concurrency, both with keep-alive connections, in ABBA order.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.bench._load import run_load
from x0tta6bl4.bench._report import result
from x0tta6bl4.connect import SHIP_PACKAGE_ENV, connect_ray, disconnect_ray, free_local_port
from x0tta6bl4.security.authz import Policy
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.front import BackgroundFront, MtlsFront
from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER, load_or_create_token
from x0tta6bl4.security.identity import WorkloadKind, workload_id
from x0tta6bl4.security.source import EmbeddedSource
from x0tta6bl4.security.tls import client_context

CONCURRENCY = 32
SNAPSHOT_NODES = 1000
MESH_NODES = 10_000
OPERATOR = "spiffe://x0tta6bl4.local/operator/bench"


def _say(message: str) -> None:
    sys.stderr.write(f"bench security: {message}\n")
    sys.stderr.flush()


def results(quick: bool = False) -> list[dict[str, Any]]:
    """Every row of the suite (``quick``: shorter windows and a smaller mesh, for the tests)."""
    rows: list[dict[str, Any]] = []
    mesh_runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="x0-bench-security-") as tmp:
        ca = EmbeddedCA.open(Path(tmp) / "ca")
        rows.append(_issuance(ca, 0.5 if quick else 3.0))
        rows.extend(_served(ca, Path(tmp), quick, mesh_runs))
        rows.extend(_ray_auth_mesh(quick, mesh_runs, Path(tmp)))
    from x0tta6bl4.bench import provenance

    _say("provenance: the signed ledger and signed model versions")
    rows.extend(provenance.results(quick))
    if not quick:  # two whole trainings (about 3 minutes even tiny); the deployment has its own test
        from x0tta6bl4.bench import flower_deployment

        _say("Flower deployment mode against the simulation")
        rows.extend(flower_deployment.results(quick))
    return rows


def _issuance(ca: EmbeddedCA, duration_s: float) -> dict[str, Any]:
    """SVIDs per second, each with a fresh P-256 key, signed and checked with py-spiffe."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration_s:
        ca.issue_svid(workload_id(WorkloadKind.SHARD, f"r{n}"))
        n += 1
    rate = n / (time.perf_counter() - t0)
    _say(f"{rate:.0f} SVIDs/s")
    return result("svid_issuance_per_s", rate, "SVIDs/s", {"key": "EC P-256", "checked_by": "py-spiffe"})


def _save(ca: EmbeddedCA, spiffe_id: str, out: Path, ttl_s: int | None = None) -> Path:
    ca.issue_svid(spiffe_id, ttl_s).save(out)
    (out / "bundle.pem").write_bytes(ca.bundle().to_pem())
    return out


def _served(
    ca: EmbeddedCA, tmp: Path, quick: bool, mesh_runs: dict[bool, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Serve behind the front: handshakes, throughput, refusals and rotation.

    Quick: the bootstrap detector trains (one torch thread) while Ray and Serve start, and once
    Serve is shut down the token-mode mesh run joins this Ray (its run goes to ``mesh_runs``)
    instead of starting one more.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from ray import serve

    from x0tta6bl4.bench.serve import snapshot_bodies
    from x0tta6bl4.models.bootstrap import SMALL_BOOTSTRAP, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.serve.app import build_app
    from x0tta6bl4.serve.config import ServeConfig

    registry = ModelRegistry(tmp / "registry")
    _say("training a bootstrap detector")
    training = ThreadPoolExecutor(1)
    if quick:
        torch.set_num_threads(1)  # it shares the cores with Ray's start
        trained = training.submit(bootstrap_detector, registry, SMALL_BOOTSTRAP)
    else:
        bootstrap_detector(registry)
    token_file = tmp / "front.token"
    token = load_or_create_token(token_file)
    port = free_local_port()
    rows: list[dict[str, Any]] = []
    conn = connect_ray(dashboard=False)
    serving = True
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if quick:
            trained.result()
        training.shutdown()
        config = ServeConfig.model_validate(
            {
                "anomaly": {"registry": str(registry.uri), "bootstrap": False},
                "rag": {"retriever": {"data_dir": str(tmp / "rag")}},
                "http": {"front_token_file": str(token_file)},
            }
        )
        _say("deploying the application")
        serve.run(build_app(config), name="x0tta6bl4", route_prefix="/")
        upstream = f"http://127.0.0.1:{port}"
        source = EmbeddedSource(
            workload_id(WorkloadKind.FRONT), ca.directory, ip_addresses=["127.0.0.1"], refresh_s=0.5
        )
        front = BackgroundFront(MtlsFront(source, Policy.load(), upstream, token), "127.0.0.1", 0)
        front_port = front.start()
        try:
            operator_dir = _save(ca, OPERATOR, tmp / "operator")
            bodies = snapshot_bodies(300 if quick else SNAPSHOT_NODES, 8)[0]
            rows.extend(_handshakes(ca, front_port, 30 if quick else 300))
            rows.extend(_throughput(upstream, front_port, token, operator_dir, bodies, quick))
            rows.append(_refusals(ca, front_port, tmp))
        finally:
            front.stop()
            source.close()
        rows.append(_rotation(ca, upstream, token, tmp, 3.0 if quick else 20.0))
        serve.shutdown()
        serving = False
        if quick:
            nodes, regions, ticks, warmup = _mesh_size(quick)
            _say(f"mesh {nodes} nodes, Ray auth on (joining this Ray, Serve shut down)")
            mesh_runs[True].append(_mesh_run(True, nodes, regions, ticks, warmup, tmp, join=conn.address))
    finally:
        training.shutdown(cancel_futures=True)
        if serving:
            serve.shutdown()
        disconnect_ray(conn)
    return rows


def _operator_context(ca: EmbeddedCA, spiffe_id: str = OPERATOR, ttl_s: int | None = None) -> ssl.SSLContext:
    return client_context(ca.issue_svid(spiffe_id, ttl_s), {ca.trust_domain: ca.bundle()})


def _handshakes(ca: EmbeddedCA, port: int, count: int) -> list[dict[str, Any]]:
    """New TCP + TLS 1.3 connections with client SVIDs, one after the other: connect-to-established time."""
    ctx = _operator_context(ca)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            tls.do_handshake()
            times.append((time.perf_counter() - t0) * 1000.0)
    p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
    _say(f"handshake p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    params = {"p50_ms": p50, "p95_ms": p95, "handshakes": count, "tls": "1.3", "client_svid": True}
    return [result("mtls_handshake_ms", p50, "ms", params)]


def _throughput(
    upstream: str, front_port: int, token: str, operator_dir: Path, bodies: list[bytes], quick: bool
) -> list[dict[str, Any]]:
    """The scoring route through the front against the same route over plain loopback HTTP."""
    duration, warmup = (2.0, 0.5) if quick else (15.0, 3.0)
    common: dict[str, Any] = {"concurrency": CONCURRENCY, "duration_s": duration, "warmup_s": warmup}
    plain_headers = {FRONT_TOKEN_HEADER: token, PEER_ID_HEADER: OPERATOR}  # what the front would add
    order = ("plain", "front") if quick else ("plain", "front", "front", "plain")
    loads: dict[str, list[dict[str, Any]]] = {"plain": [], "front": []}
    for which in order:
        _say(f"scoring load, {which} ({duration:.0f} s)")
        if which == "plain":
            out = run_load(f"{upstream}/v1/anomaly/score", bodies, headers=plain_headers, **common)
        else:
            url = f"https://127.0.0.1:{front_port}/v1/anomaly/score"
            out = run_load(url, bodies, svid_dir=str(operator_dir), **common)
        loads[which].append(out)
    plain = statistics.mean(r["requests_per_s"] for r in loads["plain"])
    front = {k: statistics.mean(r[k] for r in loads["front"]) for k in ("requests_per_s", "p50_ms", "p95_ms")}
    errors = sum(r["connection_errors"] for r in loads["front"]) + sum(
        sum(n for s, n in r["statuses"].items() if s != "200") for r in loads["front"]
    )
    params = {
        "route": "POST /v1/anomaly/score",
        "nodes": len(json.loads(bodies[0])["node_ids"]),
        "concurrency": CONCURRENCY,
        "keep_alive": True,
        "runs_each": len(loads["front"]),
        "front_p50_ms": front["p50_ms"],
        "front_p95_ms": front["p95_ms"],
        "plain_p95_ms": statistics.mean(r["p95_ms"] for r in loads["plain"]),
        "front_failed_requests": errors,
    }
    return [
        result(
            "mtls_front_requests_per_s",
            front["requests_per_s"],
            "requests/s",
            params,
            baseline=("plain_loopback_requests_per_s", plain),
            target=("ratio", ">=", 0.8),
        )
    ]


def _request(port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes = b"{}") -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    finally:
        conn.close()


def _refused(port: int, ctx: ssl.SSLContext, method: str = "GET", path: str = "/v1/anomaly/model") -> bool:
    """True when the front refuses: at the handshake, on the first read, or with 401/403."""
    try:
        return _request(port, ctx, method, path) in (401, 403)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
        return True


def _refusals(ca: EmbeddedCA, port: int, tmp: Path) -> dict[str, Any]:
    """The six cases the zero-trust issue names, each against the running front."""
    bundles = {ca.trust_domain: ca.bundle()}
    cases: dict[str, bool] = {}
    allowed = _operator_context(ca)
    control_ok = _request(port, allowed, "GET", "/v1/anomaly/model") == 200

    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=ca.bundle().to_pem().decode())
    cases["no_client_certificate"] = _refused(port, anonymous)

    partner = EmbeddedCA.open(tmp / "partner-ca", trust_domain="partner.example")
    foreign = client_context(partner.issue_svid("spiffe://partner.example/operator/bench"), bundles)
    cases["wrong_trust_domain"] = _refused(port, foreign)

    controller = client_context(ca.issue_svid(str(workload_id(WorkloadKind.CONTROLLER))), bundles)
    doc = json.dumps({"documents": [{"title": "x", "text": "## Symptoms\nx\n"}]}).encode()
    forbidden = _request(port, controller, "POST", "/v1/rag/documents", doc) == 403
    elsewhere_ok = _request(port, controller, "GET", "/v1/anomaly/model") == 200
    cases["id_not_allowed_on_route"] = forbidden and elsewhere_ok

    short = ca.issue_svid(OPERATOR, ttl_s=2)
    time.sleep(max(0.0, (short.not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
    cases["expired_svid"] = _refused(port, client_context(short, bundles))

    revoked = ca.issue_svid(OPERATOR)
    revoked_ctx = client_context(revoked, bundles)
    before = _request(port, revoked_ctx, "GET", "/v1/anomaly/model") == 200
    ca.revoke_svid(revoked.leaf)
    # Refused once the front has re-read the CRL: within one refresh interval of the bundle's hint.
    deadline = time.monotonic() + ca.refresh_hint_s + 0.5
    refused_now = _refused(port, revoked_ctx)
    while not refused_now and time.monotonic() < deadline:
        time.sleep(0.25)
        refused_now = _refused(port, revoked_ctx)
    cases["revoked_svid"] = before and refused_now

    tls12 = _operator_context(ca)
    tls12.minimum_version = tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    cases["tls_1_2_client"] = _refused(port, tls12)

    refused = sum(cases.values())
    _say(f"refused {refused} of {len(cases)}: {cases}")
    params: dict[str, Any] = {**cases, "allowed_control_request_ok": control_ok}
    return result("refused_cases", refused, "cases", params, target=("value", ">=", len(cases)))


#: Longest a rotation run goes on past its duration while the front has not rotated yet.
ROTATION_GRACE_S = 15.0


def _rotation(ca: EmbeddedCA, upstream: str, token: str, tmp: Path, duration_s: float) -> dict[str, Any]:
    """Continuous requests while the front's SVID (TTL 4 s) and the client's rotate.

    The run lasts ``duration_s``, and past it (up to ``ROTATION_GRACE_S``) until the front has
    rotated at least once: a short run on a loaded machine still spans a rotation.
    """
    source = EmbeddedSource(
        workload_id(WorkloadKind.FRONT), ca.directory, ttl_s=4, ip_addresses=["127.0.0.1"], refresh_s=0.2
    )
    front = BackgroundFront(MtlsFront(source, Policy.load(), upstream, token), "127.0.0.1", 0)
    port = front.start()
    rebuilds_before = front.front.stats.context_rebuilds
    failed = done = 0
    served_certs: set[bytes] = set()
    client = ca.issue_svid(OPERATOR, ttl_s=4)
    conn: http.client.HTTPSConnection | None = None
    started = time.monotonic()
    deadline, grace = started + duration_s, started + duration_s + ROTATION_GRACE_S

    def going() -> bool:
        now = time.monotonic()
        rotated = front.front.stats.context_rebuilds > rebuilds_before
        return now < deadline or (not rotated and now < grace)

    try:
        while going():
            if conn is None or done % 20 == 0:
                if client.renew_at(0) <= dt.datetime.now(dt.UTC):
                    client = ca.issue_svid(OPERATOR, ttl_s=4)
                if conn is not None:
                    conn.close()
                ctx = client_context(client, {ca.trust_domain: ca.bundle()})
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
                conn.connect()
                assert conn.sock is not None
                peer = conn.sock.getpeercert(binary_form=True)
                if peer:
                    served_certs.add(peer)
            try:
                conn.request("GET", "/v1/anomaly/model")
                resp = conn.getresponse()
                resp.read()
                failed += resp.status != 200
            except (OSError, http.client.HTTPException):
                failed += 1
                conn = None
            done += 1
    finally:
        if conn is not None:
            conn.close()
        elapsed = time.monotonic() - started
        rotations = front.front.stats.context_rebuilds - rebuilds_before
        front.stop()
        source.close()
    _say(f"rotation: {failed} failed of {done}, {rotations} front contexts, {len(served_certs)} certificates")
    params = {
        "requests": done,
        "duration_s": duration_s,
        "elapsed_s": round(elapsed, 2),
        "svid_ttl_s": 4,
        "front_rotations": rotations,
        "distinct_front_certificates": len(served_certs),
    }
    return result("rotation_failed_requests", failed, "requests", params, target=("value", "<=", 0))


_MESH_SCRIPT = """
import json, os, sys, tempfile
from x0tta6bl4.connect import connect_ray, disconnect_ray
from x0tta6bl4.bench.mesh import _rate
from x0tta6bl4.mesh.faults import random_schedule
from x0tta6bl4.mesh.pipeline import ShardedMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec
nodes, regions, ticks, warmup = (int(a) for a in sys.argv[1:5])
conn = connect_ray(num_cpus=os.cpu_count(), dashboard=False)
try:
    mode = os.environ.get("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as ckpt:
        # bench mesh's spec (seed 1, its fault schedule), with this many regions (shard actors)
        topo = TopologySpec(nodes, regions, seed=1)
        faults = tuple(random_schedule(topo.build(), ticks + warmup, seed=1))
        spec = MeshSpec(topology=topo, seed=1, faults=faults, checkpoint_dir=ckpt)
        mesh = ShardedMesh(spec.topology.build(), spec)
        rate = _rate(mesh, ticks, warmup)
        mesh.close()
finally:
    disconnect_ray(conn)
print(json.dumps({"ticks_per_s": rate, "ray_auth_mode": mode}))
"""


def _mesh_run(
    auth: bool, nodes: int, regions: int, ticks: int, warmup: int, cwd: Path, join: str | None = None
) -> dict[str, Any]:
    """One sharded mesh run in a fresh driver process: on a local Ray it starts, or on Ray ``join``.

    Joining, the driver offers this process's token and imports the package from this
    environment (nothing shipped), as the workers of a local Ray do.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    if not auth:
        env["X0TTA6BL4_RAY_AUTH"] = "off"
    else:
        env.pop("X0TTA6BL4_RAY_AUTH", None)
    if join is not None:
        env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")})
        env.update({"RAY_ADDRESS": join, SHIP_PACKAGE_ENV: "off"})
    proc = subprocess.run(
        [sys.executable, "-c", _MESH_SCRIPT, str(nodes), str(regions), str(ticks), str(warmup)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mesh run (auth={auth}) failed: {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _mesh_size(quick: bool) -> tuple[int, int, int, int]:
    """Nodes, regions (shard actors), measured ticks and warm-up ticks of the Ray auth mesh runs."""
    from x0tta6bl4.bench.mesh import REGIONS

    # Quick: a small mesh in two shards (each shard actor is one more worker process to start).
    return (600, 2, 100, 10) if quick else (MESH_NODES, REGIONS, 200, 10)


def _ray_auth_mesh(quick: bool, runs: dict[bool, list[dict[str, Any]]], tmp: Path) -> list[dict[str, Any]]:
    """The 10,000-node sharded mesh on a local Ray with token authentication, against the same without.

    Each run is a fresh driver process; ``runs`` may hold runs done already (quick: the token-mode
    run on the Ray of the served rows). Runs alternate (ABBA) when there are several of each.
    """
    nodes, regions, ticks, warmup = _mesh_size(quick)
    order = (True, False) if quick else (True, False, False, True)
    done = {True: len(runs[True]), False: len(runs[False])}
    cwd = tmp / "rayauth"
    cwd.mkdir()
    for auth in order:
        if done[auth]:
            done[auth] -= 1
            continue
        _say(f"mesh {nodes} nodes, Ray auth {'on' if auth else 'off'}")
        runs[auth].append(_mesh_run(auth, nodes, regions, ticks, warmup, cwd))
    with_auth = statistics.mean(r["ticks_per_s"] for r in runs[True])
    without = statistics.mean(r["ticks_per_s"] for r in runs[False])
    params = {
        "nodes": nodes,
        "regions": regions,
        "ticks": ticks,
        "runs_each": len(runs[True]),
        "token_run_joined_the_served_ray": quick,
        "ray_auth_mode": runs[True][0]["ray_auth_mode"],
        "baseline_ray_auth_mode": runs[False][0]["ray_auth_mode"],
    }
    return [
        result(
            "ray_auth_mesh_ticks_per_s",
            with_auth,
            "ticks/s",
            params,
            baseline=("no_auth_mesh_ticks_per_s", without),
            target=("ratio", ">=", 0.9),
        )
    ]
