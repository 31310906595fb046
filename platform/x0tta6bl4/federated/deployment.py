"""Flower's deployment runtime for `x0tta6bl4 train --deployment`: SuperLink, SuperNodes, TLS and node keys.

Every piece is Flower 1.42's own command: ``flower-superlink`` serves its Fleet, Control
and Runtime APIs on one HTTPS port with a certificate the platform's embedded CA issues
(``flower/server`` SPIFFE ID, ``localhost``/``127.0.0.1`` SANs); ``--enable-supernode-auth``
makes it accept only SuperNodes whose EC public keys were registered through the Control
API (``flwr supernode register``): a SuperNode signs every Fleet request with its private
key, and an unregistered key cannot activate (Flower error 2004, the process exits 305).
``flwr run`` then submits the Flower app in :data:`APP_DIR` with the run's config. Each
process logs to ``<root>/logs/`` and gets its own ``FLWR_HOME`` under ``<root>/home/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from x0tta6bl4.connect import free_local_port
from x0tta6bl4.errors import X0tta6bl4Error

#: The Flower app (``pyproject.toml``) that ``flwr run`` builds into a FAB: the ServerApp and
#: ClientApp of ``x0tta6bl4.federated``, configured by ``[tool.flwr.app.config]``.
APP_DIR = Path(__file__).resolve().parent / "app"
#: The SuperLink connection's name in the CLI's ``FLWR_HOME/config.toml``.
CONNECTION = "x0tta6bl4"
#: How long a started process may take to be ready (SuperLink listening, SuperNode activated).
START_TIMEOUT_S = 90.0
#: What Flower's SuperNode prints when the SuperLink refuses its key (exit code 305).
REFUSED_MARK = "Failed to initialize the connection to the SuperLink"
#: Children poll their Runtime API for tasks this often (Flower's default is 1 s).
TASK_POLL_INTERVAL_S = "0.2"


class DeploymentError(X0tta6bl4Error):
    """A deployment process failed to start, died, timed out, or a refused SuperNode was let in."""


@dataclasses.dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH encodings Flower reads).

    Attributes:
        name: the node's name (``region-3``, ``rogue``).
        private_path: the private key (0600; passed to ``flower-supernode``).
        public_path: the public key (registered with ``flwr supernode register``).
        fingerprint: SHA-256 of the public key line, hex (for reports; the key itself is not logged).
    """

    name: str
    private_path: Path
    public_path: Path
    fingerprint: str


