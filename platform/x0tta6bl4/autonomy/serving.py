"""The run's Serve apps: deployed for the controller (handles inside Ray), kept up behind the mTLS front."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from x0tta6bl4.autonomy.config import RunConfig
from x0tta6bl4.errors import ConfigError

if TYPE_CHECKING:
    from x0tta6bl4.serve.config import ServeConfig

log = logging.getLogger(__name__)


def deploy_serve(config: RunConfig) -> dict[str, Any]:
    """Deploy the anomaly and RAG apps (bootstrapping a detector if none is promoted); their config."""
    from ray import serve

    from x0tta6bl4.serve.app import build_app
    from x0tta6bl4.serve.front import require_front_token

    serve_config = serve_config_of(config)
    # The controller calls the deployments through handles, inside Ray's token boundary; over HTTP the
    # gateway believes only the mTLS front (401 to anyone else on Serve's loopback port).
    require_front_token(serve_config)
    serve.start(
        http_options={
            "host": serve_config.http.host,
            "port": serve_config.http.port,
            "request_timeout_s": serve_config.http.request_timeout_s,
        }
    )
    log.warning("deploying the Serve apps (detector and runbook index)...")
    serve.run(build_app(serve_config), name=serve_config.app_name, route_prefix=serve_config.route_prefix)
    return serve_config.model_dump(mode="json")


def serve_config_of(config: RunConfig) -> ServeConfig:
    """The ServeConfig of the run's apps: Serve on loopback at ``serve_port``, the front at ``front_port``."""
    from x0tta6bl4.serve.config import ServeConfig

    return ServeConfig.model_validate(
        {"http": {"port": config.serve_port}, "front": {"port": config.front_port}}
    ).resolved()


def serve_forever(config: RunConfig) -> None:
    """Keep Serve (behind its mTLS front), the controller and the dashboard up until Ctrl-C or SIGTERM."""
    import signal
    import threading

    import ray
    from ray import serve

    from x0tta6bl4.serve.front import build_front, curl_hint, front_url

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve_config = serve_config_of(config)
    front = build_front(serve_config)
    if front is None:  # the run's ServeConfig never turns the front off
        raise ConfigError("the run's Serve apps are reachable only through the mTLS front")
    url = front_url(serve_config, front.start())
    print(f"serving through the mTLS front: {url} (Ctrl-C to stop)", file=sys.stderr)
    print(curl_hint(url), file=sys.stderr)
    try:
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    from x0tta6bl4 import RAY_NAMESPACE
    from x0tta6bl4.mapek.controller import CONTROLLER_NAME

    front.stop()
    with contextlib.suppress(Exception):
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=RAY_NAMESPACE))
    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()
