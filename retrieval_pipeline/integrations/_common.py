"""What the LlamaIndex and LangChain adapters share, so that it is written once:

* the default model ids (the core's, from :mod:`retrieval_pipeline.pipeline`) and their environment variables;
* loading a core model from keyword arguments or taking an injected one, with the one "not both" check;
* the adapters' vocabulary: canonical parameter names and their deprecated aliases;
* turning framework objects (image references, videos) into the core's inputs;
* running blocking model calls off the event loop;
* opening the embedded store the command line indexes into (``from_path``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import os
import pickle
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from typing_extensions import Self  # typing.Self is 3.11+; the package supports 3.10

from retrieval_pipeline.models.runtime import UnknownArgumentError
from retrieval_pipeline.settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL, DEFAULT_RERANKER_MODEL, ENV

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A string this long that is valid base64 and not a file is taken as an encoded image, not a path.
BASE64_MIN_CHARS = 64

# The default checkpoint of each role, and the environment variable (the command line's) that overrides it.
DEFAULT_MODELS = {
    "embedding": DEFAULT_EMBEDDING_MODEL,
    "reranker": DEFAULT_RERANKER_MODEL,
    "generator": DEFAULT_GENERATOR_MODEL,
}
MODEL_ENV = {role: f"{ENV}{role.upper()}_MODEL" for role in DEFAULT_MODELS}
ROLE_ARGS = {"embedding": "embedder", "reranker": "reranker", "generator": "generator"}  # the injection argument

# Metadata keys under which a document / node names its image and its video (both frameworks).
IMAGE_KEY = "image"
VIDEO_KEY = "video"
LEGACY_VIDEO_KEY = "video_path"  # the LlamaIndex adapters' earlier key: still read, and still written on hits

# The adapters' vocabulary: deprecated name -> canonical name. Old names keep working with a DeprecationWarning.
DEPRECATED_NAMES = {
    "core_kwargs": "model_kwargs",
    "text_instruction": "document_instruction",
    "video_metadata_key": "video_key",
    "top_k": "k",  # LangChain retrievers only (LlamaIndex's Qwen3VLRetriever keeps top_k)
}


def default_model(role: str) -> str:
    """The checkpoint for ``role`` (embedding / reranker / generator): ``$QWEN3VL_RAG_<ROLE>_MODEL`` or the
    core's default."""
    return os.environ.get(MODEL_ENV[role], DEFAULT_MODELS[role])


def load_core_model(
    core_class: Callable[..., T],
    injected: T | None,
    name: str,
    model_kwargs: Mapping[str, Any],
    arg: str,
    owner: type | None = None,
    **fixed: Any,
) -> T:
    """The core model an adapter wraps: ``injected`` (passed as ``arg=``) as is, else ``core_class(name, ...)``.
    Model keyword arguments only make sense when the adapter loads the model, so both together are an error.
    ``base_url=`` (and ``api_key=``) among them: the model of a running ``qwen3vl-rag serve`` instead
    (:mod:`retrieval_pipeline.client`), the same numbers without loading a model in this process."""
    if injected is None and model_kwargs.get("base_url"):
        return remote_model(core_class, model_kwargs)  # type: ignore[return-value]
    if injected is None:
        try:
            return core_class(name, **fixed, **model_kwargs)
        except UnknownArgumentError as exc:  # named as the adapter's, with its own options
            if owner is None:
                raise
            fields = [f for f in getattr(owner, "model_fields", {}) if f not in ("model_kwargs", "callback_manager")]
            raise exc.seen_from(owner, fields) from None
    if model_kwargs:
        raise ValueError(
            f"pass either {arg}= (an already loaded model) or model keyword arguments, not both "
            f"(got {sorted(model_kwargs)}): set those options when loading the {arg}"
        )
    return injected


def remote_model(core_class: Any, model_kwargs: Mapping[str, Any]) -> Any:
    from retrieval_pipeline.client import RemoteEmbedder, RemoteReranker

    remote = {"Qwen3VLEmbedder": RemoteEmbedder, "Qwen3VLReranker": RemoteReranker}.get(core_class.__name__)
    if remote is None:
        raise ValueError(
            f"base_url= is for the embedding and rerank models; for answers, point an OpenAI-compatible LLM at the "
            f"server's /v1/chat/completions (got {core_class.__name__})"
        )
    other = sorted(set(model_kwargs) - {"base_url", "api_key", "timeout"})
    if other:
        raise ValueError(f"base_url= uses the server's model: its options are the server's, not {other}")
    return remote(
        model_kwargs["base_url"], api_key=model_kwargs.get("api_key"), timeout=model_kwargs.get("timeout", 300)
    )


