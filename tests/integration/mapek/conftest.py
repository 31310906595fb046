"""The Serve applications deployed once for the mapek package on the session's local Ray, with their own registry and RAG store."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def apps(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """The deployed ServeConfig and the directory holding its registry and RAG store."""
    from ray import serve

    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.serve.app import build_app
    from x0tta6bl4.serve.config import ServeConfig

    root = tmp_path_factory.mktemp("mapek")
    registry = ModelRegistry(root / "registry")
    bootstrap_detector(registry, BootstrapConfig(nodes=300, ticks=80, epochs=2))
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    config = ServeConfig.model_validate(
        {
            "anomaly": {"registry": str(registry.uri), "bootstrap": False},
            "rag": {"retriever": {"data_dir": str(root / "rag")}},
        }
    ).resolved()
    serve.run(build_app(config), name=config.app_name, route_prefix="/")
    yield config, root
    serve.shutdown()  # later packages start Serve on their own port
