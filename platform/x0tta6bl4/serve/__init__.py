"""Ray Serve applications: anomaly scoring and runbook retrieval behind one FastAPI gateway.

Public surface: :func:`x0tta6bl4.serve.app.build_app` (also a Serve application builder),
:class:`x0tta6bl4.serve.config.ServeConfig`, the HTTP bodies in :mod:`x0tta6bl4.serve.schemas`,
the snapshot wire format in :mod:`x0tta6bl4.serve.snapshot`, the typed errors the deployments
raise in :mod:`x0tta6bl4.serve.errors` (only the gateway maps them to HTTP answers) and the
fuzzer of a running gateway in :mod:`x0tta6bl4.serve.fuzz`. Everything under ``_private`` may change.
"""
