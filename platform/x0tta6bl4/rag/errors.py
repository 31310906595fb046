"""Errors of the retrieval layer, in a module that imports nothing heavy.

The RAG replica raises them across a Serve handle, so the gateway unpickles them: were they
defined beside the store, the first refused ingest would import the corpus, the mesh and
SciPy on the gateway's event loop, and hold every request (health checks included) meanwhile.
"""

from __future__ import annotations

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error


class RetrievalInputError(ConfigError):
    """A query, ``k`` or document the retriever refuses (the HTTP layer answers 4xx)."""


class RetrievalStoreError(X0tta6bl4Error):
    """The persisted store cannot be read or written."""


class IndexInputError(ConfigError):
    """Vectors, ids or parameters that the index cannot take (wrong shape, dimension, k)."""


class IndexStoreError(X0tta6bl4Error):
    """A saved index that cannot be loaded: missing, corrupt, or of another format or dimension."""
