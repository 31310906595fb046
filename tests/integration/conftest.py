"""One local Ray for the integration tests of a session (shared: starting Ray costs seconds).

It is started through :func:`x0tta6bl4.connect.connect_ray`, as the platform starts it: in token
mode with the platform's Ray token, never joining a cluster named in ``/tmp``.
"""

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from x0tta6bl4.connect import connect_ray, disconnect_ray

    conn = connect_ray(num_cpus=2)
    yield ray
    disconnect_ray(conn)
