"""The Serve application deployed once for the module on the session's local Ray, with its own registry and RAG store."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Deployed:
    base: str
    registry_uri: str
    rag_dir: str
    config: object

    def redeploy(self, config: object) -> None:
        from ray import serve

        from x0tta6bl4.serve.app import build_app

        serve.run(build_app(config), name="x0tta6bl4", route_prefix="/")  # type: ignore[arg-type]
        self.config = config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def deployed(ray_local, tmp_path_factory) -> Iterator[Deployed]:
    from ray import serve

    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.serve.config import ServeConfig

    root: Path = tmp_path_factory.mktemp("serve")
    registry = ModelRegistry(root / "registry")
    bootstrap_detector(registry, BootstrapConfig(nodes=200, ticks=60, epochs=1))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig.model_validate(
        {
            "anomaly": {"registry": str(registry.uri), "bootstrap": False, "max_nodes": 5000},
            "rag": {"retriever": {"data_dir": str(root / "rag")}},
        }
    )
    app = Deployed(f"http://127.0.0.1:{port}", str(registry.uri), str(root / "rag"), config)
    app.redeploy(config)
    yield app
    serve.shutdown()
