"""The HTTP ingress: a FastAPI app (OpenAPI at /docs) in front of the anomaly and RAG deployments."""

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from x0tta6bl4 import __version__
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.rag.cache import CacheConfig
from x0tta6bl4.security.errors import InvalidSpiffeIdError
from x0tta6bl4.security.front_token import load_token
from x0tta6bl4.security.identity import is_operator, parse_spiffe_id
from x0tta6bl4.serve._private.batching import GreedyBatcher
from x0tta6bl4.serve._private.caller import ANONYMOUS, CallerMiddleware, caller_of
from x0tta6bl4.serve._private.edge_cache import EdgeCache
from x0tta6bl4.serve._private.limits import BodyLimitMiddleware, BodyTooLargeError, JsonErrorsMiddleware
from x0tta6bl4.serve._private.metering import MeteringMiddleware
from x0tta6bl4.serve.config import AnomalyConfig, HttpConfig, RagConfig
from x0tta6bl4.serve.errors import (
    GatewayTimeoutError,
    ModelChangedError,
    RequestError,
    ServiceUnavailableError,
    deployment_error,
)
from x0tta6bl4.serve.schemas import (
    ErrorBody,
    IngestAnswer,
    ModelInfo,
    RagAnswer,
    RagBatch,
    RagBatchAnswer,
    RagDocuments,
    RagQuery,
    ScoreRequest,
    ScoreResponse,
)
from x0tta6bl4.serve.snapshot import NPZ_MEDIA_TYPE, Limits, Snapshot, parse_body, stream_key

log = logging.getLogger(__name__)

_METRICS = domain_metrics("gateway")
_CACHE_LOOKUPS = domain_metrics("rag")["cache_lookups"]

SCORE_PATH = "/v1/anomaly/score"
#: The gateway's fixed paths: its metrics' ``route`` label takes these values (and ``other``).
ROUTES = (
    SCORE_PATH,
    "/v1/anomaly/model",
    "/v1/rag/query",
    "/v1/rag/batch",
    "/v1/rag/documents",
    "/v1/rag/stats",
    "/healthz",
    "/docs",
    "/openapi.json",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "malformed body"),
        (413, "body or snapshot too large"),
        (401, "not through the mTLS front"),
        (403, "the caller's identity may not do this"),
        (415, "unsupported media type"),
        (422, "well-formed but invalid input"),
        (503, "a backend cannot answer now (model not loaded, replica restarting or overloaded)"),
        (504, "timed out"),
    )
}

_CACHE = Query(default=True, description="false: neither read nor fill the semantic cache (fresh retrieval)")

api = FastAPI(
    title="x0tta6bl4",
    version=__version__,
    description="Anomaly scoring of mesh graph snapshots (GraphSAGE) and retrieval over runbooks.",
)
api.add_middleware(BodyLimitMiddleware, default_bytes=HttpConfig().documents_max_bytes)
api.add_middleware(CallerMiddleware)  # requests that bypassed the front stop here
api.add_middleware(JsonErrorsMiddleware)  # whatever fails, the answer is JSON
api.add_middleware(MeteringMiddleware, routes=ROUTES)  # outermost: counts every answer as sent

#: Bodies up to this size are parsed on the event loop; larger ones on a thread (bounded by _PARSERS).
_INLINE_PARSE_BYTES = 64 << 10
#: Large bodies parsed at once per gateway replica (their Python objects are many times their size).
_PARSERS = 2
#: How long /healthz waits for each backend.
_HEALTHZ_TIMEOUT_S = 5.0


def _error(
    status: int,
    kind: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": kind, "message": message, "details": details or []}
    return JSONResponse(body, status_code=status, headers=headers)


def _refusal(exc: X0tta6bl4Error) -> JSONResponse:
    """The HTTP answer to a typed error: the gateway is the one place where errors become statuses.

    The gateway's and the detector's refusals carry their status; no answer in time is a 504;
    the retriever's bad input (a ConfigError) is a 422; a replica that died, restarts or sheds
    load is a 503 with ``Retry-After``, and so is a store that cannot be read or written.
    """
    if isinstance(exc, RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, GatewayTimeoutError):
        return _error(504, "timeout", str(exc))
    if isinstance(exc, ServiceUnavailableError):
        return _error(503, "unavailable", str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, ConfigError):
        return _error(422, "invalid_request", str(exc))
    return _error(503, "store_unavailable", str(exc), headers={"Retry-After": "1"})


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _error(400, "malformed_json", "request body is not valid JSON")
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid"}
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]
    ]
    return _error(422, "invalid_request", f"{where}: {first.get('msg')}", details)


