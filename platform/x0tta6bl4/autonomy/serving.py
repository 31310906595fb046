"""The run's Serve apps: deployed for the controller (handles inside Ray), kept up behind the mTLS front."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from x0tta6bl4.autonomy.config import RunConfig
from x0tta6bl4.errors import ConfigError

if TYPE_CHECKING:
    from x0tta6bl4.serve.config import ServeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedApps:
    """The Serve apps a run's controller calls, and who owns them.

    Attributes:
        config: the ServeConfig (JSON form) the apps run with.
        declarative: deployed by ``serve deploy`` or a RayService, not by this run: the run uses
            them as they are, never redeploys them and leaves them up when it ends.
    """

    config: dict[str, Any]
    declarative: bool


#: How long a run waits for a declaratively deployed app that is still deploying.
DECLARATIVE_READY_TIMEOUT_S = 300.0


#: How the line that ``serve_forever`` prints once its front listens begins (scripts wait for it).
SERVING_LINE = "serving through the mTLS front"


def attach_or_deploy(config: RunConfig) -> ServedApps:
    """The declaratively deployed app of the run's name when one exists, else the run's own deploy.

    An app that ``serve deploy`` or a RayService owns must not turn imperative: redeploying it
    from a job would replace the operator's config and make the next ``serve deploy`` fight the
    job. The run takes its ServeConfig from the app's own ``args`` instead.
    """
    name = serve_config_of(config).app_name
    found = declarative_app_config(name)
    if found is not None:
        log.warning("using the declaratively deployed Serve app %r as it is (not redeploying it)", name)
        return ServedApps(found.model_dump(mode="json"), declarative=True)
    return ServedApps(deploy_serve(config), declarative=False)


def declarative_app_config(
    app_name: str, timeout_s: float = DECLARATIVE_READY_TIMEOUT_S
) -> ServeConfig | None:
    """The ServeConfig of a running app ``app_name`` that ``serve deploy`` or a RayService owns, else None.

    Waits up to ``timeout_s`` for such an app that is still deploying.

    Raises:
        ConfigError: the app's ``args`` are not a ServeConfig, or it failed to deploy.
    """
    from pydantic import ValidationError
    from ray.serve.context import _get_global_client
    from ray.serve.schema import APIType, ApplicationStatus, ServeInstanceDetails

    from x0tta6bl4.serve.config import ServeConfig

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:  # Serve is not running on this cluster
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        details = ServeInstanceDetails(**client.get_serve_details())
        app = details.applications.get(app_name)
        if app is None or app.source != APIType.DECLARATIVE:
            return None
        if app.status == ApplicationStatus.RUNNING:
            break
        what = f"the declaratively deployed Serve app {app_name!r} is"
        if app.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            raise ConfigError(f"{what} {app.status.value}: {app.message}")
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} still {app.status.value} after {timeout_s:.0f} s")
        time.sleep(1.0)
    args = app.deployed_app_config.args if app.deployed_app_config is not None else {}
    try:
        return ServeConfig.model_validate({**args, "app_name": app_name}).resolved()
    except ValidationError as exc:
        raise ConfigError(f"the Serve app {app_name!r} was not built from a ServeConfig: {exc}") from exc


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
    """The ServeConfig of the run's apps: Serve on loopback at ``serve_port``, the front at ``front_port``,
    the runbook index under ``state_dir`` when one is set."""
    from x0tta6bl4.serve.config import ServeConfig

    fields: dict[str, Any] = {"http": {"port": config.serve_port}, "front": {"port": config.front_port}}
    if config.state_dir is not None:  # the runbook index where every node's replica finds it
        fields["rag"] = {"retriever": {"data_dir": str(config.state_dir / "rag")}}
    return ServeConfig.model_validate(fields).resolved()


def serve_forever(config: RunConfig, declarative: bool = False) -> None:
    """Keep Serve (behind its mTLS front), the controller and the dashboard up until Ctrl-C or SIGTERM.

    ``declarative``: the apps belong to ``serve deploy`` or a RayService; Serve stays up at the end.
    """
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
    print(f"{SERVING_LINE}: {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
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
    if not declarative:
        with contextlib.suppress(Exception):
            serve.shutdown()
    ray.shutdown()
