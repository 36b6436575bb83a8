"""OpenTelemetry traces of the server: one app's tracer, and each request's server span.

Traces are on when ``--otlp-endpoint URL`` is given (spans exported over OTLP/HTTP in batches; needs
``pip install opentelemetry-exporter-otlp-proto-http``) or when ``create_app(tracer_provider=...)`` passes a
provider (an embedding application's own, or a test's with an in-memory exporter). The app never sets the global
tracer provider (it can be set once per process): its tracer travels with each request's
:class:`~retrieval_pipeline.observe.Scope`, so the library's stage spans (``prepare``, ``fetch``, ``decode``,
``embed``, ``vector_search``, ``rerank``, ``generate``, and the ``*_queue`` waits) become children of the request's
span ``{method} {route}``. An incoming W3C ``traceparent`` makes that span part of the caller's trace; the
response's ``traceparent`` names the request's span.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

OTLP_EXPORTER = "opentelemetry-exporter-otlp-proto-http"
SERVICE_NAME = "qwen3vl-rag"


def tracer_for(otlp_endpoint: str | None, provider: Any = None) -> tuple[Any, Any]:
    """(the app's tracer or None when tracing is off, the provider the app made and must shut down or None)."""
    if provider is not None:
        return provider.get_tracer("retrieval_pipeline.serving"), None
    if not otlp_endpoint:
        return None, None
    own = otlp_provider(otlp_endpoint)
    return own.get_tracer("retrieval_pipeline.serving"), own


def otlp_provider(endpoint: str) -> Any:
    """An SDK tracer provider exporting to ``endpoint`` (OTLP/HTTP) in batches; a usage error naming the package
    to install when the exporter (or the SDK) is missing."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise UsageError(
            f"--otlp-endpoint needs the OTLP exporter: pip install {OTLP_EXPORTER} (and qwen3-vl-rag[serve] for "
            f"opentelemetry-sdk); {exc}"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def start_server_span(tracer: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any]:
    """(the request's server span, the context token to detach): a child of the caller's span when the request
    carries a valid ``traceparent`` (and its ``tracestate``), else a new trace."""
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in (b"traceparent", b"tracestate")
    }
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    span = tracer.start_span(
        f"{method} {path}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )
    return span, context.attach(trace.set_span_in_context(span))


def traceparent(span: Any) -> str:
    """The W3C ``traceparent`` header naming ``span``."""
    span_context = span.get_span_context()
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def trace_id(span: Any) -> str:
    return f"{span.get_span_context().trace_id:032x}"


def end_server_span(span: Any, token: Any, method: str, route: str, status: int, error: BaseException | None) -> None:
    """Name the span after its route template, note the status (5xx and exceptions are errors) and end it."""
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    context.detach(token)
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.record_exception(error)
    if error is not None or status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
