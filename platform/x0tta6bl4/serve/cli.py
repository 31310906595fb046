"""``x0tta6bl4 serve``: deploy the anomaly and RAG applications and keep them up until interrupted.

``--front-only`` runs just the mTLS front in front of Serve apps deployed by someone else (the
KubeRay RayService's sidecar): no Ray, nothing deployed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x0tta6bl4.serve.config import ServeConfig


def add_serve_command(sub: Any) -> None:
    """Register ``serve`` on the top-level subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve anomaly scoring and runbook retrieval over HTTP (foreground until Ctrl-C)",
        description="Deploy the Serve applications on a local or existing Ray cluster; OpenAPI at /docs.",
    )
    p.add_argument("--config", type=Path, help="YAML file with ServeConfig fields (anomaly, rag, http, ...)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument(
        "--registry",
        help="model registry path or fsspec URI (default $X0TTA6BL4_REGISTRY or models/registry)",
    )
    p.add_argument("--model-version", help="detector version to serve (default: the promoted one)")
    p.add_argument(
        "--rag-dir", help="where the runbook index and ingested documents live (default .x0tta6bl4/rag)"
    )
    p.add_argument(
        "--no-bootstrap", action="store_true", help="fail instead of training a bootstrap detector"
    )
    p.add_argument(
        "--ray-address",
        help="Ray cluster to deploy on (default: RAY_ADDRESS, a local `ray start`, or a new local Ray)",
    )
    p.add_argument(
        "--seconds", type=float, default=0.0, help="stop after this many seconds (default 0 = until Ctrl-C)"
    )
    p.add_argument("--front-host", help="address the mTLS front binds (default 127.0.0.1)")
    p.add_argument("--front-port", type=int, help="HTTPS port of the mTLS front (default 8443; 0 = any free)")
    p.add_argument("--authz", help="authorisation policy of the front (default cluster/authz.yaml)")
    p.add_argument(
        "--front-dns-name",
        action="append",
        metavar="NAME",
        help="another DNS name in the front's SVID, after front.dns_names (repeatable)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="with --front-only: serve the front's Prometheus metrics on this port at /metrics (front host)",
    )
    p.add_argument("--score-max-bytes", type=int, help="largest /v1/anomaly/score body (default 64 MiB)")
    p.add_argument(
        "--front-only",
        action="store_true",
        help="run only the mTLS front, forwarding to Serve's already running --port on 127.0.0.1 "
        "(no Ray, nothing deployed; until SIGTERM or Ctrl-C)",
    )
    p.add_argument(
        "--no-front",
        action="store_true",
        help="serve plain HTTP without the mTLS front (development only: every caller is anonymous)",
    )
    p.set_defaults(handler=serve_main)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig a command line asks for (file, then flags); ConfigError when invalid."""
    from x0tta6bl4.serve.config import ServeConfig
    from x0tta6bl4.settings import load_options

    base = load_options(ServeConfig, args.config, {})
    data = base.model_dump()
    if args.host is not None:
        data["http"]["host"] = args.host
    if args.port is not None:
        data["http"]["port"] = args.port
    if args.registry is not None:
        data["anomaly"]["registry"] = args.registry
    if args.model_version is not None:
        data["anomaly"]["user"]["model_version"] = args.model_version
    if args.rag_dir is not None:
        data["rag"]["retriever"]["data_dir"] = args.rag_dir
    if args.no_bootstrap:
        data["anomaly"]["bootstrap"] = False
    if args.no_front:
        data["front"]["enabled"] = False
    if args.front_host is not None:
        data["front"]["host"] = args.front_host
    if args.front_port is not None:
        data["front"]["port"] = args.front_port
    if args.authz is not None:
        data["front"]["policy"] = args.authz
    if args.front_dns_name:
        data["front"]["dns_names"] = [*data["front"]["dns_names"], *args.front_dns_name]
    if args.score_max_bytes is not None:
        data["http"]["score_max_bytes"] = args.score_max_bytes
    if args.metrics_port is not None:
        data["front"]["metrics_port"] = args.metrics_port
    return load_options(ServeConfig, None, data).resolved()


def _say(message: str) -> None:
    sys.stderr.write(f"x0tta6bl4 serve: {message}\n")
    sys.stderr.flush()


def serve_main(args: argparse.Namespace) -> int:
    """Deploy, print where to reach it, block until Ctrl-C (or ``--seconds``), then take it down."""
    from x0tta6bl4.errors import ConfigError

    config = config_from_args(args)
    if args.seconds < 0:
        raise ConfigError("--seconds must be >= 0")
    if args.front_only:
        return front_only(config, args.seconds)

    from x0tta6bl4.models.bootstrap import ensure_promoted
    from x0tta6bl4.models.registry import ModelRegistry

    registry = ModelRegistry(config.anomaly.registry)
    if config.anomaly.user.model_version is None:
        if config.anomaly.bootstrap:
            version = ensure_promoted(registry)
        else:
            promoted = registry.promoted(registry_model_name())
            if promoted is None:
                raise ConfigError(
                    f"no promoted detector in {registry.uri}; run `x0tta6bl4 train` or drop --no-bootstrap"
                )
            version = promoted
        _say(f"detector {version}")
    else:
        registry.get(registry_model_name(), config.anomaly.user.model_version)

    from ray import serve

    from x0tta6bl4.connect import connect_ray, disconnect_ray
    from x0tta6bl4.serve.app import build_app
    from x0tta6bl4.serve.front import build_front, curl_hint, front_url

    if not config.front.enabled:
        _say("WARNING: --no-front: plain HTTP, every caller is anonymous and may add runbooks")
    front = build_front(config)  # before Ray: a bad policy or CA fails fast
    conn = connect_ray(args.ray_address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(
            http_options={
                "host": config.http.host,
                "port": config.http.port,
                "request_timeout_s": config.http.request_timeout_s,
            }
        )
        _say("deploying (loading the detector and the runbook index)...")
        serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix)
        if front is not None:
            port = front.start()
            url = front_url(config, port)
            policy = config.front.policy or "cluster/authz.yaml"
            _say(f"mTLS front: {url} (client SVID required; policy {policy})")
            _say(curl_hint(url))
        else:
            url = f"http://{config.http.host}:{config.http.port}{config.route_prefix.rstrip('/')}"
            _say(f"ready: {url}/docs (OpenAPI), {url}/v1/anomaly/score, {url}/v1/rag/query")
        if conn.dashboard_url:
            _say(f"Ray dashboard: http://{conn.dashboard_url}")
        deadline = time.monotonic() + args.seconds if args.seconds else None
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.5)
        except KeyboardInterrupt:
            pass
        _say("stopping")
        if front is not None:
            front.stop()
        serve.delete(config.app_name)
        if conn.started_here:
            serve.shutdown()
    finally:
        disconnect_ray(conn)
    return 0


def front_only(config: ServeConfig, seconds: float = 0.0) -> int:
    """Run the front of ``config`` alone until SIGTERM, SIGINT or ``seconds``; exit status 0.

    Serve must already listen on ``127.0.0.1:<http.port>`` (or come up later: the front answers 503
    meanwhile). A bad policy, CA or address is a ConfigError before anything listens.
    """
    from x0tta6bl4.errors import ConfigError
    from x0tta6bl4.serve.front import build_front, front_url

    front = build_front(config)
    if front is None:
        raise ConfigError("--front-only needs the front: drop --no-front (or front.enabled: false)")
    try:
        port = front.start()
    except OSError as exc:
        raise ConfigError(
            f"the mTLS front cannot listen on {config.front.host}:{config.front.port}: {exc.strerror or exc}"
        ) from None
    if config.front.metrics_port is not None:
        from x0tta6bl4.observability.metrics import serve_metrics

        try:
            metrics_port = serve_metrics(config.front.metrics_port, config.front.host)
        except OSError as exc:
            front.stop()
            raise ConfigError(
                f"the front's metrics cannot listen on {config.front.host}:{config.front.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
        _say(f"metrics: http://{config.front.host}:{metrics_port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    policy = config.front.policy or "cluster/authz.yaml"
    _say(
        f"mTLS front on {config.front.host}:{port} ({front_url(config, port)}) -> "
        f"http://127.0.0.1:{config.http.port} (client SVID required; policy {policy})"
    )
    deadline = time.monotonic() + seconds if seconds else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        stop.wait(0.5)
    _say("stopping")
    front.stop()
    return 0


def registry_model_name() -> str:
    """Name the detector is registered under."""
    from x0tta6bl4.models.graphsage import DetectorSpec

    return DetectorSpec.load().name
