"""Ray's token boundary on a real head: without the token no driver joins and no job is taken; with it both work."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.ports import worker_port_flags
from x0tta6bl4.connect import free_local_port
from x0tta6bl4.security import ray_auth

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
_AUTH_VARS = (
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    ray_auth.AUTH_SWITCH_ENV,
)

# A bare Ray driver: joins the address it is given and runs one task.
_JOIN = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("JOINED", ray.get(ray.remote(lambda: 42).remote()))
"""
# The platform's way in: connect_ray() with whatever the environment says, then one task.
_CONNECT = """
import json, sys, ray
from x0tta6bl4.connect import connect_ray
conn = connect_ray(address=sys.argv[1] or None, num_cpus=1, dashboard=False)
answer = ray.get(ray.remote(lambda: 42).remote())
print(json.dumps({"address": conn.address, "started_here": conn.started_here, "answer": answer}))
"""
# A job's entrypoint.
_PRINT_42 = ["python", "-c", "print('job ran with', 6 * 7)"]


@dataclass(frozen=True)
class Head:
    root: Path  # RAY_TMPDIR of the head: its ray_current_cluster is root/ray/ray_current_cluster
    gcs: str
    dashboard: str
    token_file: Path


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray address or credential, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    env.update(extra)
    return env


def _stop(pgid: int, root: Path) -> None:
    """End the head's processes only: its process group and anything running from its temp dir."""

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if proc.pid != os.getpid() and (
                    os.getpgid(proc.pid) == pgid or str(root) in " ".join(proc.info["cmdline"] or ())
                ):
                    found.append(proc)
        return found

    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):  # gcs_server and raylet linger on TERM
        procs = ours()
        if not procs:
            return
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        psutil.wait_procs(procs, timeout=wait_s)


@pytest.fixture(scope="module")
def head():
    # A short path of our own: Ray's socket paths must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="x0ra-", dir="/tmp"))
    token_file = root / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    port, dash = free_local_port(), free_local_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={free_local_port()}",
        f"--ray-client-server-port={free_local_port()}",
        "--num-cpus=1",
        *worker_port_flags(),
        f"--temp-dir={root / 'ray'}",
        "--disable-usage-stats",
    ]
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    started: list[subprocess.Popen[str]] = []
    failed: list[str] = []
    try:
        for attempt in range(2):
            start = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # the head's processes form a group of their own: we stop only those
            )
            started.append(start)
            out, err = start.communicate(timeout=300)  # its dashboard modules get 180 s (tests/conftest.py)
            if start.returncode == 0:
                break
            _stop(start.pid, root)
            failed.append("\n".join(line for line in (out + err).splitlines() if "INFO" not in line)[-1500:])
            # Once more: `ray start` gives its raylet 30 s to register (hard-coded), and this head
            # starts in the suite's busiest minute; a second failure is the head's own.
            if attempt == 1:
                pytest.fail("ray start --head failed twice:\n" + "\n---\n".join(failed))
        yield Head(root, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", token_file)
    finally:
        for start in started:
            with contextlib.suppress(ProcessLookupError):
                start.kill()
            _stop(start.pid, root)
        shutil.rmtree(root, ignore_errors=True)


def _spawn(code: str, arg: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, arg],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (a hang, not a clear refusal): {err[-2000:]}")
    return proc.returncode, out, err


def _port(address: str) -> str:
    """The port of a GCS address (Ray reports the node's own IP where we named 127.0.0.1)."""
    return address.rpartition(":")[2]


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def _http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_driver_without_the_token_cannot_join(head):
    without = _spawn(_JOIN, head.gcs, _env())
    wrong = _spawn(_JOIN, head.gcs, _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
    for proc in (without, wrong):
        code, out, err = _finish(proc)
        assert code != 0 and "JOINED" not in out
        assert "UNAUTHENTICATED" in err or "authentication" in err.lower(), err[-2000:]


def test_the_job_api_refuses_requests_and_submissions_without_the_right_token(head):
    token = head.token_file.read_text().strip()
    status, text = _http(f"{head.dashboard}/api/jobs/")
    assert (status, text) == (401, "Unauthorized: Missing authentication token")
    assert _http(f"{head.dashboard}/api/jobs/", token=secrets.token_hex(32))[0] == 403
    assert _http(f"{head.dashboard}/api/jobs/", body={"entrypoint": "echo pwned"})[0] == 401
    cli = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--no-wait", "--", "echo", "pwned"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode != 0 and "Authentication required" in cli.stdout + cli.stderr
    status, listed = _http(f"{head.dashboard}/api/jobs/", token=token)
    assert status == 200 and "pwned" not in listed  # nothing was queued


def test_with_the_token_a_driver_joins_and_ray_job_submit_runs_a_job(head):
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_file))
    driver = _spawn(_JOIN, head.gcs, env)
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--", *_PRINT_42],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    assert "job ran with 42" in submit.stdout and "succeeded" in submit.stdout.lower()
    code, out, err = _finish(driver)
    assert code == 0 and "JOINED 42" in out, err[-2000:]


