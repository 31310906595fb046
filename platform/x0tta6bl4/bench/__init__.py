"""Benchmark suites (`x0tta6bl4 bench <suite> --json`): a module per suite in SUITES, and shared helpers."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from x0tta6bl4.bench._report import emit, report

SUITES = ("mesh", "ebpf", "federated", "serve", "autonomy", "security", "chaos", "observability")


def run_suite(suite: str, quick: bool = False, as_json: bool = False) -> int:
    """Run one suite and print its report; exit status 0 whenever it ran.

    Each suite module exposes ``results(quick: bool) -> list[dict]`` built with
    :func:`x0tta6bl4.bench._report.result`.
    """
    module = importlib.import_module(f"x0tta6bl4.bench.{suite}")
    with _stdout_to_stderr():  # Ray and libraries print to stdout; the report alone goes there
        doc = report(suite, module.results(quick=quick))
    emit(doc, as_json)
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