@api.exception_handler(X0tta6bl4Error)
async def _refused(request: Request, exc: X0tta6bl4Error) -> JSONResponse:
    return _refusal(exc)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) in the same JSON shape."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {}))


@api.exception_handler(BodyTooLargeError)
async def _too_large(request: Request, exc: BodyTooLargeError) -> JSONResponse:
    return _error(413, "payload_too_large", "request body is larger than this route accepts")


def _is_operator(caller: str) -> bool:
    try:
        return is_operator(parse_spiffe_id(caller))
    except InvalidSpiffeIdError:
        return False


def _score_openapi() -> dict[str, Any]:
    schema = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@serve.deployment(
    name="Gateway",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    health_check_period_s=5.0,
    health_check_timeout_s=15.0,
)
@serve.ingress(api)
class Gateway:
    """Routes HTTP requests to the anomaly and RAG deployments through their handles."""

    def __init__(
        self,
        anomaly: DeploymentHandle,
        rag: DeploymentHandle,
        http: dict[str, Any],
        rag_config: dict[str, Any] | None = None,
        anomaly_config: dict[str, Any] | None = None,
    ) -> None:
        # A server span per request, continuing the caller's `traceparent` (when OTEL_* turn tracing on).
        if tracing.setup_tracing("gateway"):
            tracing.instrument_fastapi(api)
        # Arguments and results go straight to the replicas over gRPC instead of through the
        # object store (less CPU per request; docs/performance.md).
        self.anomaly = anomaly.options(_by_reference=False)
        self.rag = rag.options(_by_reference=False)
        self.http = HttpConfig.model_validate(http)
        rag_cfg = RagConfig.model_validate(rag_config or {})
        cache = CacheConfig.model_validate(rag_cfg.retriever.get("cache", {}))
        self._edge = EdgeCache(cache) if rag_cfg.edge_cache and cache.enabled else None
        self._corpus_check_s = rag_cfg.corpus_check_s
        self._corpus_watch: asyncio.Task[None] | None = None
        # Concurrent queries reach the retriever as one call per batch, not one per query.
        self._retrieval: GreedyBatcher[tuple[str, int, bool, dict[str, str] | None], dict[str, Any]] = (
            GreedyBatcher(
                self._retrieve,
                rag_cfg.max_batch_size,
                rag_cfg.batch_wait_timeout_s,
                rag_cfg.batches_in_flight,
            )
        )
        # Concurrent stateless snapshots reach the detector as one call per batch, too.
        anomaly_cfg = AnomalyConfig.model_validate(anomaly_config or {})
        self._scoring: GreedyBatcher[tuple[Snapshot, tuple[str, ...], dict[str, str] | None], bytes] = (
            GreedyBatcher(
                self._score_batch,
                anomaly_cfg.max_batch_size,
                anomaly_cfg.batch_wait_timeout_s,
                anomaly_cfg.batches_in_flight,
            )
        )
        self._contract_cache: tuple[tuple[str, ...], Limits] | None = None
        self._parsers: asyncio.Semaphore | None = None  # created on the event loop, at first use
        # With a front token, only requests that came through the mTLS front get in (CallerMiddleware).
        api.state.front_token = load_token(self.http.front_token_file) if self.http.front_token_file else None
        api.state.body_limits_bytes = {
            SCORE_PATH: self.http.score_max_bytes,
            "/v1/rag/query": self.http.query_max_bytes,
            "/v1/rag/batch": self.http.batch_max_bytes,
            "/v1/rag/documents": self.http.documents_max_bytes,
        }
        api.state.inflight_body_bytes = self.http.inflight_body_bytes

    async def check_health(self) -> None:
        """Serve's health check of the gateway, run on the event loop that serves its requests.

        A loop stuck in a long computation never runs it, so Serve's ``health_check_timeout_s``
        marks the replica unhealthy and replaces it; a replica that cannot route (no handles)
        fails it outright. Backends are not called: their own checks cover them, and a
        dead backend must not take the gateway, and its 503s, down with it.
        """
        await asyncio.sleep(0)
        if getattr(self, "anomaly", None) is None or getattr(self, "rag", None) is None:
            raise RuntimeError("the gateway is not set up to route requests")

    async def _call(self, response: Any, timeout_s: float | None = None) -> Any:
        """A deployment's answer.

        Raises:
            GatewayTimeoutError: no answer within ``timeout_s`` (default: the request timeout).
            ServiceUnavailableError: the replica died, is restarting or sheds load.
            X0tta6bl4Error: the typed error the deployment raised, as itself.
        """
        timeout_s = self.http.request_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(response, timeout_s)
        except TimeoutError:
            response.cancel()
            raise GatewayTimeoutError(f"no answer within {timeout_s} s") from None
        except Exception as exc:  # a replica's typed error, or Ray's word that it is gone: mapped
            mapped = deployment_error(exc)
            if mapped is exc:
                raise
            raise mapped from None

    @api.post(
        SCORE_PATH,
        response_model=ScoreResponse,
        responses=_ERRORS,
        openapi_extra=_score_openapi(),
        summary="Score every node of a graph snapshot",
    )
    async def score(
        self,
        request: Request,
        stream_id: str | None = Query(
            default=None,
            pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
            description="live stream name: its baselines are kept between calls (one tick per call suffices)",
        ),
    ) -> Response:
        """Scores per node and the alarms under the current thresholds. JSON or npz (`application/x-npz`)."""
        body = await request.body()
        media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        for attempt in range(2):
            try:
                payload = await self._score(body, media_type, stream_id, caller_of(request))
                break
            except ModelChangedError:
                self._contract_cache = None  # a new model version with other features: fetch and re-check
                if attempt:
                    raise
        return Response(payload, media_type="application/json")  # already JSON, encoded by the detector

    async def _score(self, body: bytes, media_type: str, stream_id: str | None, caller: str) -> bytes:
        features, limits = await self._contract()
        # Parsed here, so the detector receives compact arrays rather than the raw body.
        snapshot = await self._parse(body, media_type, features, limits)
        if stream_id:  # a stream is the caller's own; multiplexing sends it to the replica holding it
            handle = self.anomaly.options(multiplexed_model_id=stream_key(caller, stream_id))
            trace = tracing.current_carrier()
            answer: bytes = await self._call(
                handle.score.remote(snapshot, features, stream_id, caller, trace=trace)
            )
            return answer
        return await self._scoring.submit((snapshot, features, tracing.current_carrier()))

    async def _score_batch(
        self, items: list[tuple[Snapshot, tuple[str, ...], dict[str, str] | None]]
    ) -> list[bytes | BaseException]:
        """One detector call for snapshots that arrived together: an answer or an exception each."""
        _METRICS["batch_size"].observe(len(items), tags={"backend": "anomaly"})
        answers: list[bytes | BaseException] = await self._call(self.anomaly.score_batch.remote(items))
        return answers

    async def _parse(
        self, body: bytes, media_type: str, features: tuple[str, ...], limits: Limits
    ) -> Snapshot:
        """The checked snapshot of a body: small ones here, large ones on a thread, a few at a time.

        A large body's parse would hold up every other request on this event loop, the health
        check included; on a thread the loop keeps turning. Few at once, because a body's Python
        objects take many times its size before they become arrays.
        """
        if len(body) <= _INLINE_PARSE_BYTES:
            return parse_body(body, media_type, features, limits)
        if self._parsers is None:
            self._parsers = asyncio.Semaphore(_PARSERS)
        async with self._parsers:
            return await asyncio.to_thread(parse_body, body, media_type, features, limits)

    async def _contract(self) -> tuple[tuple[str, ...], Limits]:
        if self._contract_cache is None:
            self._contract_cache = await self._call(self.anomaly.contract.remote())
        return self._contract_cache

    @api.get(
        "/v1/anomaly/model",
        response_model=ModelInfo,
        responses=_ERRORS,
        summary="Describe the served detector",
    )
    async def model(self) -> dict[str, Any]:
        info: dict[str, Any] = await self._call(self.anomaly.describe.remote())
        return info

    @api.post(
        "/v1/rag/query",
        response_model=RagAnswer,
        responses=_ERRORS,
        summary="Runbook passages for one incident",
    )
    async def rag_query(self, query: RagQuery, cache: bool = _CACHE) -> Response:
        try:
            body = await self._rag_answer(query.query, query.k, cache)
        except X0tta6bl4Error as exc:
            return _refusal(exc)
        return Response(body, media_type="application/json")

    @api.post(
        "/v1/rag/batch", response_model=RagBatchAnswer, responses=_ERRORS, summary="Answer many incidents"
    )
    async def rag_batch(self, batch: RagBatch, cache: bool = _CACHE) -> Response:
        if len(batch.queries) > self.http.max_batch_queries:
            raise RequestError(
                f"{len(batch.queries)} queries is more than one batch takes ({self.http.max_batch_queries})",
                status=413,
                kind="payload_too_large",
            )
        results = await asyncio.gather(
            *(self._rag_answer(q.query, q.k, cache) for q in batch.queries), return_exceptions=True
        )
        bodies: list[bytes] = []
        for result in results:  # the first refusal in the batch's order is the answer
            if isinstance(result, X0tta6bl4Error):
                return _refusal(result)
            if isinstance(result, BaseException):
                raise result
            bodies.append(result)
        return Response(b'{"answers":[' + b",".join(bodies) + b"]}", media_type="application/json")

    async def _rag_answer(self, text: str, k: int, use_cache: bool) -> bytes:
        """One query's JSON answer: an exact repeat from this gateway, else from the retriever.

        Raises:
            X0tta6bl4Error: the retriever's refusal, or no answer in time.
        """
        edge = self._edge if use_cache else None
        if edge is not None:
            if self._corpus_watch is None:
                self._corpus_watch = asyncio.create_task(self._watch_corpus())
            hit = edge.get(text, k)
            _CACHE_LOOKUPS.inc(tags={"tier": "edge", "result": "miss" if hit is None else "hit"})
            if hit is not None:
                return hit
        payload = await self._retrieval.submit((text, k, use_cache, tracing.current_carrier()))
        if edge is not None:
            version = int(payload["corpus_version"])
            if version != edge.version:
                await self._learn_corpus_version()
            edge.put(text, k, version, _json({**payload, "cached": True}))
        return _json(payload)

    async def _retrieve(
        self, items: list[tuple[str, int, bool, dict[str, str] | None]]
    ) -> list[dict[str, Any] | BaseException]:
        """One retriever call for queries that arrived together: an answer or an exception each."""
        _METRICS["batch_size"].observe(len(items), tags={"backend": "rag"})
        answers: list[dict[str, Any] | BaseException] = await self._call(self.rag.query_many.remote(items))
        return answers

    async def _learn_corpus_version(self) -> None:
        assert self._edge is not None
        try:
            version = await asyncio.wait_for(self.rag.corpus_version.remote(), self.http.request_timeout_s)
        except Exception as exc:  # the retriever is away: keep what we know, the next check retries
            log.warning("could not read the corpus version: %s", exc)
            return
        self._edge.observe(int(version))

    async def _watch_corpus(self) -> None:
        """Follow the corpus version, so ingests through other gateways empty the edge cache."""
        while True:
            await asyncio.sleep(self._corpus_check_s)
            await self._learn_corpus_version()

    @api.post(
        "/v1/rag/documents",
        response_model=IngestAnswer,
        responses=_ERRORS,
        status_code=201,
        summary="Add runbooks (durable before the answer)",
    )
    async def rag_documents(self, docs: RagDocuments, request: Request) -> JSONResponse:
        caller = caller_of(request)
        if caller != ANONYMOUS and not _is_operator(caller):
            # The front's policy already says so; the app checks again (runbooks drive remediation).
            return _error(403, "forbidden", f"{caller} may not add runbooks: operators only")
        try:
            payload = await self._call(self.rag.ingest.remote([d.model_dump() for d in docs.documents]))
        except X0tta6bl4Error as exc:
            return _refusal(exc)
        if self._edge is not None:
            self._edge.observe(int(payload["corpus_version"]))  # read-your-writes through this gateway
        return JSONResponse(payload, status_code=201)

    @api.get("/v1/rag/stats", responses=_ERRORS, summary="Index, corpus and cache statistics")
    async def rag_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call(self.rag.stats.remote())
        if self._edge is not None:
            stats["edge_cache"] = self._edge.stats()
        return stats

    @api.get("/healthz", responses=_ERRORS, summary="Liveness: the gateway and both backends answer")
    async def healthz(self) -> dict[str, Any]:
        """200 when both backends answer within a few seconds, else a 503 with ``Retry-After``."""
        try:
            info, stats = await asyncio.gather(
                self._call(self.anomaly.describe.remote(), _HEALTHZ_TIMEOUT_S),
                self._call(self.rag.stats.remote(), _HEALTHZ_TIMEOUT_S),
            )
        except GatewayTimeoutError as exc:
            raise ServiceUnavailableError(f"a backend did not answer: {exc}") from None
        return {"status": "ok", "model_version": info["version"], "documents": stats.get("documents")}
