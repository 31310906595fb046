"""The no-op Serve endpoint the serve benchmark measures against: same bodies, same parsing, no work."""

# No `from __future__ import annotations`: FastAPI must see the real annotation types.
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from x0tta6bl4.serve.errors import RequestError
from x0tta6bl4.serve.schemas import RagQuery
from x0tta6bl4.serve.snapshot import Limits, parse_body
from x0tta6bl4.telemetry.frame import FEATURES

api = FastAPI()
_LIMITS = Limits(max_nodes=100_000, max_ticks=64, max_edges=1_000_000)


@serve.deployment(
    name="Ceiling",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    logging_config={"enable_access_log": False},  # as the application is deployed by default
)
@serve.ingress(api)
class Ceiling:
    """Parses each body exactly as the real endpoint does, then answers at once."""

    @api.post("/score")
    async def score(self, request: Request) -> JSONResponse:
        body = await request.body()
        media = request.headers.get("content-type", "application/json").split(";")[0].strip()
        try:
            snapshot = parse_body(body, media, FEATURES, _LIMITS)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse({"nodes": snapshot.num_nodes})

    @api.post("/rag")
    async def rag(self, query: RagQuery) -> dict[str, Any]:
        return {"k": query.k}
