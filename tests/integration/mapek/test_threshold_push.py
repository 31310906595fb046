"""Threshold pushes change only the thresholds: every replica applies them, a pinned version stays pinned."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.ray


def _wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_a_push_with_a_stale_config_keeps_the_operators_pinned_version(ray_local, apps):
    from ray import serve

    from x0tta6bl4.mapek.clients import ServedScorer
    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.serve.app import build_app
    from x0tta6bl4.serve.thresholds import find_board, remove_board

    config, _ = apps
    stale = config.model_dump(mode="json")  # what the controller was started with: no pin
    handle = serve.get_deployment_handle("AnomalyDetector", app_name=config.app_name)

    def described():
        return handle.describe.remote().result(timeout_s=30)

    pinned_version = described()["version"]
    pinned = config.model_copy(deep=True)
    pinned.anomaly.user.model_version = pinned_version
    registry = ModelRegistry(config.anomaly.registry)
    try:
        serve.run(build_app(pinned), name=config.app_name, route_prefix="/")  # the operator pins it
        newer = bootstrap_detector(registry, BootstrapConfig(nodes=200, ticks=60, epochs=1, seed=9))
        assert registry.promoted(newer.model).version != pinned_version  # a newer version is promoted

        scorer = ServedScorer(stale)
        scorer.push_thresholds(0.4321, {"7": 0.9})
        # The replicas follow the board: the thresholds change, the pin holds (no redeploy undid it).
        for _ in range(8):
            now = _wait_for(lambda: (d := described())["default_threshold"] == pytest.approx(0.4321) and d)
            assert now["version"] == pinned_version
            assert now["thresholds_source"] == "controller" and now["per_node_thresholds"] == 1
    finally:
        remove_board(config.app_name)
        assert find_board(config.app_name) is None
        registry.promote(newer.model, pinned_version)
        serve.run(build_app(config), name=config.app_name, route_prefix="/")


def test_an_app_the_run_deployed_itself_is_not_taken_for_a_declarative_one(ray_local, apps):
    # `x0tta6bl4 run` adopts only apps that `serve deploy` or a RayService owns (the e2e test
    # `test_the_job_runs_through_ray_job_submit_...` deploys one); an imperative app is redeployed.
    from x0tta6bl4.autonomy.serving import declarative_app_config

    config, _root = apps
    assert declarative_app_config(config.app_name, timeout_s=5) is None
    assert declarative_app_config("no-such-app", timeout_s=5) is None
