"""One local Ray for the integration tests of a session (shared: starting Ray costs seconds)."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    from x0tta6bl4 import RAY_NAMESPACE

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, namespace=RAY_NAMESPACE, log_to_driver=False)
    yield ray
    ray.shutdown()
