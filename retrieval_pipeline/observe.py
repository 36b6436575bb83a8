"""Stage events: how long the named stages of the work take, and what they process, for metrics, traces and logs.

The library marks its stages and this module tells whoever listens; it depends on nothing (OpenTelemetry is used
only when it is installed and a tracer is configured), so the core imports it freely::

    with stage("embed", items=3):   # timed; listeners told ("stage", "embed", seconds, {"items": 3})
        ...
    count("tokens", 812, model="embedding")       # ("count", "tokens", 812, {"model": "embedding"})
    sample("batch_size", 12, model="embedding")   # a value for a distribution
    wait("embed", seconds)                        # time spent queued for a shared resource

Stage names: ``fetch`` (media URLs), ``decode`` (images), ``prepare`` (a server request's inputs checked, loaded,
tokenised), ``embed``, ``vector_search``, ``rerank``, ``generate``, ``index``, ``load_model``.

Who hears an event:

* the process's listeners (:func:`register` / :func:`unregister`), each ``listener(kind, name, value,
  attributes)`` with ``kind`` one of ``stage`` (seconds), ``wait`` (seconds; name: the queue), ``count``,
  ``sample``;
* the :class:`Scope` that is current (a contextvar: a server request enters one, see :func:`enter`): its own
  listener -- so that two apps in one process each count only their own requests -- and its :attr:`Scope.timings`,
  the ``(stage, seconds)`` of the request, for its log line;
* OpenTelemetry: each stage is a span (a child of the current span) made by the scope's tracer or, outside any
  scope, by the process's tracer provider once one is configured (``opentelemetry.trace.set_tracer_provider``).

Contextvars reach thread pools when work is submitted through ``contextvars.copy_context().run`` (the server does).
With no listener, no scope and no tracer, :func:`stage` returns a shared no-op: a contextvar read and two checks.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Scope",
    "active",
    "count",
    "current",
    "enter",
    "global_tracer",
    "leave",
    "record",
    "register",
    "sample",
    "stage",
    "unregister",
    "wait",
]

Listener = Callable[[str, str, float, Mapping[str, Any]], None]

_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()
_NO_ATTRIBUTES: Mapping[str, Any] = {}


class Scope:
    """One unit of work's observers (a server request's): ``listener`` hears its events (after the process's
    listeners), ``tracer`` (an OpenTelemetry tracer; None: no spans -- pass :func:`global_tracer` to use the
    process's) makes its stage spans, :attr:`timings` collects its ``(stage, seconds)`` in order of completion
    (``wait`` events as ``"<queue>_queue"``)."""

    __slots__ = ("listener", "tracer", "timings")

    def __init__(self, listener: Listener | None = None, tracer: Any = None) -> None:
        self.listener, self.tracer = listener, tracer
        self.timings: list[tuple[str, float]] = []


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("retrieval_pipeline.observe", default=None)


def enter(scope: Scope) -> contextvars.Token[Scope | None]:
    """Make ``scope`` current in this context (and in what is run from it); undo with :func:`leave`."""
    return _current.set(scope)


def leave(token: contextvars.Token[Scope | None]) -> None:
    _current.reset(token)


def current() -> Scope | None:
    return _current.get()


def active() -> bool:
    """Whether anyone hears events here (a scope is current or a process listener is registered): work done only
    to describe an event can be skipped otherwise."""
    return _current.get() is not None or bool(_listeners)


def register(listener: Listener) -> None:
    """Tell ``listener`` of every event of the process (from any thread; it must be quick and must not raise)."""
    global _listeners
    with _lock:
        _listeners = (*_listeners, listener)


def unregister(listener: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x is not listener)


# ---------------------------------------------------------------------------------------------------------------
# OpenTelemetry, when installed: the scope's tracer, else the global one once a real provider is set


_global: tuple[Any, Any] = (None, None)  # (provider, its tracer)
_otel: Any = None  # (opentelemetry.context, trace.set_span_in_context, Status, StatusCode), once imported


def global_tracer() -> Any:
    """A tracer of the process's tracer provider once a real one is set (``opentelemetry.trace.
    set_tracer_provider``), else None."""
    global _global
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # nobody imported OpenTelemetry: no provider can be configured
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    if _global[0] is not provider:
        _global = (provider, provider.get_tracer("retrieval_pipeline"))
    return _global[1]


def _tracer(scope: Scope | None) -> Any:
    return scope.tracer if scope is not None else global_tracer()


def _opentelemetry() -> Any:
    global _otel
    if _otel is None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        _otel = (context, trace.set_span_in_context, Status, StatusCode)
    return _otel


def _emit(kind: str, name: str, value: float, attributes: Mapping[str, Any], scope: Scope | None) -> None:
    for listener in _listeners:
        listener(kind, name, value, attributes)
    if scope is not None and scope.listener is not None:
        scope.listener(kind, name, value, attributes)


class _NoStage:
    __slots__ = ()

    def __enter__(self) -> _NoStage:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


_NOOP = _NoStage()


class _Stage:
    __slots__ = ("name", "attributes", "scope", "t0", "span", "token")

    def __init__(self, name: str, attributes: Mapping[str, Any], scope: Scope | None) -> None:
        self.name, self.attributes, self.scope = name, attributes, scope
        self.span = self.token = None

    def __enter__(self) -> _Stage:
        tracer = _tracer(self.scope)
        if tracer is not None:
            context, set_span_in_context, _, _ = _opentelemetry()
            self.span = tracer.start_span(self.name, attributes=dict(self.attributes) or None)
            self.token = context.attach(set_span_in_context(self.span))
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        seconds = time.perf_counter() - self.t0
        if self.span is not None:
            context, _, Status, StatusCode = _opentelemetry()  # noqa: N806 - the classes' names
            context.detach(self.token)
            if exc is not None:
                self.span.record_exception(exc)
                self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}"))
            self.span.end()
        if self.scope is not None:
            self.scope.timings.append((self.name, seconds))
        _emit("stage", self.name, seconds, self.attributes, self.scope)


def stage(name: str, **attributes: Any) -> Any:
    """A context manager timing the block as stage ``name`` (``attributes``: span attributes, passed to
    listeners; str, int, float or bool values). A block that raises is still timed; its span records the error."""
    scope = _current.get()
    if scope is None and not _listeners and global_tracer() is None:
        return _NOOP
    return _Stage(name, attributes or _NO_ATTRIBUTES, scope)


def _span_between(scope: Scope | None, name: str, seconds: float, end: float | None, attributes: Any) -> None:
    """A span for an interval measured elsewhere (``end``: its ``time.perf_counter()`` end, default now)."""
    tracer = _tracer(scope)
    if tracer is None:
        return
    now_ns, now = time.time_ns(), time.perf_counter()
    end_ns = now_ns - int(((now - end) if end is not None else 0.0) * 1e9)
    span = tracer.start_span(name, start_time=end_ns - int(seconds * 1e9), attributes=dict(attributes) or None)
    span.end(end_time=end_ns)


def record(name: str, seconds: float, *, end: float | None = None, **attributes: Any) -> None:
    """Stage ``name`` timed elsewhere (a batch that ran for several requests: each records it): listeners, the
    scope's timings and a span from ``end - seconds`` to ``end`` (``time.perf_counter()`` values; default now)."""
    scope = _current.get()
    if scope is None and not _listeners:
        return
    _span_between(scope, name, seconds, end, attributes)
    if scope is not None:
        scope.timings.append((name, seconds))
    _emit("stage", name, seconds, attributes or _NO_ATTRIBUTES, scope)


def wait(queue: str, seconds: float, *, end: float | None = None) -> None:
    """Time spent waiting in ``queue`` (for a model batch, for the generator): a ``wait`` event and, in the
    scope's timings and traces, the stage ``"<queue>_queue"``."""
    scope = _current.get()
    if scope is None and not _listeners:
        return
    _span_between(scope, f"{queue}_queue", seconds, end, _NO_ATTRIBUTES)
    if scope is not None:
        scope.timings.append((f"{queue}_queue", seconds))
    _emit("wait", queue, seconds, _NO_ATTRIBUTES, scope)


def count(name: str, value: float = 1, **labels: Any) -> None:
    """Add ``value`` to counter ``name`` (``tokens``, ``pixels``, ...) with ``labels``."""
    scope = _current.get()
    if scope is None and not _listeners:
        return
    _emit("count", name, value, labels or _NO_ATTRIBUTES, scope)


def sample(name: str, value: float, **labels: Any) -> None:
    """One value of a distribution ``name`` (``batch_size``, ...) with ``labels``."""
    scope = _current.get()
    if scope is None and not _listeners:
        return
    _emit("sample", name, value, labels or _NO_ATTRIBUTES, scope)
