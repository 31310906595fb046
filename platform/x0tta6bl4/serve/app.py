"""The Serve application, built for ``serve run x0tta6bl4.serve.app:app``, ``serve deploy`` and the CLI."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ray.serve import Application

from x0tta6bl4 import __version__
from x0tta6bl4.serve.anomaly import AnomalyDetector
from x0tta6bl4.serve.config import ServeConfig
from x0tta6bl4.serve.ingress import Gateway
from x0tta6bl4.serve.rag import RunbookRetriever


def build_app(args: dict[str, Any] | ServeConfig | None = None) -> Application:
    """The gateway bound to the anomaly and RAG deployments.

    Also a Serve application builder: a config file's ``import_path:
    x0tta6bl4.serve.app:build_app`` passes its ``args`` here (fields of :class:`ServeConfig`).
    """
    config = (args if isinstance(args, ServeConfig) else ServeConfig.model_validate(args or {})).resolved()
    a, r = config.anomaly, config.rag
    logging = {"enable_access_log": config.access_log, "log_level": config.log_level}
    anomaly_args = a.model_dump(mode="json", exclude={"user"})
    anomaly = AnomalyDetector.options(  # type: ignore[attr-defined]
        version=code_version(anomaly_args),
        num_replicas=a.num_replicas,
        max_ongoing_requests=a.max_ongoing_requests,
        user_config=a.user.model_dump(mode="json"),  # changes here reach running replicas in place
        logging_config=logging,
    ).bind(anomaly_args)
    rag_args = r.model_dump(mode="json")
    rag = RunbookRetriever.options(  # type: ignore[attr-defined]
        version=code_version(rag_args),
        num_replicas=r.num_replicas,
        max_ongoing_requests=r.max_ongoing_requests,
        logging_config=logging,
    ).bind(rag_args)
    http_args = config.http.model_dump(mode="json")
    batching = a.model_dump(
        mode="json", include={"max_batch_size", "batch_wait_timeout_s", "batches_in_flight"}
    )
    gateway = Gateway.options(  # type: ignore[attr-defined]
        version=code_version({"http": http_args, "rag": rag_args, "anomaly": batching}),
        logging_config=logging,
    )
    app: Application = gateway.bind(anomaly, rag, http_args, rag_args, batching)
    return app


def code_version(init_args: dict[str, Any]) -> str:
    """A deployment version that changes with the package and the constructor's arguments only.

    Serve restarts replicas when the version changes and otherwise updates them in place, so a
    redeploy that only changes ``user_config`` (thresholds, model version) drops nothing.
    """
    digest = hashlib.sha256(json.dumps([__version__, init_args], sort_keys=True).encode()).hexdigest()
    return f"{__version__}-{digest[:12]}"


#: The default application (``serve run x0tta6bl4.serve.app:app``).
app = build_app()
