"""What the server tells its operators: ``GET /metrics`` (Prometheus text format), a span per request (see
:mod:`.tracing`) and, with ``--log-format json``, one structured log line per request.

Metrics (prefix ``qwen3vl_rag_``; each app has a registry of its own):

* ``requests_total{route,method,status}`` -- every request, refusals (401, 403, 413, 429) included: the
  middleware is the outermost one. ``route`` is the matched route's template (``/v1/items/{point_id}``), the
  route a refused request was meant for, or ``unmatched`` (a 404 for an unknown path): the label set stays bounded.
* ``key_requests_total{key}`` -- requests per API key *name* (``anonymous`` without one); never the key.
* ``request_seconds{route}`` -- latency histogram; ``/metrics`` itself is counted in ``requests_total`` only.
* ``stage_seconds{stage}`` -- ``prepare``, ``fetch``, ``decode``, ``embed``, ``vector_search``, ``rerank``,
  ``generate``, ``index``, ``load_model`` (:mod:`retrieval_pipeline.observe` stages of this app's requests). A
  batched model run is observed once per request it served.
* ``queue_wait_seconds{queue}`` -- time queued for a model batch (``embed``, ``rerank``) or the generator
  (``generate``); ``batch_size{model}`` -- model inputs per batch (rerank: documents).
* ``tokens_total{model}``, ``pixels_total{model}`` -- what the batched models read (``embed``, ``rerank``: from
  the prepared items) and the generator wrote (``generate``: completion tokens of chat and streamed answers).
* ``in_flight_requests``, ``queued_requests`` (the admission gate), ``generation_queue_depth`` (generations
  running or waiting), ``cache_hits_total{cache}`` / ``cache_misses_total{cache}`` / ``cache_evictions_total``
  (the result caches, when the app has them), ``jobs{state}`` (indexing jobs, when the app has them),
  ``watch_changes_total{change}`` / ``watch_pending`` / ``watch_last_sync_timestamp_seconds`` (``serve --watch``):
  read when scraped.

Events are counted by app: each request enters a :class:`~retrieval_pipeline.observe.Scope` whose listener is its
app's :class:`Metrics`, and the library's events reach the scope current where they happen (the server runs its
thread-pool work in the request's context). Nothing is registered process-wide, so apps in one process (tests)
never count each other's work and an app that is dropped leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.responses import Response
from starlette.routing import Match

from .. import observe
from . import tracing
from .config import ServerConfig

PREFIX = "qwen3vl_rag_"
METRICS_PATH = "/metrics"
ACCESS_LOGGER = "retrieval_pipeline.serving.access"
access_log = logging.getLogger(ACCESS_LOGGER)

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# methods named as they are in labels and spans; any other (a client may send any token) is "OTHER"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# an incoming x-request-id is kept when it is this sane; else one is made
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class Metrics:
    """One app's Prometheus registry, fed by its requests' observe events and read from ``app_state`` (its
    ``admission`` and ``serving``) when scraped."""

    def __init__(self, app_state: Any) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            PREFIX + "requests", "HTTP requests by route template, method and status", ["route", "method", "status"],
            registry=registry,
        )  # fmt: skip
        self.key_requests = Counter(PREFIX + "key_requests", "requests by API key name", ["key"], registry=registry)
        self.request_seconds = Histogram(
            PREFIX + "request_seconds", "HTTP request latency by route template", ["route"], registry=registry,
            buckets=REQUEST_BUCKETS,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            PREFIX + "stage_seconds", "time in each stage of the work", ["stage"], registry=registry,
            buckets=STAGE_BUCKETS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds", "time queued for a model batch or the generator", ["queue"],
            registry=registry, buckets=STAGE_BUCKETS,
        )  # fmt: skip
        self.batch_size = Histogram(
            PREFIX + "batch_size", "model inputs per batch (rerank: documents)", ["model"], registry=registry,
            buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self._lock = threading.Lock()
        self.tokens: dict[str, float] = {}
        self.pixels: dict[str, float] = {}
        self._children: dict[tuple[Any, ...], Any] = {}  # label values -> the metric child (labels() is slow)
        registry.register(_ScrapeTime(app_state, self))

    def _child(self, metric: Any, kind: str, label: str) -> Any:
        child = self._children.get((kind, label))
        if child is None:
            child = self._children[(kind, label)] = metric.labels(label)
        return child

    def on_event(self, kind: str, name: str, value: float, attributes: Mapping[str, Any]) -> None:
        """The observe listener of this app's requests."""
        if kind == "stage":
            self._child(self.stage_seconds, "stage", name).observe(value)
        elif kind == "wait":
            self._child(self.queue_wait, "wait", name).observe(value)
        elif kind == "sample" and name == "batch_size":
            self._child(self.batch_size, "batch", str(attributes.get("model", ""))).observe(value)
        elif kind == "count" and name in ("tokens", "pixels"):
            totals = self.tokens if name == "tokens" else self.pixels
            model = str(attributes.get("model", ""))
            with self._lock:
                totals[model] = totals.get(model, 0) + value

    def request(self, route: str, method: str, status: int, seconds: float, key: str) -> None:
        counted = self._children.get((route, method, status))
        if counted is None:
            counted = self._children[(route, method, status)] = self.requests.labels(route, method, str(status))
        counted.inc()
        self._child(self.key_requests, "key", key).inc()
        if route != METRICS_PATH:
            self._child(self.request_seconds, "route", route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTime:
    """The values read when ``/metrics`` is scraped: the gates' depths, the caches' and jobs' counts (whatever of
    them the app has), and the token and pixel totals."""

    def __init__(self, app_state: Any, metrics: Metrics) -> None:
        self.app_state, self.metrics = app_state, metrics

    def collect(self) -> Iterator[Metric]:
        state = getattr(self.app_state, "serving", None)
        admission = getattr(self.app_state, "admission", None)
        yield _gauge("in_flight_requests", "requests being served (holding a slot)", getattr(admission, "in_flight", 0))
        yield _gauge("queued_requests", "requests waiting for a slot", getattr(admission, "waiting", 0))
        generation = getattr(state, "generation_queue", None)
        yield _gauge("generation_queue_depth", "generations running or waiting", getattr(generation, "admitted", 0))
        with self.metrics._lock:
            tokens, pixels = dict(self.metrics.tokens), dict(self.metrics.pixels)
        if generation is not None and generation.completion_tokens:
            tokens["generate"] = tokens.get("generate", 0) + generation.completion_tokens
        yield _labelled(CounterMetricFamily, "tokens", "tokens read (embed, rerank) or generated", "model", tokens)
        yield _labelled(CounterMetricFamily, "pixels", "image and video pixels read by the models", "model", pixels)
        yield from _caches(getattr(state, "caches", None))
        jobs = getattr(state, "jobs", None) or getattr(self.app_state, "jobs", None)
        counts = _safely(lambda: dict(jobs.counts())) if jobs is not None else None
        if counts is not None:
            yield _labelled(GaugeMetricFamily, "jobs", "indexing jobs by state", "state", counts)
        watcher = getattr(state, "watcher", None)
        if watcher is not None:  # serve --watch
            totals = {k: float(v) for k, v in watcher.totals.items()}
            yield _labelled(
                CounterMetricFamily, "watch_changes", "files synced from the watched folders", "change", totals
            )
            yield _gauge("watch_pending", "changes waiting (settling or behind the sync under way)", watcher.pending)
            yield _gauge(
                "watch_last_sync_timestamp_seconds", "when the last sync ended (0: none yet)", watcher.last_sync or 0
            )


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _labelled(kind: Any, name: str, documentation: str, label: str, values: Mapping[str, float]) -> Metric:
    family = kind(PREFIX + name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def _safely(read: Any) -> Any:
    """A value read from another component at scrape time, or None when it cannot be read (never a failed
    scrape)."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - one component's trouble must not hide every metric
        logging.getLogger(__name__).debug("a metric could not be read", exc_info=True)
        return None


def _caches(caches: Any) -> Iterator[Metric]:
    if caches is None:
        return
    stats = {name: _safely(getattr(caches, name).stats) for name in ("query", "rerank") if hasattr(caches, name)}
    stats = {name: s for name, s in stats.items() if s}
    for field, documentation in (
        ("hits", "result cache hits"),
        ("misses", "result cache misses"),
        ("evictions", "result cache evictions"),
    ):
        values = {name: s.get(field, 0) for name, s in stats.items()}
        yield _labelled(CounterMetricFamily, f"cache_{field}", documentation, "cache", values)


# ---------------------------------------------------------------------------------------------------------------
# the middleware: metrics, the server span and the access log of every request


class Observer:
    """One app's metrics, tracer and access log (``app.state.observer``)."""

    def __init__(self, app: Any, config: ServerConfig, tracer_provider: Any = None) -> None:
        self.app = app
        self.metrics = Metrics(app.state)
        self.tracer, self.own_provider = tracing.tracer_for(config.otlp_endpoint, tracer_provider)
        self.json = config.log_format == "json"
        self._leaves: list[Any] | None = None  # the app's routes, included routers flattened (built when needed)

    def route_of(self, scope: dict[str, Any]) -> str:
        """The route template the request matched, or was meant for (a refusal before routing), or
        ``unmatched``."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        if self._leaves is None:
            self._leaves = list(leaf_routes(self.app.router.routes))
        probe, partial = dict(scope), None
        for route in self._leaves:
            match, _ = route.matches(probe)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path  # the path exists, not for this method (405)
        return partial or "unmatched"

    def scope(self) -> observe.Scope:
        """An observe scope for this app's work outside a request (a background indexing job): entered in the
        worker (:func:`retrieval_pipeline.observe.enter`), the work's stages count in this app's metrics."""
        return observe.Scope(self.metrics.on_event, self.tracer or observe.global_tracer())

    def close(self) -> None:
        if self.own_provider is not None:
            self.own_provider.shutdown()  # the batched spans are sent

    def log(self, fields: dict[str, Any], timings: list[tuple[str, float]]) -> None:
        if not (self.json or access_log.isEnabledFor(logging.DEBUG)):
            return
        stages: dict[str, float] = {}
        for stage, seconds in timings:
            stages[stage] = stages.get(stage, 0.0) + seconds
        fields["stages_ms"] = {stage: round(seconds * 1000, 3) for stage, seconds in stages.items()}
        if self.json:
            line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
            access_log.info(json.dumps(line, separators=(",", ":")), extra={"access": fields})
        else:
            access_log.debug(
                "%s %s %s %s %.1fms key=%s %s", fields["request_id"], fields["method"], fields["route"],
                fields["status"], fields["duration_ms"], fields["key"], fields["stages_ms"], extra={"access": fields},
            )  # fmt: skip


def leaf_routes(routes: list[Any]) -> Iterator[Any]:
    """Routes with a path template (routes, mounts), those of included routers too."""
    for route in routes:
        if hasattr(route, "path_regex"):
            yield route
        else:  # an included router (FastAPI keeps it whole)
            inner = getattr(route, "original_router", None) or route
            yield from leaf_routes(list(getattr(inner, "routes", ())))


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class ObserveMiddleware:
    """Pure ASGI (a streamed answer is measured to its last byte): the request's observe scope, its server span
    (W3C ``traceparent`` in and out), ``x-request-id`` in and out, its metrics and its access-log line."""

    def __init__(self, app: Any, observer: Observer) -> None:
        self.app, self.observer = app, observer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observer, started = self.observer, time.perf_counter()
        method, path, headers = scope["method"], scope["path"], scope.get("headers") or []
        method = method if method in METHODS else "OTHER"  # the label set stays bounded
        request_id = _request_id(headers)
        scope.setdefault("state", {})  # where the guard leaves request.state.key_name
        span = otel_token = None
        if observer.tracer is not None and path != METRICS_PATH:
            span, otel_token = tracing.start_server_span(observer.tracer, method, path, headers)
        tracer = observer.tracer if span is not None else observe.global_tracer()  # the process's, if set
        request_scope = observe.Scope(observer.metrics.on_event, tracer)
        token = observe.enter(request_scope)
        extra = [(b"x-request-id", request_id.encode("latin-1"))]
        if span is not None:
            extra.append((b"traceparent", tracing.traceparent(span).encode("latin-1")))
        status, error = 500, None  # unless a response starts: an exception becomes ServerErrorMiddleware's 500

        async def send_observed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe.leave(token)
            seconds = time.perf_counter() - started
            route = observer.route_of(scope)
            key = str(scope["state"].get("key_name") or "anonymous")
            observer.metrics.request(route, method, status, seconds, key)
            if span is not None:
                tracing.end_server_span(span, otel_token, method, route, status, error)
            fields = {
                "request_id": request_id, "key": key, "method": method, "route": route, "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }  # fmt: skip
            if span is not None:
                fields["trace_id"] = tracing.trace_id(span)
            observer.log(fields, request_scope.timings)


def install_observability(app: Any, config: ServerConfig, tracer_provider: Any = None) -> Observer:
    """Add ``GET /metrics`` and the observing middleware to ``app``. Call it after every other middleware is
    added: it must be the outermost, so that refusals are counted too."""
    observer = app.state.observer = Observer(app, config, tracer_provider)

    async def metrics() -> Response:
        return Response(observer.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(ObserveMiddleware, observer=observer)
    return observer


def configure_access_log(log_format: str) -> None:
    """For ``serve``: with ``json``, the access log's lines go to stderr as they are (one JSON object a line)."""
    if log_format != "json":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
