"""Fixtures of the retriever tests: the embedder, loaded once, and a store built once from the packaged runbooks."""

import os

import pytest

from x0tta6bl4.models.embedder import load_embedder
from x0tta6bl4.rag.config import RetrieverConfig
from x0tta6bl4.rag.retriever import Retriever


@pytest.fixture(scope="session")
def model():
    import torch

    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)))
    return load_embedder(max_seq_length=256)


@pytest.fixture(scope="session")
def built(model, tmp_path_factory):
    """A store built once from the packaged runbooks; tests copy it instead of re-embedding."""
    root = tmp_path_factory.mktemp("template")
    Retriever.open(RetrieverConfig(data_dir=root), model=model)
    return root
