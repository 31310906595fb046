"""The one place the platform connects to Ray, inside the Ray token boundary of ``security.ray_auth``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.observability import tracing
from x0tta6bl4.security import ray_auth
from x0tta6bl4.security.errors import RayAuthError

log = logging.getLogger(__name__)

#: How long a named cluster's GCS may take to answer the authentication probe.
_PROBE_PATIENCE_S = 10.0
#: Port of the metrics agent of a local Ray this process starts (Prometheus scrapes it); unset: any free.
METRICS_EXPORT_PORT_ENV = "X0TTA6BL4_RAY_METRICS_EXPORT_PORT"
#: ``off``: a local Ray this process starts runs without Ray's dashboard (headless runs and CI: the
#: dashboard costs about 10 s of start-up and 20 CPU-seconds in its first half-minute). Its
#: metrics agent, which Prometheus scrapes, runs either way; Ray's state API and job submission
#: need the dashboard.
DASHBOARD_ENV = "X0TTA6BL4_RAY_DASHBOARD"
#: Ray's authentication variables as they were before connect_ray changed them (restored on disconnect).
_env_before: dict[str, str | None] | None = None


@dataclass(frozen=True)
class RayConnection:
    """How this process reached Ray."""

    address: str
    started_here: bool
    dashboard_url: str | None
    #: False when Ray was already initialised in this process: whoever did it disconnects.
    owned: bool = True


def platform_actor_options(name: str, **extra: Any) -> dict[str, Any]:
    """Ray options of a named platform actor: detached in the platform's namespace, restarted forever.

    ``num_cpus=0``: these actors mostly wait, and must not hold cores that tasks need.
    ``extra`` adds or overrides options (e.g. ``scheduling_strategy``). The driver's ``OTEL_*``
    variables go along in the actor's ``runtime_env``, so it traces like its driver on any node.
    """
    options: dict[str, Any] = {
        "name": name,
        "namespace": RAY_NAMESPACE,
        "lifetime": "detached",
        "num_cpus": 0,
        "max_restarts": -1,
    }
    otel = tracing.otel_env()
    if otel:
        options["runtime_env"] = {"env_vars": otel}
    return {**options, **extra}


def connect_ray(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = True
) -> RayConnection:
    """Join a Ray cluster, or start a local one, inside the platform's Ray authentication boundary.

    Order: the explicit ``address``; ``RAY_ADDRESS`` (set by ``ray job submit``); the cluster named
    by Ray's ``ray_current_cluster`` file (under world-writable ``/tmp``), joined only when it
    requires a token and accepts the platform's; otherwise a new local Ray. With token
    authentication on (the default, see :mod:`x0tta6bl4.security.ray_auth`) a local Ray runs in
    token mode with the platform's token, and a named cluster is probed first: one that requires a
    token gets the first candidate it accepts, one without authentication is joined with a warning
    (it was named explicitly). ``X0TTA6BL4_RAY_AUTH=off`` leaves Ray's authentication as configured
    and never joins the cluster of the file. Everything runs in the platform's namespace so named
    actors find each other.

    Raises:
        RayAuthError: the named cluster requires a token and refuses every candidate, or
            ``address="auto"`` names a cluster the platform will not join.
        RayTokenError: the configured token or the platform's token file is unusable.
        RayUnreachableError: the named cluster's GCS does not answer.
    """
    global _env_before
    # Keep Ray from rewriting accelerator variables for zero-GPU workers (and from warning about it).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayConnection(ctx.gcs_address, False, None, owned=False)
    before = ray_auth.auth_env_snapshot()
    try:
        conn = _connect(ray, address, num_cpus, dashboard)
    except BaseException:
        ray_auth.restore_auth_env(before)
        raise
    _env_before = before
    return conn


def _connect(ray: Any, address: str | None, num_cpus: int | None, dashboard: bool) -> RayConnection:
    auth = ray_auth.auth_enabled()
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target in (None, "auto"):
        found = _current_cluster_address()
        if found is not None and auth and _current_cluster_accepts_us(found):
            target = found
        elif target == "auto":
            raise RayAuthError(
                f"address 'auto' names {found or 'no cluster'} in {_current_cluster_file()}, and the "
                "platform joins that cluster only when it requires a token and accepts ours"
                f"{'' if auth else f' ({ray_auth.AUTH_SWITCH_ENV}=off)'}: name the cluster explicitly "
                "(--ray-address or RAY_ADDRESS)"
            )
        else:
            if found is not None and not auth:
                log.warning(
                    "not joining the Ray cluster at %s named by %s (%s=off); starting a local Ray",
                    found,
                    _current_cluster_file(),
                    ray_auth.AUTH_SWITCH_ENV,
                )
            target = "local"
    elif auth and not target.startswith("ray://") and target != "local":
        _prepare_to_join(target)
    if target != "local":
        # A cluster's workers may run on other machines: they import this very package from the
        # job's runtime_env, and their warnings reach the driver's output (`ray job logs`).
        info = ray.init(
            address=target, namespace=RAY_NAMESPACE, log_to_driver=True, runtime_env=package_runtime_env()
        )
        return RayConnection(info.address_info["gcs_address"], False, info.dashboard_url or None)
    if auth:
        ray_auth.use_token_auth()
    info = ray.init(
        address="local",  # never Ray's own fallback to the cluster named in /tmp
        namespace=RAY_NAMESPACE,
        num_cpus=num_cpus,
        include_dashboard=dashboard and _dashboard_wanted(),
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
        _metrics_export_port=_metrics_export_port(),
    )
    return RayConnection(info.address_info["gcs_address"], True, info.dashboard_url or None)


def _dashboard_wanted() -> bool:
    """Whether ``$X0TTA6BL4_RAY_DASHBOARD`` lets a local Ray start its dashboard (``on``, the default)."""
    text = os.environ.get(DASHBOARD_ENV, "").strip().lower()
    if text in ("", "on", "1", "true", "yes"):
        return True
    if text in ("off", "0", "false", "no"):
        return False
    raise ConfigError(f"{DASHBOARD_ENV} must be on or off, not {text[:20]!r}")


def _metrics_export_port() -> int | None:
    """The metrics agent port ``$X0TTA6BL4_RAY_METRICS_EXPORT_PORT`` asks for (None: Ray picks one)."""
    text = os.environ.get(METRICS_EXPORT_PORT_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{METRICS_EXPORT_PORT_ENV} must be a port number, not {text[:20]!r}")
    return int(text)


def package_runtime_env() -> dict[str, Any] | None:
    """The job-level runtime_env that ships this ``x0tta6bl4`` package to every worker of a cluster.

    Workers on other nodes (or in another working directory) then import the driver's code, not
    whatever the node's image holds, and find the repository's ``bpf/`` programs beside it. None
    when the submitted job already ships ``py_modules`` (Ray merges no field from two places) or
    when ``X0TTA6BL4_SHIP_PACKAGE=off`` says the image installs the package.
    """
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if os.environ.get(SHIP_PACKAGE_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    if "py_modules" in (job.get("runtime_env") or {}):
        return None
    import x0tta6bl4

    package = Path(x0tta6bl4.__file__).resolve().parent
    modules = [str(package)]
    bpf = package.parents[1] / "bpf"  # the repository's eBPF programs, read by each node's EbpfSource
    if bpf.is_dir():
        modules.append(str(bpf))
    return {"py_modules": modules}


#: ``off`` keeps the package out of the job's runtime_env (the cluster's image installs it).
SHIP_PACKAGE_ENV = "X0TTA6BL4_SHIP_PACKAGE"


class RayUnreachableError(X0tta6bl4Error, ConnectionError):
    """The GCS of a named Ray cluster does not answer."""


def _prepare_to_join(address: str) -> None:
    """Probe an explicitly named cluster and put this process in the mode it runs in."""
    candidates = ray_auth.join_candidates()
    probe = _probe(address, candidates)
    if probe.auth is ray_auth.ClusterAuth.TOKEN_ACCEPTED and probe.source is not None:
        ray_auth.use_token_auth(probe.source)
    elif probe.auth is ray_auth.ClusterAuth.OPEN:
        log.warning("the Ray cluster at %s runs without authentication; joining it as named", address)
        ray_auth.use_no_auth()
    elif probe.auth is ray_auth.ClusterAuth.TOKEN_REFUSED:
        offered = ", ".join(c.describe() for c in candidates) or "no token (none is configured)"
        raise RayAuthError(
            f"the Ray cluster at {address} requires a token and refused {offered}: point "
            "RAY_AUTH_TOKEN_PATH at that cluster's token file"
        )
    else:
        raise RayUnreachableError(f"no Ray GCS answers at {address} ({probe.detail})")


def _probe(address: str, candidates: list[ray_auth.TokenSource]) -> ray_auth.ProbeResult:
    """:func:`ray_auth.probe_cluster`, retried for a few seconds while the GCS does not answer."""
    deadline = time.monotonic() + _PROBE_PATIENCE_S
    while True:
        probe = ray_auth.probe_cluster(address, candidates)
        if probe.auth is not ray_auth.ClusterAuth.UNREACHABLE or time.monotonic() > deadline:
            return probe
        time.sleep(0.5)


def _current_cluster_file() -> str:
    """Ray's ``ray_current_cluster`` file (``$RAY_TMPDIR/ray``, else ``/tmp/ray``), as ray.init reads it."""
    try:
        from ray._common.utils import get_ray_address_file

        return str(get_ray_address_file(None))
    except ImportError:  # pragma: no cover - Ray moved it
        return "/tmp/ray/ray_current_cluster"


