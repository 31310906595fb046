"""Per-route body limits answer 413 with a JSON error before the body reaches the app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from x0tta6bl4.serve._private.limits import BodyLimitMiddleware


def make_client() -> TestClient:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, limits_bytes={"/small": 10}, default_bytes=100)

    @app.post("/small")
    async def small(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/other")
    async def other(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return TestClient(app)


def test_bodies_within_the_limit_pass() -> None:
    client = make_client()
    assert client.post("/small", content=b"x" * 10).json() == {"bytes": 10}
    assert client.post("/other", content=b"x" * 100).json() == {"bytes": 100}


def test_a_declared_length_over_the_limit_is_a_json_413() -> None:
    client = make_client()
    resp = client.post("/small", content=b"x" * 11)
    assert resp.status_code == 413
    assert resp.json()["error"] == "payload_too_large"
    assert client.post("/other", content=b"x" * 101).status_code == 413


def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    client = make_client()

    def chunks():  # no Content-Length: chunked transfer
        for _ in range(5):
            yield b"x" * 5

    resp = client.post("/small", content=chunks())
    assert resp.status_code == 413


def test_app_state_overrides_the_limits() -> None:
    client = make_client()
    client.app.state.body_limits_bytes = {"/small": 1000}  # type: ignore[attr-defined]
    assert client.post("/small", content=b"x" * 500).status_code == 200
