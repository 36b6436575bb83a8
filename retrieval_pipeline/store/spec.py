"""What a collection's vectors mean (:class:`CollectionSpec`), the point and hit records, and the content-derived
point ids."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import CollectionMismatchError
from ..layout import (
    DENSE,
    LEGACY,
    VectorLayout,
)

if TYPE_CHECKING:
    from .base import VectorStore

from ..fingerprint import legacy_fingerprint, model_fingerprint

# Payload fields with a keyword index (filters on them stay fast at scale).
INDEXED_FIELDS = ("modality", "source", "sources", "content_hash")
# Namespace of the content-derived point ids.
POINT_NAMESPACE = uuid.UUID("6c1f0b8e-3a52-4d5e-9f0e-7b0f51a9c2d4")
SCROLL_PAGE = 256
# Layout of ``collection.json`` (and of the collection metadata on a server). 0: the first layout (no ``format``
# key; point ids derive from the model name as typed). 1: ``model_id`` (what the model is, see
# :func:`model_fingerprint`) keys the point ids. 2: named vectors laid out as the spec's ``layout`` records
# (:mod:`retrieval_pipeline.layout`); formats 0 and 1 have no ``layout`` and hold one unnamed vector. A later
# layout bumps this; older ones keep opening (no migration: a spec without ``layout`` is read as that).
FORMAT = 2
ID_SCHEMES = {0: "uuid5(model|dim|content_key)", 1: "uuid5(model_id|dim|content_key)"}
ID_SCHEMES[2] = ID_SCHEMES[1]
# Points sampled (payload + vector read back) by a quick :meth:`VectorStore.verify`.
VERIFY_SAMPLE = 1024


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection's vectors mean: opening it with another model or dimension is refused.

    ``model`` is the model as given when the collection was created (shown, and loaded by ``search`` when no model
    is named); ``model_id`` is what the model is (:func:`model_fingerprint`) and, from ``format`` 1 on, keys the
    point ids. The id scheme is fixed when a collection is created and never changes for it."""

    model: str
    dim: int
    instruction: str
    distance: str = "cosine"
    model_id: str | None = None
    format: int = FORMAT
    # The dtype the vectors were computed in ("float32", "bfloat16"); None for collections that predate it.
    # Recorded, not enforced: vectors of either dtype answer the same queries (see the README's fidelity table).
    dtype: str | None = None
    # How the vectors are laid out (quantization, funnel, BM25). None in a spec asked for: whatever the collection
    # has (a new one gets :meth:`VectorLayout.choose` for its dimension); a stored spec always has one.
    layout: VectorLayout | None = None

    def __post_init__(self) -> None:
        if self.format >= 1 and self.model_id is None:
            object.__setattr__(self, "model_id", model_fingerprint(self.model))
        if isinstance(self.layout, Mapping):
            object.__setattr__(self, "layout", VectorLayout.from_dict(self.layout))

    @property
    def vectors(self) -> VectorLayout:
        """The layout in force (a spec without one: the layout before layouts existed)."""
        return self.layout or LEGACY

    def resolved(self) -> CollectionSpec:
        """This spec as a new collection records it: its layout chosen when not given."""

        # (a spec of an older format, as tests of old collections write, gets the layout of that time)
        layout = self.layout or (VectorLayout.choose(self.dim) if self.format >= FORMAT else LEGACY)
        layout.check(self.dim)
        return replace(self, layout=layout, format=FORMAT if layout.named else min(self.format, 1))

    @property
    def id_key(self) -> str:
        """The model part of the point ids (format 0: the model name as it was typed)."""
        return self.model_id if self.format >= 1 and self.model_id else self.model

    @property
    def id_scheme(self) -> str:
        return ID_SCHEMES.get(self.format, f"format {self.format}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id_scheme": self.id_scheme}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the collection") -> CollectionSpec:
        """Read a stored spec; a layout without ``format`` is format 0 (ids from the model name)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object")
        fmt = data.get("format", 0)
        if not isinstance(fmt, int) or fmt < 0:
            raise ValueError(f"{where}: invalid format {fmt!r}")
        if fmt > FORMAT:
            raise CollectionMismatchError(
                f"{where} was written by a newer qwen3-vl-rag (layout format {fmt}; this version reads up to "
                f"{FORMAT}): upgrade qwen3-vl-rag"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["format"] = fmt
        values["layout"] = VectorLayout.from_dict(data["layout"]) if "layout" in data else LEGACY
        missing = {"model", "dim", "instruction"} - set(values)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return cls(**values)

    def same_model(self, stored: CollectionSpec) -> bool:
        """Whether this spec's model is the one ``stored`` was built with (compared by what it is; a collection
        created before weights were hashed is compared by the fingerprint of that time)."""
        mine = self.model_id or model_fingerprint(self.model)
        if stored.format >= 1 and stored.model_id:
            if stored.model_id == mine:
                return True
            legacy = stored.model_id.startswith("local:") and not stored.model_id.startswith("local:weights:")
            return legacy and mine.startswith("local:") and legacy_fingerprint(self.model) == stored.model_id
        return stored.model == self.model or model_fingerprint(stored.model) == mine

    def check(self, other: CollectionSpec, collection: str) -> None:
        if self.layout is not None and other.layout is not None and self.layout != other.layout:
            raise CollectionMismatchError(
                f"collection {collection!r} was created with the vector layout {other.layout.describe(other.dim)!r}; "
                f"it cannot be opened with another one ({'; '.join(self.layout.differences(other.layout))}). "
                "Leave the layout options out to use it as it is, or index into another --collection "
                "(--rebuild recreates it)"
            )
        if self.dim != other.dim or not self.same_model(other):
            raise CollectionMismatchError(
                f"collection {collection!r} holds {other.dim}-d vectors of {other.model!r} "
                f"({other.model_id or 'format 0'}); it cannot be used with {self.dim}-d vectors of {self.model!r} "
                f"({self.model_id or model_fingerprint(self.model)}). Use the same --embedding-model / dimension, "
                "or another --collection: vectors of another model (a fine-tuned checkpoint is one) are not "
                "comparable with these, so re-index into a new collection with it"
            )


@dataclass
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass
class StoredHit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreAddress:
    """How another process reaches the same collection (picklable): an embedded Edge folder (``root``), a Qdrant
    server or cluster (``url``), or qdrant-client's local mode (``path``). Distributed ingestion hands it to its
    workers; :meth:`connect` opens a store there."""

    collection: str
    root: str | None = None
    url: str | None = None
    path: str | None = None
    api_key: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def single_writer(self) -> bool:
        """Whether only one process at a time may open it (an embedded folder, qdrant-client's local mode): then
        all reads and writes go through the one process that owns it."""
        return self.url is None

    def connect(self) -> VectorStore:
        from .edge import EdgeStore  # the backends build on this module
        from .server import ServerStore

        if self.root is not None:
            return EdgeStore(self.root, self.collection, **dict(self.options))
        return ServerStore(self.url, self.collection, api_key=self.api_key, path=self.path, **dict(self.options))


def point_id(content_key: str, spec: CollectionSpec) -> str:
    """A point id derived from the content and the model + dimension: re-indexing is idempotent.

    The model part is the collection's ``id_key`` (format 1: the model fingerprint, the same on every machine and
    for every spelling of the model; format 0: the model name as typed when the collection was created)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{spec.id_key}|{spec.dim}|{content_key}"))


MAX_NAME_BYTES = 200  # a collection's name is a folder name (255 bytes on most file systems) with suffixes added


def _check_name(name: str) -> str:
    """A collection name: not empty, no path separators, control characters or leading dot, at most
    :data:`MAX_NAME_BYTES` bytes in UTF-8."""
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        shown = name[:80] if isinstance(name, str) else name
        raise ValueError(
            f"invalid collection name {shown!r}: use letters, digits, '-', '_' or '.' (not first), "
            f"at most {MAX_NAME_BYTES} bytes"
        )
    return name


def _dense(vector: Any) -> list[float]:
    """The dense vector of a stored record (named or not)."""
    if isinstance(vector, dict):
        vector = vector.get(DENSE)
    return list(vector) if isinstance(vector, (list, tuple)) else []
