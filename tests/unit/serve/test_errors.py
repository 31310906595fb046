"""Typed errors cross Ray intact, and the gateway answers each with the status and body it always had."""

from __future__ import annotations

import json
import pickle

import pytest
from ray.exceptions import RayTaskError

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.serve.errors import GatewayTimeoutError, ModelChangedError, RequestError, deployment_error
from x0tta6bl4.serve.ingress import _refusal


class _StoreError(X0tta6bl4Error):
    """Stands in for the retriever's store errors (any X0tta6bl4Error that is not bad input)."""


class _InputError(ConfigError):
    """Stands in for RetrievalInputError (a ConfigError)."""


def _answer(exc: X0tta6bl4Error) -> tuple[int, dict[str, object]]:
    response = _refusal(exc)
    assert response.media_type == "application/json"
    return response.status_code, json.loads(bytes(response.body))


@pytest.mark.parametrize(
    "exc",
    [
        RequestError("too big", status=413, kind="payload_too_large", details=[{"loc": ["x"]}]),
        ModelChangedError(),
    ],
)
def test_refusals_keep_status_kind_and_details_through_pickling(exc: RequestError) -> None:
    back = pickle.loads(pickle.dumps(exc))  # how Ray sends a per-item error back to the gateway
    assert type(back) is type(exc)
    assert (back.status, back.kind, back.message, back.details) == (
        exc.status,
        exc.kind,
        exc.message,
        exc.details,
    )
    assert back.body() == exc.body() and str(back) == str(exc)


def test_a_deployment_error_is_unwrapped_from_rays_wrapper_with_its_own_message() -> None:
    cause = _InputError("k must be an integer from 1 to 50, got 1000")
    wrapped = RayTaskError("query", "Traceback (most recent call last):\n ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, _InputError) and str(wrapped) != str(cause)  # Ray's text is the traceback
    assert deployment_error(wrapped) is cause
    assert deployment_error(cause) is cause
    untyped = RayTaskError("query", "Traceback ...", ValueError("bug")).as_instanceof_cause()
    assert deployment_error(untyped) is untyped  # not ours to map: stays a 500


def test_the_gateway_maps_each_error_to_its_status_and_body() -> None:
    assert _answer(RequestError("no")) == (422, {"error": "invalid_request", "message": "no", "details": []})
    assert _answer(RequestError("big", status=413, kind="payload_too_large")) == (
        413,
        {"error": "payload_too_large", "message": "big", "details": []},
    )
    assert _answer(ModelChangedError()) == (
        409,
        {
            "error": "model_changed",
            "message": "the served model's features changed; re-check the snapshot",
            "details": [],
        },
    )
    assert _answer(GatewayTimeoutError("no answer within 30.0 s")) == (
        504,
        {"error": "timeout", "message": "no answer within 30.0 s", "details": []},
    )
    assert _answer(_InputError("the query must be a non-empty text")) == (
        422,
        {"error": "invalid_request", "message": "the query must be a non-empty text", "details": []},
    )
    assert _answer(_StoreError("cannot write the store in /x: disk full")) == (
        503,
        {"error": "store_unavailable", "message": "cannot write the store in /x: disk full", "details": []},
    )


def test_the_gateway_unpickles_a_backend_error_without_importing_the_backend() -> None:
    # The gateway unpickles these on its event loop; importing the store or the model there
    # (the corpus, the mesh, SciPy, torch) held every request, /healthz too, for seconds.
    import subprocess
    import sys

    from x0tta6bl4.models.registry import CorruptVersionError
    from x0tta6bl4.rag.errors import (
        IndexInputError,
        IndexStoreError,
        RetrievalInputError,
        RetrievalStoreError,
    )
    from x0tta6bl4.security.signing import SignatureError

    errors = [
        RetrievalInputError("bad heading"),
        RetrievalStoreError("disk"),
        IndexInputError("dim"),
        IndexStoreError("gone"),
        CorruptVersionError("v3"),
        SignatureError("malformed", "runbook r1 has no signature"),
    ]
    child = (
        "import pickle, sys\n"
        "import x0tta6bl4.serve.ingress\n"
        "errors = pickle.loads(sys.stdin.buffer.read())\n"
        "heavy = ('scipy', 'torch', 'hnswlib', 'sentence_transformers', 'x0tta6bl4.mesh', 'x0tta6bl4.rag.store')\n"
        "print(sorted(type(e).__name__ for e in errors), [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child],
        input=pickle.dumps(errors),
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()
    assert out.strip() == f"{sorted(type(e).__name__ for e in errors)} []", out
