"""The error family and the one table that maps it to CLI exit codes and HTTP statuses.

Every error the library raises on purpose is a :class:`RAGError`. Each kind keeps the built-in base that callers
already catch (an :class:`InputError` is a ``ValueError``, a :class:`StoreError` a ``RuntimeError``, ...).
:func:`classify` answers how a command-line run ends and what an HTTP client is told, for every kind, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


class RAGError(Exception):
    """Base of every error qwen3-vl-rag raises on purpose."""


class InputError(RAGError, ValueError):
    """A bad input: names the item (``index``), the ``field`` and the ``reason``."""

    def __init__(self, reason: str, *, index: int | str | None = None, field: str | None = None, kind: str = "input"):
        self.reason = reason
        self.index = index
        self.field = field
        self.kind = kind
        where = []
        if index is not None:
            where.append(f"{kind} {index}")
        elif kind != "input":
            where.append(kind)
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def at(self, index: int | str | None = None, field: str | None = None, kind: str | None = None) -> InputError:
        """The same error located at ``index`` / ``field`` (keeps what is already known)."""
        return InputError(
            self.reason,
            index=self.index if self.index is not None else index,
            field=self.field or field,
            kind=kind or self.kind,
        )


class LimitError(InputError):
    """An input (or request) over a resource limit: ``limit`` names the setting, ``value`` what was asked for and
    ``maximum`` the allowed amount. Servers answer 413; the message says which limit and how to change it."""

    def __init__(
        self,
        reason: str,
        *,
        limit: str,
        value: float | int | None = None,
        maximum: float | int | None = None,
        index: int | str | None = None,
        field: str | None = None,
        kind: str = "input",
    ):
        self.limit = limit
        self.value = value
        self.maximum = maximum
        super().__init__(reason, index=index, field=field, kind=kind)

    def at(self, index: int | str | None = None, field: str | None = None, kind: str | None = None) -> LimitError:
        return LimitError(
            self.reason,
            limit=self.limit,
            value=self.value,
            maximum=self.maximum,
            index=self.index if self.index is not None else index,
            field=self.field or field,
            kind=kind or self.kind,
        )


class UsageError(RAGError, ValueError):
    """A command line or call that asks for something impossible (a bad option value, a missing argument)."""


class StoreError(RAGError, RuntimeError):
    """The store cannot be reached or used (server down, folder unusable or damaged, ...)."""


class CollectionMismatchError(RAGError, ValueError):
    """The collection was built with another embedding model or dimension."""


class CollectionNotFoundError(RAGError, LookupError):
    """The collection does not exist (index something first)."""


class ModelLoadError(RAGError, RuntimeError):
    """A model could not be loaded (missing folder, unknown hub id, no network)."""


@dataclass(frozen=True)
class ErrorKind:
    """How an error ends a command-line run and what an HTTP client gets."""

    exit_code: int
    http_status: int
    type: str  # the ``error.type`` of an HTTP error body


EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_STORE, EXIT_COLLECTION = 1, 2, 3, 4, 5

# Most specific first: the first row whose class the error is an instance of applies.
ERROR_TABLE: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (LimitError, ErrorKind(EXIT_FAILED, 413, "invalid_request_error")),
    (InputError, ErrorKind(EXIT_FAILED, 400, "invalid_request_error")),
    (UsageError, ErrorKind(EXIT_USAGE, 400, "invalid_request_error")),
    (ModelLoadError, ErrorKind(EXIT_MODEL, 503, "unavailable_error")),
    (StoreError, ErrorKind(EXIT_STORE, 503, "unavailable_error")),
    (CollectionNotFoundError, ErrorKind(EXIT_COLLECTION, 404, "not_found_error")),
    (CollectionMismatchError, ErrorKind(EXIT_COLLECTION, 409, "conflict_error")),
    (ValueError, ErrorKind(EXIT_FAILED, 400, "invalid_request_error")),  # a bad argument from a caller
)


def classify(exc: BaseException) -> ErrorKind | None:
    """The row of :data:`ERROR_TABLE` for ``exc`` (None: not an error the table knows, e.g. a bug)."""
    for cls, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return kind
    return None