def init_core_model(
    role: str,
    core_class: Callable[..., T],
    injected: T | None,
    name: str | None,
    kwargs: dict[str, Any],
    owner: type,
    fixed: Mapping[str, Any] | None = None,
    **current: Any,
) -> tuple[T, str, dict[str, Any]]:
    """The model half of an ``__init__(name, *, <injected>=None, ..., **kwargs)`` adapter (LlamaIndex's style):
    deprecated names in ``kwargs`` renamed into ``current`` (the canonical parameters' values), the framework's own
    fields of ``owner`` (``num_workers``, ``embeddings_cache``, ...) kept for it, the rest of ``kwargs`` merged into
    ``model_kwargs`` (the core model checks them before it loads), the name defaulted to the injected model's (else
    the role's default), then the model loaded or taken as injected. Returns (model, name, the values for the
    adapter's fields: ``current`` updated, ``model_kwargs`` with an injected model's settings, the framework's
    fields)."""
    current.setdefault("model_kwargs", None)
    settings = take_deprecated(kwargs, owner.__name__, **current)
    fields = getattr(owner, "model_fields", {})
    settings.update({k: kwargs.pop(k) for k in list(kwargs) if k in fields and k not in settings})
    settings["model_kwargs"] = {**(settings["model_kwargs"] or {}), **kwargs}
    name = name or (injected.model_name_or_path if injected is not None else default_model(role))  # type: ignore[attr-defined]
    model_kwargs = settings["model_kwargs"]
    model = load_core_model(core_class, injected, name, model_kwargs, ROLE_ARGS[role], owner, **(fixed or {}))
    if injected is not None:  # serialised and unpickled adapters build the same model again from these
        settings["model_kwargs"] = injected_settings(model, fixed)
    return model, name, settings


def load_into(adapter: Any, core_class: Callable[..., Any], field: str, name_field: str, **fixed: Any) -> None:
    """LangChain's style (pydantic fields): the core model of ``adapter.<field>`` loaded, or taken as injected (its
    checkpoint then names ``adapter.<name_field>`` unless one was given, and its settings fill ``model_kwargs``)."""
    injected = getattr(adapter, field)
    if injected is not None and name_field not in adapter.model_fields_set:
        setattr(adapter, name_field, injected.model_name_or_path)
    name = getattr(adapter, name_field)
    model = load_core_model(core_class, injected, name, adapter.model_kwargs, field, type(adapter), **fixed)
    if injected is not None:
        adapter.model_kwargs = injected_settings(model, fixed)
    setattr(adapter, field, model)


