"""Fixes from later Ray releases that the pinned Ray (2.55.1, pinned by Flower 1.42) lacks.

scripts/setup.sh installs a ``.pth`` that calls :func:`install` in every Python process of the
virtualenv, Ray's node processes included: it costs one finder on ``sys.meta_path`` and patches a
Ray module only when that module is imported, and only for the Ray versions that need it.

The one fix today is ray-project/ray#64946 (released in Ray 2.57): a node's metrics agent could
deadlock for good when a Prometheus scrape overlapped the first export of a metric name it had not
seen. ``OpenTelemetryMetricRecorder`` created an observable instrument while holding its own lock,
and creating one takes the OpenTelemetry SDK's collection lock; a scrape holds that collection lock
while it runs the recorder's callbacks, which take the recorder's lock. The patched registration
creates the instrument under a lock of its own (never taken by a callback) and takes the recorder's
lock only to check and to store: the two locks are never held in opposite orders.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: Ray's module whose metric registration deadlocks against a scrape before Ray 2.57.
RECORDER_MODULE = "ray._private.telemetry.open_telemetry_metric_recorder"
#: The first Ray release with ray-project/ray#64946.
FIXED_IN = (2, 57)


def install() -> None:
    """Patch Ray's metric recorder when it is imported (now, if it already was). Idempotent."""
    module = sys.modules.get(RECORDER_MODULE)
    if module is not None:
        patch_recorder(module)
    if not any(isinstance(finder, _RecorderFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RecorderFinder())


def _ray_version() -> tuple[int, ...]:
    ray = sys.modules.get("ray")
    parts = []
    for part in str(getattr(ray, "__version__", "0")).split(".")[:2]:
        parts.append(int(part) if part.isdigit() else 0)
    return tuple(parts)


def patch_recorder(module: ModuleType) -> bool:
    """Make ``module.OpenTelemetryMetricRecorder`` register observable metrics without the inversion.

    Returns whether it patched: not on a Ray that has the fix, not twice, and not a class whose
    shape is not the one this patch was written for (then Ray is left as it is).
    """
    recorder = getattr(module, "OpenTelemetryMetricRecorder", None)
    if recorder is None or getattr(recorder, "_x0tta6bl4_backport", False):
        return False
    if _ray_version() >= FIXED_IN:
        return False
    metric_type = getattr(module, "MetricType", None)
    needed = ("register_gauge_metric", "register_counter_metric", "register_sum_metric",
              "_create_observable_callback")  # fmt: skip
    if metric_type is None or not all(hasattr(recorder, name) for name in needed):
        log.warning("not patching %s: not the shape ray-project/ray#64946 was fixed in", RECORDER_MODULE)
        return False
    kinds: dict[str, tuple[Any, str, str]] = {
        "register_gauge_metric": (
            metric_type.GAUGE,
            "create_observable_gauge",
            "_gauge_observations_by_name",
        ),
        "register_counter_metric": (
            metric_type.COUNTER,
            "create_observable_counter",
            "_counter_observations_by_name",
        ),
        "register_sum_metric": (
            metric_type.SUM,
            "create_observable_up_down_counter",
            "_sum_observations_by_name",
        ),
    }
    for method, (kind, create, store) in kinds.items():
        setattr(recorder, method, _registration(kind, create, store, module.NAMESPACE))
    recorder._x0tta6bl4_backport = True
    return True


#: Serialises the patched registrations (a node's agent holds one recorder). Never taken inside a
#: scrape's callbacks, so holding it while the SDK's collection lock is taken cannot invert anything.
_REGISTRATION_LOCK = threading.Lock()


def _registration(kind: Any, create: str, store: str, namespace: str) -> Callable[[Any, str, str], None]:
    def register(self: Any, name: str, description: str) -> None:
        with self._lock:
            if name in self._registered_instruments:
                return
        with _REGISTRATION_LOCK:
            with self._lock:
                if name in self._registered_instruments:
                    return
            callback = self._create_observable_callback(name, kind)
            # The SDK's collection lock is taken here, with the recorder's lock free.
            instrument = getattr(self.meter, create)(
                name=f"{namespace}_{name}", description=description, unit="1", callbacks=[callback]
            )
            with self._lock:
                self._registered_instruments[name] = instrument
                getattr(self, store).setdefault(name, {})

    register.__doc__ = f"Register an observable metric ({create}; backport of ray-project/ray#64946)."
    return register


class _PatchingLoader(importlib.abc.Loader):
    """Ray's own loader for the recorder module, followed by :func:`patch_recorder`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            patch_recorder(module)
        except Exception as exc:  # never break Ray's agent over a backport
            log.warning("not patching %s: %s: %s", RECORDER_MODULE, type(exc).__name__, exc)


class _RecorderFinder(importlib.abc.MetaPathFinder):
    """Finds Ray's recorder module as the other finders would, and loads it through the patching loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != RECORDER_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec
