"""Real Ray nodes for whole-job tests: `ray start` heads and workers on this machine, each with its own
ports and temp dir, found and killed by PID (never `ray stop`, which stops every cluster here)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import worker_port_flags
from x0tta6bl4.connect import free_local_port as free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_of_temp_dir(temp: str) -> list[int]:
    """Processes of the Ray node started with ``--temp-dir temp``: those whose command line names it,
    and their descendants (workers rename themselves ``ray::...``, so only their parent names it)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {pid for pid in parents if pid != os.getpid() and temp in _cmdline(pid)}
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return sorted(found)


class RayNodes:
    """A Ray cluster of `ray start` nodes under ``root`` (a short path: Ray's socket names must fit).

    Every node gets its own temp dir, so its processes are the ones whose command line names it.
    Token authentication is on, with a token file of the cluster's own; workers import the package
    from this checkout (PYTHONPATH), as an image that installs it would.
    """

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        token = root / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = dict(env)
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token),
            PYTHONPATH=str(REPO / "platform"),
            RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        )
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_REDIS_ADDRESS"):
            self.env.pop(name, None)
        self.address: str | None = None
        self.nodes: dict[str, Path] = {}

    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None) -> Path:
        temp = self.root / name
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        ports += worker_port_flags()
        cmd = [str(BIN / "ray"), "start", *args, *ports, f"--temp-dir={temp}", "--disable-usage-stats"]
        self.nodes[name] = temp
        for attempt in range(2):
            proc = subprocess.run(
                cmd, env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=180
            )
            if proc.returncode == 0:
                return temp
            # `ray start` gives a raylet 30 s to register (hard-coded): a loaded machine needs longer.
            self.kill(name)
            if attempt == 0 and "timed out during startup" in proc.stderr + proc.stdout:
                continue
            break
        raise RuntimeError(f"ray start ({name}) failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    def start_head(
        self, num_cpus: int, resources: dict[str, float], extra_env: dict[str, str] | None = None
    ) -> str:
        """Start the head; its GCS address."""
        port = free_port()
        self._start(
            "head",
            [
                "--head",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources)}",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
            ],
            extra_env,
        )
        self.address = f"127.0.0.1:{port}"
        return self.address

    def start_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> Path:
        """Start a worker node that joins the head."""
        assert self.address is not None
        return self._start(
            name,
            [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}"],
            None,
        )

    def pids(self, name: str) -> list[int]:
        """Processes of node ``name`` (see :func:`pids_of_temp_dir`)."""
        return pids_of_temp_dir(str(self.nodes[name]))

    def process(self, name: str, marker: str) -> int:
        """The one process of node ``name`` whose command line holds ``marker`` (e.g. ``gcs_server``)."""
        found = [pid for pid in self.pids(name) if marker in _cmdline(pid)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} processes of {name} match {marker!r}")
        return found[0]

    def kill(self, name: str) -> list[int]:
        """SIGKILL every process of node ``name`` (as if its machine died); the PIDs killed."""
        killed = []
        for _ in range(3):  # a dying raylet's children may still be forking
            for pid in self.pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
        return killed

    def close(self) -> None:
        """Kill every node's processes, workers first."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.kill(name)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's redis-server on a free loopback port, nothing persisted to disk (Ray's GCS store)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    proc = subprocess.Popen(
        ["redis-server", *args, "--appendonly", "no", "--protected-mode", "yes"],
        stdout=open(directory / "redis.log", "wb"),  # noqa: SIM115 - the process owns it
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"redis-server did not listen on {port}")


def restart_process(pid: int, log: Path) -> subprocess.Popen[bytes]:
    """SIGKILL ``pid`` and start its program again with the same arguments and environment (what a
    supervisor, or KubeRay's restart of the head's container, does for the GCS)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(
        line.split(b"=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in line
    )
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        time.sleep(0.05)
    return subprocess.Popen(
        argv,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
