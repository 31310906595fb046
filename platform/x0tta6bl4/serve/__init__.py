"""Ray Serve applications: anomaly scoring and runbook retrieval behind one FastAPI gateway.

Public surface: :func:`x0tta6bl4.serve.app.build_app` (also a Serve application builder),
:class:`x0tta6bl4.serve.config.ServeConfig` and the HTTP bodies in
:mod:`x0tta6bl4.serve.schemas`. Everything under ``_private`` may change.
"""