def test_the_platform_joins_a_named_cluster_with_its_token_and_refuses_a_wrong_one(head, tmp_path):
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(secrets.token_hex(32))
    wrong_file.chmod(0o600)
    # Only the path: connect_ray probes the cluster and turns token mode on itself.
    good = _spawn(_CONNECT, "", _env(RAY_ADDRESS=head.gcs, RAY_AUTH_TOKEN_PATH=str(head.token_file)))
    bad = _spawn(_CONNECT, head.gcs, _env(RAY_AUTH_TOKEN_PATH=str(wrong_file)))
    code, out, err = _finish(good)
    assert code == 0, err[-2000:]
    joined = _last_json(out)
    assert _port(joined["address"]) == _port(head.gcs)
    assert (joined["started_here"], joined["answer"]) == (False, 42)
    code, out, err = _finish(bad)
    assert code != 0 and "RayAuthError" in err
    assert f"the Ray cluster at {head.gcs} requires a token and refused {wrong_file}" in err


def test_the_cluster_named_in_ray_current_cluster_is_joined_only_with_a_token_it_accepts(head):
    # RAY_TMPDIR=root makes this the file ray.init and connect_ray read (Ray writes the node's IP).
    named = (head.root / "ray" / "ray_current_cluster").read_text().strip()
    assert _port(named) == _port(head.gcs)
    trusted = _spawn(_CONNECT, "", _env(RAY_TMPDIR=str(head.root), RAY_AUTH_TOKEN_PATH=str(head.token_file)))
    # A stranger: its own working directory (so its own platform token) and HOME.
    stranger = head.root / "stranger"
    (stranger / "home").mkdir(parents=True)
    untrusted = _spawn(_CONNECT, "", _env(RAY_TMPDIR=str(head.root), HOME=str(stranger / "home")), stranger)
    # address="auto" (join the file's cluster or fail) fails at once with a foreign token or auth off.
    auto_env = _env(RAY_TMPDIR=str(head.root), HOME=str(stranger / "home"))
    auto = _spawn(_CONNECT, "auto", auto_env, stranger)
    auto_off = _spawn(
        _CONNECT,
        "auto",
        {**auto_env, "RAY_AUTH_TOKEN_PATH": str(head.token_file), ray_auth.AUTH_SWITCH_ENV: "off"},
    )
    code, out, err = _finish(trusted)
    assert code == 0, err[-2000:]
    joined = _last_json(out)
    assert _port(joined["address"]) == _port(head.gcs)
    assert (joined["started_here"], joined["answer"]) == (False, 42)
    for proc in (auto, auto_off):
        code, out, err = _finish(proc)
        assert code != 0 and "RayAuthError" in err and f"address 'auto' names {named}" in err
    code, out, err = _finish(untrusted, timeout=150)
    assert code == 0, err[-2000:]
    joined = _last_json(out)
    assert joined["started_here"] and _port(joined["address"]) != _port(head.gcs) and joined["answer"] == 42
    assert f"not joining the Ray cluster at {named}" in err and "refuses the platform's token" in err
    token = (stranger / ".x0tta6bl4" / "security" / "ray_auth_token").read_text().strip()
    assert token not in out + err


def test_the_probe_tells_refused_accepted_and_unreachable_apart(head):
    ours = ray_auth.TokenSource("file", head.token_file)
    stranger_file = head.root / "stranger-token"
    stranger_file.write_text(secrets.token_hex(32))
    stranger = ray_auth.TokenSource("file", stranger_file)
    accepted = ray_auth.probe_cluster(head.gcs, [stranger, ours])
    assert accepted.auth is ray_auth.ClusterAuth.TOKEN_ACCEPTED and accepted.source == ours
    assert ray_auth.probe_cluster(head.gcs, [stranger]).auth is ray_auth.ClusterAuth.TOKEN_REFUSED
    assert ray_auth.probe_cluster(head.gcs, []).auth is ray_auth.ClusterAuth.TOKEN_REFUSED
    closed = f"127.0.0.1:{free_local_port()}"
    assert ray_auth.probe_cluster(closed, [ours], timeout_s=2).auth is ray_auth.ClusterAuth.UNREACHABLE
