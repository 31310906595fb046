"""The gateway's metering middleware: every answer counted by route and code, unknown paths as `other`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from x0tta6bl4.observability.metrics import REGISTRY
from x0tta6bl4.serve._private.limits import JsonErrorsMiddleware
from x0tta6bl4.serve._private.metering import MeteringMiddleware


def _count(route: str, code: str) -> float:
    labels = {"route": route, "code": code}
    return REGISTRY.get_sample_value("x0tta6bl4_gateway_requests_total", labels) or 0.0


def test_answers_are_counted_by_route_and_code_and_made_up_paths_share_one_label() -> None:
    app = FastAPI()
    app.add_middleware(JsonErrorsMiddleware)
    app.add_middleware(MeteringMiddleware, routes=("/ok", "/boom"))  # outermost, as in the gateway

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("surprise")

    before = [_count("/ok", "200"), _count("/boom", "500"), _count("other", "404")]
    timed = REGISTRY.get_sample_value("x0tta6bl4_gateway_request_seconds_count", {"route": "/ok"}) or 0.0
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/ok").status_code == 200
    assert client.get("/boom").status_code == 500  # the JSON 500 the inner middleware made, as sent
    for path in ("/admin", "/wp-login.php", "/.env"):
        assert client.get(path).status_code == 404
    assert [_count("/ok", "200"), _count("/boom", "500"), _count("other", "404")] == [
        before[0] + 1,
        before[1] + 1,
        before[2] + 3,
    ]
    assert REGISTRY.get_sample_value("x0tta6bl4_gateway_request_seconds_count", {"route": "/ok"}) == timed + 1
