"""Building the Serve application: ``serve run x0tta6bl4.serve.app:app``, ``serve deploy``, the CLI, the job."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

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
    anomaly = AnomalyDetector.options(
        num_replicas=a.num_replicas,
        max_ongoing_requests=a.max_ongoing_requests,
        user_config=a.user.model_dump(mode="json"),
    ).bind(a.model_dump(mode="json"))
    rag = RunbookRetriever.options(num_replicas=r.num_replicas, max_ongoing_requests=r.max_ongoing_requests).bind(
        r.model_dump(mode="json")
    )
    return Gateway.bind(anomaly, rag, config.http.model_dump(mode="json"))


#: The default application (``serve run x0tta6bl4.serve.app:app``).
app = build_app()
