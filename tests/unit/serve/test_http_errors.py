"""Every failure is a JSON answer: replica deaths are 503s with Retry-After, surprises a logged JSON 500,
and request bodies in flight are bounded all routes together."""

from __future__ import annotations

import asyncio
import json
import pickle

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from ray import exceptions as rex
from ray.serve import exceptions as sex

from x0tta6bl4.serve._private.limits import BodyLimitMiddleware, JsonErrorsMiddleware
from x0tta6bl4.serve.errors import ServiceUnavailableError, deployment_error
from x0tta6bl4.serve.ingress import _refusal


@pytest.mark.parametrize(
    "exc",
    [
        rex.ActorDiedError(),
        rex.ActorUnavailableError("the replica is restarting", None),
        rex.WorkerCrashedError(),
        sex.BackPressureError(num_queued_requests=10, max_queued_requests=5),
        sex.DeploymentUnavailableError(rex.ActorDiedError()),  # type: ignore[arg-type]
        rex.RayTaskError("score", "Traceback ...", rex.ActorDiedError()),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_dead_or_overloaded_replica_is_a_503_with_retry_after(exc: BaseException) -> None:
    mapped = deployment_error(exc)
    assert isinstance(mapped, ServiceUnavailableError)
    response = _refusal(mapped)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    body = json.loads(bytes(response.body))
    cause = exc.cause if isinstance(exc, rex.RayTaskError) else exc
    assert body["error"] == "unavailable" and type(cause).__name__ in body["message"]
    back = pickle.loads(pickle.dumps(mapped))
    assert str(back) == str(mapped) and back.retry_after_s == 1


def test_a_replica_bug_is_not_mistaken_for_unavailability() -> None:
    untyped = rex.RayTaskError("score", "Traceback ...", ValueError("bug")).as_instanceof_cause()
    assert deployment_error(untyped) is untyped  # the catch-all answers it: a logged JSON 500


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, default_bytes=1000, inflight_bytes=1500)
    app.add_middleware(JsonErrorsMiddleware)
    app.state.gate = asyncio.Event()

    @app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("surprise")

    @app.post("/slow")
    async def slow(request: Request) -> dict[str, int]:
        body = await request.body()
        await asyncio.wait_for(app.state.gate.wait(), 5)
        return {"bytes": len(body)}

    @app.post("/fast")
    async def fast(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return app


def test_an_unexpected_exception_is_a_logged_json_500(caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(_app(), raise_server_exceptions=True)  # would raise if anything got past
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "message": "the service failed to answer this request (logged)",
        "details": [],
    }
    assert "ZeroDivisionError" in caplog.text


def test_bodies_in_flight_are_bounded_across_requests() -> None:
    import httpx

    app = _app()

    async def scenario() -> tuple[int, int, str | None, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/slow", content=b"x" * 1000))
            await asyncio.sleep(0.05)  # the first body (1000 of 1500 bytes) is now held
            refused = await client.post("/fast", content=b"y" * 600)
            fits = await client.post("/fast", content=b"z" * 400)
            app.state.gate.set()
            done = await first
            return refused.status_code, fits.status_code, refused.headers.get("retry-after"), done.status_code

    refused, fits, retry_after, done = asyncio.run(scenario())
    assert (refused, retry_after, fits, done) == (503, "1", 200, 200)
    client = TestClient(app)
    assert client.post("/fast", content=b"y" * 600).status_code == 200  # released after the answer


def test_the_gateway_answers_unknown_routes_in_its_json_shape() -> None:
    from x0tta6bl4.serve.ingress import api

    client = TestClient(api)
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found", "details": []}


def test_the_gateway_health_check_fails_when_it_cannot_route() -> None:
    from types import SimpleNamespace

    from x0tta6bl4.serve.ingress import Gateway

    check = Gateway.func_or_class.check_health  # type: ignore[attr-defined]
    asyncio.run(check(SimpleNamespace(anomaly=object(), rag=object())))  # a loop that turns: healthy
    with pytest.raises(RuntimeError, match="not set up"):
        asyncio.run(check(SimpleNamespace(anomaly=None, rag=object())))