def injected_settings(model: Any, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The constructor settings of an already loaded core model (what ``model_kwargs`` would have been), less the
    ones the adapter passes itself (``fixed``)."""
    return {k: v for k, v in getattr(model, "init_kwargs", {}).items() if k not in (fixed or {})}


class RebuiltWhenUnpickled:
    """Pickling keeps an adapter's settings, not its loaded model (gigabytes, and a lock): unpickling builds the
    model again from the checkpoint name and ``model_kwargs``, which hold the core model's settings also when it
    was injected. That is what LlamaIndex's worker processes (``IngestionPipeline.run(num_workers=N)``) and
    LangChain's serialisers expect. A failure to build it is raised, not turned into an adapter without a model."""

    _core_field: str = ""  # a framework field holding the core model (LangChain's adapters), left out

    def __getstate__(self) -> dict[str, Any]:
        values = {}
        for key, value in self.__dict__.items():
            if key == self._core_field:
                continue
            try:
                pickle.dumps(value)
            except Exception as exc:  # noqa: BLE001 - e.g. a callback handler holding a socket
                logger.warning("%s: %s is not pickled (%s)", type(self).__name__, key, exc)
                continue
            values[key] = value
        return {"init": values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["init"])  # type: ignore[misc]


def warn_renamed(old: str, new: str, owner: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{owner}: '{old}' is deprecated, use '{new}' (same meaning)", DeprecationWarning, stacklevel=stacklevel
    )


def deprecated_alias(old: str, new: str, *, settable: bool = False) -> property:
    """A class attribute ``old`` that reads (and with ``settable``, writes) attribute ``new``, with a
    DeprecationWarning: ``core_kwargs = deprecated_alias("core_kwargs", "model_kwargs")``."""

    def get(self: Any) -> Any:
        warn_renamed(old, new, type(self).__name__)
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        warn_renamed(old, new, type(self).__name__)
        setattr(self, new, value)

    return property(get, set_ if settable else None, doc=f"Deprecated name of ``{new}``.")


def rename_deprecated(values: dict[str, Any], owner: str, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments with deprecated names (see :data:`DEPRECATED_NAMES`) renamed to the canonical ones, with a
    DeprecationWarning each. Passing both spellings of one name is an error."""
    names = DEPRECATED_NAMES if names is None else names
    out = dict(values)
    for old, new in names.items():
        if old in out:
            if new in out:
                raise ValueError(f"{owner}: pass '{new}' only ('{old}' is its deprecated name)")
            warn_renamed(old, new, owner, stacklevel=4)
            out[new] = out.pop(old)
    return out


def take_deprecated(kwargs: dict[str, Any], owner: str, **current: Any) -> dict[str, Any]:
    """For ``__init__(..., **kwargs)`` adapters: pop deprecated names out of ``kwargs`` (a DeprecationWarning each)
    into ``current`` (the canonical parameters' values, returned updated). What is left in ``kwargs`` are model
    keyword arguments."""
    for old, new in DEPRECATED_NAMES.items():
        if old in kwargs and new in current:
            warn_renamed(old, new, owner, stacklevel=5)  # the caller of the adapter's __init__
            value = kwargs.pop(old)
            current[new] = {**current[new], **value} if new == "model_kwargs" and current[new] else value
    return current


def collect_model_kwargs(fields: Any, values: Any, owner: str, target: str = "model_kwargs") -> Any:
    """Pydantic ``before`` validator body: deprecated names renamed, then keyword arguments that are not fields of
    the adapter (``max_pixels``, ``device``, ...) moved into ``values[target]``: they belong to the core model."""
    if isinstance(values, dict):
        known = {old: new for old, new in DEPRECATED_NAMES.items() if new in fields}
        values = rename_deprecated(values, owner, known)
        extra = {k: values[k] for k in list(values) if k not in fields}
        if extra:
            values = {k: v for k, v in values.items() if k not in extra}
            values[target] = {**values.get(target, {}), **extra}
    return values


# ---------------------------------------------------------------------------------------------------------------
# framework objects -> core inputs


def image_input(image: Any) -> Any:
    """A framework's image reference (path, URL, data URI, raw base64 str, BytesIO, bytes, PIL) -> core input."""
    if isinstance(image, io.IOBase) or hasattr(image, "getvalue"):
        return image.getvalue()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if (
        isinstance(image, str)
        and len(image) >= BASE64_MIN_CHARS
        and not image.startswith(("http://", "https://", "file://", "data:"))
        and not _is_file(image)
    ):
        try:  # a bare base64 payload (LlamaIndex ImageNode.image, LangChain image documents)
            return base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            pass
    return image


def video_input(video: Any, *, fps: float | None = None, max_frames: int | None = None) -> dict[str, Any]:
    """A video file / URL or a list of frames, with optional sampling settings -> core input."""
    item: dict[str, Any] = {"video": os.fspath(video) if isinstance(video, os.PathLike) else video}
    if fps is not None:
        item["fps"] = fps
    if max_frames is not None:
        item["max_frames"] = max_frames
    return item


def media_input(text: str | None, image: Any = None, video: Any = None) -> dict[str, Any]:
    """A document's text plus its image and / or video as one multimodal core input (empty when it has none)."""
    item: dict[str, Any] = {}
    if text:
        item["text"] = text
    if image is not None:
        item["image"] = image_input(image)
    if video is not None:
        item["video"] = os.fspath(video) if isinstance(video, os.PathLike) else video
    return item


def hit_metadata(hit: Any) -> dict[str, Any]:
    """A core retriever hit's stored fields as document / node metadata (its text is the content, a mixed item's
    input is not metadata), plus its first-stage score."""
    metadata = {k: v for k, v in hit.payload.items() if k not in ("text", "item")}
    metadata["vector_score"] = hit.vector_score
    return metadata


def _is_file(text: str) -> bool:
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):  # e.g. a name too long to be a path
        return False


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking model call in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """The items of a blocking iterator (a generation's text pieces), made in a worker thread and handed to the
    event loop as they come. A consumer that stops early closes the iterator in its thread (a generation then
    stops at its next token); an error in the thread is raised here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(done: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, (done, value))

    def run() -> None:
        try:
            iterator = make()
            try:
                for item in iterator:
                    put(False, item)
                    if stop.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            put(True, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(True, exc)

    worker = loop.run_in_executor(None, run)
    try:
        while True:
            done, value = await queue.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(worker)


# ---------------------------------------------------------------------------------------------------------------
# the embedded store


def open_edge_collection(
    db: str | Path, collection: str, embedding_model: str | None, reranker_model: str | None
) -> tuple[Any, Any, Any]:
    """(embedder, store, reranker or None) for an embedded Qdrant Edge collection, e.g. one built by
    ``qwen3vl-rag index``: the body of both retrievers' ``from_path``."""
    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.store import EdgeStore

    embedder = Qwen3VLEmbedder(embedding_model or default_model("embedding"))
    reranker = Qwen3VLReranker(reranker_model) if reranker_model else None
    return embedder, EdgeStore(db, collection), reranker


class FromPath:
    """``from_path`` for both frameworks' retrievers (their constructors take ``embedder``, ``store``, ``reranker``)."""

    @classmethod
    def from_path(
        cls,
        db: str | Path,
        *,
        embedding_model: str,
        reranker_model: str | None = None,
        collection: str = "default",
        **kwargs: Any,
    ) -> Self:
        """Open an embedded Qdrant Edge collection (e.g. one built by ``qwen3vl-rag index``); other keyword
        arguments go to the retriever's constructor."""
        embedder, store, reranker = open_edge_collection(db, collection, embedding_model, reranker_model)
        return cls(embedder=embedder, store=store, reranker=reranker, **kwargs)


def default_store() -> Any:
    """The collection the command line indexes into by default (``qwen3vl-rag index``)."""
    from retrieval_pipeline.store import EdgeStore, default_db

    return EdgeStore(default_db(), "default")