def new_node_key(directory: Path, name: str) -> NodeKey:
    """Generate a SuperNode key pair into ``directory`` (made 0700; the private key 0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from x0tta6bl4.durable import write_atomic

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    write_atomic(private_path, private, mode=0o600)
    write_atomic(public_path, public + b"\n", mode=0o644)
    return NodeKey(name, private_path, public_path, hashlib.sha256(public).hexdigest())


def check_prerequisites(ca_dir: Path | None) -> None:
    """Refuse a deployment that could not start, before anything runs: Flower's commands, the CA.

    Raises:
        ConfigError: a Flower command is missing next to this Python, or the CA cannot be opened.
    """
    from x0tta6bl4.errors import ConfigError
    from x0tta6bl4.security.ca import EmbeddedCA

    bindir = Path(sys.executable).parent
    missing = [c for c in ("flower-superlink", "flower-supernode", "flwr") if not (bindir / c).exists()]
    if missing:
        raise ConfigError(
            f"deployment needs Flower's commands next to {sys.executable}: {', '.join(missing)}"
        )
    try:
        EmbeddedCA.open(ca_dir)
    except (OSError, X0tta6bl4Error) as exc:
        where = ca_dir if ca_dir is not None else "the default CA directory"
        raise ConfigError(f"deployment: cannot open the CA in {where}: {exc}") from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the driver dies, even by SIGKILL (no orphaned servers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_run_config(path: Path, values: Mapping[str, bool | int | float | str]) -> Path:
    """The run config as a flat TOML file, what ``flwr run --run-config FILE.toml`` takes."""
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:600]


class FlowerDeployment:
    """The processes of one deployment run, started in order and always stopped (``with`` block).

    Private keys (the SuperLink's TLS key, the SuperNodes' keys) are written 0600 and
    deleted when the deployment stops; public keys, certificates and logs stay.

    Args:
        root: the run's deployment directory (keys, TLS files, logs, FLWR_HOMEs; made 0700).
        ca_dir: the embedded CA that issues the SuperLink's certificate (None: the default CA).
        say: where progress lines go.
        threads: CPU threads each app process may use (``OMP_NUM_THREADS``; a simulated
            client gets as many as its ``client_cpus``).
    """

    def __init__(
        self,
        root: Path,
        ca_dir: Path | None = None,
        say: Callable[[str], None] = print,
        threads: int = 1,
    ) -> None:
        self.root = root.resolve()
        self.ca_dir = ca_dir
        self.say = say
        self.threads = max(1, threads)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.address = ""
        self.bundle = self.root / "tls" / "ca.pem"
        self.tls: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        (self.root / "logs").mkdir(exist_ok=True)

    # ------------------------------------------------------------------ processes

    def _env(self, home: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no Ray credential leaves
        bindir = str(Path(sys.executable).parent)  # flower-superexec, flwr-clientapp, flwr-serverapp
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["FLWR_HOME"] = str(self.root / "home" / home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_LOG_LEVEL"] = "INFO"
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = TASK_POLL_INTERVAL_S
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def _start(self, name: str, argv: list[str], home: str) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(home),
                cwd=self.root,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise DeploymentError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def _cli_many(self, commands: list[list[str]], timeout: float = 120.0) -> list[Any]:
        """Run ``flwr ARGS --format json`` commands against this SuperLink at once; their JSON answers."""
        flwr = str(Path(sys.executable).parent / "flwr")
        procs = [
            subprocess.Popen(
                [flwr, *args, "--format", "json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self._env("cli"),
                cwd=self.root,
            )
            for args in commands
        ]
        answers = []
        try:
            for args, proc in zip(commands, procs, strict=True):
                what = " ".join(args[:2])
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise DeploymentError(f"flwr {what} timed out") from None
                try:
                    answer = json.loads(out[out.index("{") :])
                except ValueError:
                    answer = None
                if proc.returncode != 0 or not isinstance(answer, dict) or not answer.get("success"):
                    detail = answer.get("error-message") if isinstance(answer, dict) else None
                    detail = detail or (err.strip().splitlines() or out.strip().splitlines() or [""])[-1]
                    raise DeploymentError(f"flwr {what} failed: {' '.join(str(detail).split())[:300]}")
                answers.append(answer)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return answers

    def _cli(self, args: list[str], timeout: float = 120.0) -> Any:
        """Run ``flwr ARGS --format json`` against this SuperLink; its JSON answer."""
        return self._cli_many([args], timeout)[0]

    def alive(self, name: str) -> bool:
        """Whether the named process still runs."""
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def check_alive(self, name: str) -> None:
        """Raise DeploymentError (with its log's last lines) when the named process has exited."""
        proc = self.procs[name]
        if proc.poll() is not None:
            raise DeploymentError(
                f"{name} exited with status {proc.returncode}: {_tail(self.root / 'logs' / f'{name}.log')}"
            )

    def close(self) -> None:
        """Stop every process this deployment started, and their children (SuperExec, app processes)."""
        import psutil

        procs: list[psutil.Process] = []
        for proc in reversed(list(self.procs.values())):  # SuperNodes first, the SuperLink last
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                procs += [parent, *parent.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        for key in [*(self.root / "keys").glob("*.key"), self.root / "tls" / "superlink.key"]:
            key.unlink(missing_ok=True)

    def __enter__(self) -> FlowerDeployment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ SuperLink

    def _issue_server_certificate(self, ttl_s: int) -> tuple[Path, Path]:
        from x0tta6bl4.durable import write_atomic
        from x0tta6bl4.security.ca import EmbeddedCA
        from x0tta6bl4.security.identity import WorkloadKind, workload_id

        ca = EmbeddedCA.open(self.ca_dir)
        sid = workload_id(WorkloadKind.FLOWER_SERVER, trust_domain=ca.trust_domain)
        svid = ca.issue_svid(sid, ttl_s=ttl_s, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        tls = self.root / "tls"
        tls.mkdir(exist_ok=True, mode=0o700)
        chain, key = tls / "superlink.pem", tls / "superlink.key"
        write_atomic(key, svid.key_pem(), mode=0o600)
        write_atomic(chain, svid.chain_pem(), mode=0o644)
        write_atomic(self.bundle, ca.bundle_pem_path.read_bytes(), mode=0o644)
        self.tls = {
            "spiffe_id": str(svid.spiffe_id),
            "serial": f"{svid.serial:x}",
            "ca_dir": str(ca.directory),
        }
        return chain, key

    def _peer_spiffe_id(self, port: int) -> str | None:
        """The SPIFFE ID of the certificate the SuperLink serves, verified with the CA bundle (None: down)."""
        from cryptography import x509

        context = ssl.create_default_context(cafile=str(self.bundle))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
            ):
                der = conn.getpeercert(binary_form=True)
        except (ConnectionError, TimeoutError, OSError):
            return None
        if der is None:
            return None
        sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        return uris[0] if uris else None

    def start_superlink(self, svid_ttl_s: int) -> str:
        """Start the SuperLink with TLS and SuperNode authentication; its address once it serves TLS.

        Args:
            svid_ttl_s: lifetime of its certificate (the run must end before; it is not rotated).

        Raises:
            DeploymentError: it exited, or did not serve the CA's certificate within START_TIMEOUT_S.
        """
        chain, key = self._issue_server_certificate(svid_ttl_s)
        port = free_local_port()
        self._start(
            "superlink",
            [
                str(Path(sys.executable).parent / "flower-superlink"),
                "--ssl-certfile",
                str(chain),
                "--ssl-keyfile",
                str(key),
                "--ssl-ca-certfile",
                str(self.bundle),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "superlink",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while (peer := self._peer_spiffe_id(port)) is None:
            self.check_alive("superlink")
            if time.monotonic() > deadline:
                raise DeploymentError(f"the SuperLink did not serve TLS on 127.0.0.1:{port} in time")
            time.sleep(0.2)
        if peer != self.tls["spiffe_id"]:
            raise DeploymentError(f"the SuperLink serves {peer}, not {self.tls['spiffe_id']}")
        self.tls["verified_peer"] = peer
        self.address = f"127.0.0.1:{port}"
        home = self.root / "home" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\nroot-certificates = {json.dumps(str(self.bundle))}\n',
            encoding="utf-8",
        )
        self.say(f"deployment: SuperLink on https://{self.address} as {peer} (SuperNode authentication on)")
        return self.address

    # ------------------------------------------------------------------ SuperNodes

    def start_supernode(self, key: NodeKey, node_config: Mapping[str, int | str]) -> subprocess.Popen[bytes]:
        """Start ``flower-supernode`` for ``key.name``, trusting only the CA bundle, signing with its key."""
        config = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in node_config.items())
        return self._start(
            key.name,
            [
                str(Path(sys.executable).parent / "flower-supernode"),
                "--superlink",
                self.address,
                "--root-certificates",
                str(self.bundle),
                "--auth-supernode-private-key",
                str(key.private_path),
                "--node-config",
                config,
                "--host",
                "127.0.0.1",
                "--port",
                str(free_local_port()),
            ],
            key.name,
        )

    def listed_nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's SuperNodes (``flwr supernode ls``): node id, status, times."""
        nodes = self._cli(["supernode", "ls", CONNECTION])["nodes"]
        return list(nodes) if isinstance(nodes, list) else []

    def wait_online(self, names: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the named SuperNodes have activated (their logs name their ids); then check the list.

        Raises:
            DeploymentError: one exited or did not activate in time, or the SuperLink does not
                list exactly these nodes as online.
        """
        deadline = time.monotonic() + timeout_s
        pending = set(names)
        while pending:
            for name in sorted(pending):
                self.check_alive(name)
                if "SuperNode ID:" in _tail(self.root / "logs" / f"{name}.log", 200):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise DeploymentError(f"SuperNodes {', '.join(sorted(pending))} did not connect in time")
            time.sleep(0.2)
        online = {str(n["node-id"]) for n in self.listed_nodes() if n.get("status") == "online"}
        expected = {str(self.nodes[n]["node_id"]) for n in names}
        if online != expected:
            raise DeploymentError(
                f"the SuperLink lists online nodes {sorted(online)}, expected {sorted(expected)}"
            )

    def _check_refused(self, key: NodeKey, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
        """Check that the SuperLink refused the unregistered SuperNode ``proc``.

        Refused means: the process exits non-zero with Flower's connection-refused message, and
        the SuperLink lists no node besides the registered ones.

        Raises:
            DeploymentError: it is still running after ``timeout_s``, exited otherwise, or was listed.
        """
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"the unregistered SuperNode {key.name} was not refused in {timeout_s:g} s"
            ) from None
        log = self.root / "logs" / f"{key.name}.log"
        text = log.read_text(encoding="utf-8", errors="replace")
        listed = {str(n["node-id"]) for n in self.listed_nodes()}
        registered = {str(n["node_id"]) for n in self.nodes.values()}
        if code == 0 or REFUSED_MARK not in text or listed != registered:
            raise DeploymentError(f"the unregistered SuperNode {key.name} was not refused: {_tail(log)}")
        reason = next((line.strip() for line in text.splitlines() if "[code:" in line), REFUSED_MARK)
        self.say(f"deployment: SuperNode {key.name} with an unregistered key refused ({reason})")
        return {"name": key.name, "exit_code": code, "reason": reason, "key_sha256": key.fingerprint}

    def add_supernodes(
        self, node_configs: Mapping[str, Mapping[str, int | str]], rogue: bool = False
    ) -> dict[str, Any] | None:
        """Generate, register and start one SuperNode per entry, and wait until all are online.

        Each key is registered with ``flwr supernode register`` (all at once) before its
        SuperNode starts.

        Args:
            node_configs: each SuperNode's name and ``--node-config``.
            rogue: also start a SuperNode whose key is never registered, and check that the
                SuperLink refuses it.

        Returns:
            the refused SuperNode's record (with ``rogue``), else None.

        Raises:
            DeploymentError: a registration or a SuperNode failed, or the rogue was let in.
        """
        keys = {name: new_node_key(self.root / "keys", name) for name in node_configs}
        answers = self._cli_many(
            [["supernode", "register", str(k.public_path), CONNECTION] for k in keys.values()]
        )
        for (name, key), answer in zip(keys.items(), answers, strict=True):
            self.nodes[name] = {
                "node_id": int(answer["node-id"]),
                "key_sha256": key.fingerprint,
                **node_configs[name],
            }
            self.start_supernode(key, node_configs[name])
        unregistered = new_node_key(self.root / "keys", "rogue") if rogue else None
        proc = (
            self.start_supernode(unregistered, {"partition-id": 0, "num-partitions": 1})
            if unregistered
            else None
        )
        self.wait_online(list(node_configs))
        self.say(f"deployment: {len(node_configs)} SuperNodes registered and online")
        if unregistered is None or proc is None:
            return None
        return self._check_refused(unregistered, proc, START_TIMEOUT_S)

    # ------------------------------------------------------------------ the run

    def run_app(self, run_config: Mapping[str, bool | int | float | str]) -> int:
        """Submit the Flower app with ``flwr run APP_DIR <connection> --run-config FILE``; the run id."""
        path = write_run_config(self.root / "run-config.toml", run_config)
        answer = self._cli(["run", str(APP_DIR), CONNECTION, "--run-config", str(path)])
        run_id = int(answer["run-id"])
        self.say(f"deployment: flwr run started run {run_id}")
        return run_id

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``)."""
        runs = self._cli(["ls", CONNECTION, "--run-id", str(run_id)]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""