def _current_cluster_address() -> str | None:
    """The GCS address in the ``ray_current_cluster`` file that ``ray start`` writes, if any."""
    try:
        with open(_current_cluster_file(), encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    host, _, port = text.rpartition(":")
    return text if host and port.isdigit() else None


def _current_cluster_accepts_us(address: str) -> bool:
    """True when the file's cluster requires a token and accepts one of ours (then this process uses it).

    Anyone can write that file, so a cluster without authentication, or one that refuses our
    token, is never joined from it.
    """
    probe = ray_auth.probe_cluster(address, ray_auth.join_candidates())
    if probe.auth is ray_auth.ClusterAuth.TOKEN_ACCEPTED and probe.source is not None:
        ray_auth.use_token_auth(probe.source)
        return True
    reason = {
        ray_auth.ClusterAuth.OPEN: "it runs without authentication",
        ray_auth.ClusterAuth.TOKEN_REFUSED: "it refuses the platform's token",
        ray_auth.ClusterAuth.UNREACHABLE: "its GCS does not answer",
    }[probe.auth]
    log.warning(
        "not joining the Ray cluster at %s named by %s: %s; starting a local Ray instead "
        "(name a cluster with --ray-address or RAY_ADDRESS to join it)",
        address,
        _current_cluster_file(),
        reason,
    )
    return False


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread: Ctrl-C's path.

    A driver that ``ray.init`` started has Ray's fatal-signal handler on SIGTERM, which dumps a stack
    and aborts (exit -6), so ``ray job stop`` or a supervisor's TERM would skip the job's clean
    shutdown and its report. Off the main thread (where handlers cannot be set) it does nothing.
    After the block, the previous handler is back (the default one if it was not Python's).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def disconnect_ray(conn: RayConnection) -> None:
    """Shut down Ray if this process started it; otherwise just detach. Ray's authentication
    variables go back to what they were before :func:`connect_ray` set them."""
    # Keep Ray from rewriting accelerator variables for zero-GPU workers (and from warning about it).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    global _env_before
    if not conn.owned:
        return
    if ray.is_initialized():
        ray.shutdown()
    if _env_before is not None:  # later Ray clients of this process start as it was before
        ray_auth.restore_auth_env(_env_before)
        _env_before = None
    del conn


#: Where :func:`free_local_port` looks: above Ray's default worker ports (10002-19999), below the
#: kernel's ephemeral range (where it falls back to when that range starts lower).
_FREE_PORTS = (20_000, 32_768)
#: Ports :func:`free_local_port` has handed out in this process: none is handed out twice, so a
#: caller taking several in a row (a `ray start` names six) never gets the same one twice.
_handed_out: set[int] = set()


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for test and benchmark servers).

    Not one the kernel hands out for port 0: those come from the ephemeral range, where any outgoing
    connection of any process (Ray opens many) can take the port as its source port before the
    server binds it ("Failed to bind"). A random free port between Ray's worker ports and that
    range is far less contended. None is handed out twice in one process: a port picked a moment
    ago is free again until its caller binds it.
    """
    import random
    import socket

    low, high = _FREE_PORTS[0], min(_FREE_PORTS[1], _ephemeral_ports()[0])
    for _ in range(200 if high - low >= 1_000 else 0):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
