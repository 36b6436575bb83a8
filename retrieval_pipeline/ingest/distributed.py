"""Distributed ingestion on Ray Data: the same units, point ids and payloads as :class:`~.ingest.Indexer`, spread
over a cluster.

The plan is Ray Data's batch-inference shape::

    files (discovered on the driver)
      -> read        CPU tasks: read, hash, decode, render PDF pages, chunk text (ingest.items_of_file)
      -> present?    CPU tasks: which point ids the collection already holds, in batches (re-runs embed only those
                     missing)
      -> prepare     CPU tasks: load media and tokenise (EmbeddingPreprocessor: the processor, no weights)
      -> embed       an actor pool, one Qwen3VLEmbedder per actor (a GPU each, or CPU actors)
      -> write       a Ray Data datasink: to a Qdrant server / cluster from the write tasks in parallel; to the
                     embedded Edge store (or qdrant-client's local mode) through the one actor that owns it

Each row carries its own outcome (present, failed with a reason, or a vector), so a bad file is reported like
the single-process path and never stops the run. The driver then settles what needs the whole picture: the
report, the ``sources`` of content that several files hold, and the points of changed files that they no longer
hold. Rows are idempotent (ids derive from content), so an actor or task that dies is retried by Ray and a
point written twice is the same point; a run that is stopped is finished by any later run, Ray or not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import RAGError
from ..layout import VectorLayout
from ..records import Record, sources_update
from ..store import SCROLL_PAGE, CollectionSpec, Point, StoreAddress, StoreError, VectorStore
from .indexer import BULK_LOAD_FILES, Indexer, dtype_name, point_payload, store_points
from .items import _where, read_file
from .ledger import Ledger, listing
from .options import IngestOptions
from .report import Failure, IndexReport, ItemFailure, _reason

logger = logging.getLogger(__name__)

# Rows per embedding call of an actor (the embedder batches them further by its token budget), and per existence
# check and tokenisation task before it: the blocks those tasks make are what the actor pool hands out, so they are
# kept about one actor call long (larger ones would leave actors idle on a small corpus).
ACTOR_BATCH = 16
# Files per read task on a large corpus.
FILES_PER_READ = 64
# Seconds the owner of an embedded store waits for a lock another process holds when the run starts.
OWNER_OPEN_WAIT = 10.0

# Row columns. Every row has every column (empty values, never None: blocks keep one schema); "status" is the
# row's outcome so far: "" (to do), "present", "failed", "written".
_COLUMNS = {
    "file": -1,  # index of the file in the run's sorted file list
    "seq": 0,  # the unit's place in its file
    "pid": "",  # point id ("" for a file that failed before its first unit)
    "where": "",  # what a failure names
    "source": "",
    "fields": "",  # JSON: the unit's per-file payload fields
    "payload": "",  # JSON: the point's payload
    "verify": b"",  # pickled check that the file did not change while it was embedded (videos)
    "input": b"",  # pickled embedder input (until prepared)
    "encoded": b"",  # pickled Encoded (until embedded)
    "status": "",
    "error": "",
}
# what the driver gets back of each row (the report and the sources it settles are made of these)
_OUTCOME = ("file", "seq", "pid", "status", "error", "where", "source", "fields")


def _rows(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: columns[k][i] for k in columns} for i in range(n)]


def _batch(rows: list[dict[str, Any]], columns: Iterable[str] = _COLUMNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in columns:
        empty = _COLUMNS[name]
        values = [row.get(name, empty) for row in rows]
        if isinstance(empty, bytes):
            out[name] = np.array(values, dtype=object)
        elif isinstance(empty, int):
            out[name] = np.array(values, dtype=np.int64)
        else:
            out[name] = np.array(values, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the embedder as the driver knows it (no weights), and as the actors load it


class EmbedderSpec:
    """The embedder the actors load, as the driver knows it: its name, dimension, default instruction, dtype and
    media settings, read from the checkpoint's config (no weights are loaded on the driver).

    ``kwargs`` are :class:`~.models.embedder.Qwen3VLEmbedder`'s (media settings, ``max_length``, batching,
    ``from_pretrained`` arguments). ``device_type`` is the actors' (``"cuda"`` for GPU actors): it decides the
    default dtype, resolved here once so that every actor computes in the same one."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device_type: str = "cpu",
        torch_dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        import torch
        from transformers import AutoConfig

        from ..models.embedder import DEFAULT_INSTRUCTION
        from ..models.encoding import MediaSettings
        from ..models.hub import prepare_hub_load
        from ..models.runtime import hub_kwargs, pop_dtype, quantization_of, resolve_dtype

        self.model_name_or_path = str(model_name_or_path)
        self.kwargs = dict(kwargs)
        self.device = torch.device(device_type)
        requested = pop_dtype(torch_dtype, self.kwargs)
        self.quantization = quantization_of(requested)  # "int8": every actor quantizes as it loads
        self.dtype = resolve_dtype(requested, self.device)
        try:
            probe = dict(self.kwargs)  # each actor decides for itself (another node has another cache)
            prepare_hub_load(self.model_name_or_path, probe)
            config = AutoConfig.from_pretrained(self.model_name_or_path, **hub_kwargs(probe))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the embedding model's config {self.model_name_or_path!r}: {exc}") from None
        text = getattr(config, "text_config", config)
        self.hidden_size = int(text.hidden_size)
        self.default_instruction = self.kwargs.get("default_instruction", DEFAULT_INSTRUCTION)
        self.revision = self.kwargs.get("revision")
        # the actors' media settings, checked here before any worker starts (the PDF render size follows max_pixels)
        fields = ("min_pixels", "max_pixels", "total_pixels", "fps", "max_frames")
        self.media = MediaSettings(**{k: self.kwargs[k] for k in fields if k in self.kwargs})

    def embedder_kwargs(self) -> dict[str, Any]:
        """What an actor passes to ``Qwen3VLEmbedder`` besides the model and the device."""
        return {**self.kwargs, "torch_dtype": self.quantization or dtype_name(self.dtype)}

    def preprocessor_kwargs(self) -> dict[str, Any]:
        """What a CPU task passes to ``EmbeddingPreprocessor`` (the embedder's settings without batching)."""
        batching = {"batch_size", "max_batch_tokens", "max_padding", "attn_implementation", "device_map"}
        return {k: v for k, v in self.kwargs.items() if k not in batching}


# The earlier name (unrelated to :class:`retrieval_pipeline.client.RemoteEmbedder`, a server's model over HTTP).
RemoteEmbedder = EmbedderSpec


_PREPROCESSORS: dict[str, Any] = {}
_STORES: dict[tuple[StoreAddress, str], VectorStore] = {}


def _preprocessor(model: str, kwargs: Mapping[str, Any]) -> Any:
    """One processor per worker process and settings (loading it takes a second; tasks reuse their worker)."""
    from ..models.embedder import EmbeddingPreprocessor

    key = json.dumps([model, kwargs], sort_keys=True, default=str)
    if key not in _PREPROCESSORS:
        _PREPROCESSORS[key] = EmbeddingPreprocessor(model, **kwargs)
    return _PREPROCESSORS[key]


class EmbedActor:
    """One embedder on its device (a GPU when the pool asks for GPUs); embeds prepared rows. A batch that fails is
    embedded row by row so that only the rows that fail on their own are reported."""

    def __init__(
        self,
        model: str,
        kwargs: Mapping[str, Any],
        dim: int,
        device: str | None = None,
        quiet: bool = True,
        *,
        access: Any,
    ) -> None:
        import torch

        from ..models.embedder import Qwen3VLEmbedder

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if quiet:  # a worker of ours: the checkpoint's load report is noise in every actor's log
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        self.embedder = Qwen3VLEmbedder(model, device=device, **kwargs)
        self.dim = dim
        self.access = access  # where the embedded rows are written, as soon as their batch is done

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        rows = _rows(batch)
        todo = [row for row in rows if not row["status"]]
        if todo:
            encoded = [pickle.loads(row["encoded"]) for row in todo]
            vectors, failures = embed_prepared_isolating(self.embedder, encoded, dim=self.dim)
            for k, row in enumerate(todo):
                row["encoded"] = b""
                reason = failures.get(k)
                if reason is None and row["verify"]:
                    try:
                        pickle.loads(row["verify"])()
                    except Exception as exc:  # noqa: BLE001 - the file changed while it was embedded
                        reason = _reason(exc)
                if reason is None:
                    row["vector"] = np.asarray(vectors[k], dtype=np.float32).tolist()
                else:
                    row["status"], row["error"] = "failed", reason
        self._write(rows)
        return _batch(rows, _OUTCOME)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Store this batch's points now (a driver killed later keeps them: a run again continues from here); the
        rows go on with their outcome only (``written`` or ``failed``)."""
        points: dict[str, Point] = {}
        files: dict[str, int] = {}
        for row in rows:
            if not row["status"] and row["pid"] not in points:
                points[row["pid"]] = Point(row["pid"], row["vector"], json.loads(row["payload"]))
                files[row["pid"]] = int(row["file"])
        failed = self.access.write(list(points.values()), files) if points else {}
        for row in rows:
            if not row["status"]:
                reason = failed.get(row["pid"])
                row["status"], row["error"] = ("written", "") if reason is None else ("failed", reason)


def embed_prepared_isolating(embedder: Any, encoded: list[Any], *, dim: int | None) -> tuple[dict[int, Any], dict]:
    """:meth:`embed_prepared` on all of ``encoded``; when that fails, one by one (index -> reason for the ones
    that fail on their own)."""
    try:
        out = embedder.embed_prepared(encoded, dim=dim)
        return dict(enumerate(out)), {}
    except Exception as exc:  # noqa: BLE001 - attributed below, input by input
        if len(encoded) == 1:
            return {}, {0: _reason(exc)}
        logger.warning("embedding a batch of %d failed (%s): embedding them one by one", len(encoded), exc)
    vectors: dict[int, Any] = {}
    failures: dict[int, str] = {}
    for i, enc in enumerate(encoded):
        try:
            vectors[i] = embedder.embed_prepared([enc], dim=dim)[0]
        except Exception as exc:  # noqa: BLE001
            failures[i] = _reason(exc)
    return vectors, failures


# ---------------------------------------------------------------------------------------------------------------
# the CPU stages


def read_items(
    row: Mapping[str, Any], *, options: IngestOptions, metadata: Mapping[str, Any], spec: CollectionSpec
) -> list[dict[str, Any]]:
    """One file -> its item rows (:func:`~.items.read_file`: a part or the file failing is a row with its reason,
    after the items read before it, as in one process)."""
    path = Path(os.fsdecode(row["path"]))
    file = int(row["file"])
    out: list[dict[str, Any]] = []
    for seq, unit, pid in read_file(path, options, metadata, spec):
        if isinstance(unit, ItemFailure):
            status = "skipped" if unit.skipped else "failed"
            out.append({"file": file, "seq": seq, "status": status, "error": unit.reason, "where": unit.where})
            continue
        fields = unit.record.file_fields()
        item = {
            "file": file,
            "seq": seq,
            "pid": pid,
            "where": _where(unit, pid),
            "source": unit.record.source,
            "fields": json.dumps(fields, ensure_ascii=False),
        }
        try:
            # the point as this item alone would list it; the driver completes its sources at the end of the run
            own = listing(None, [(unit.record.source, fields)], set(), pid)
            item["payload"] = json.dumps(point_payload([unit], own), ensure_ascii=False)
            item["input"] = pickle.dumps(unit.input, protocol=pickle.HIGHEST_PROTOCOL)
            if unit.verify is not None:
                import ray.cloudpickle

                item["verify"] = ray.cloudpickle.dumps(unit.verify)
        except Exception as exc:  # noqa: BLE001
            item.update(status="failed", error=_reason(exc), input=b"", payload="")
        out.append(item)
    return [{**_COLUMNS, **item} for item in out]


def mark_present(batch: Mapping[str, Any], *, access: Any) -> dict[str, Any]:
    """Rows whose point the collection already holds become ``present`` (and drop their input)."""
    rows = _rows(batch)
    todo = {row["pid"] for row in rows if not row["status"]}
    stored = access.existing(sorted(todo)) if todo else set()
    for row in rows:
        if not row["status"] and row["pid"] in stored:
            row["status"], row["input"] = "present", b""
    return _batch(rows)


def prepare_rows(batch: Mapping[str, Any], *, model: str, kwargs: Mapping[str, Any], instruction: str) -> dict:
    """Load and tokenise each row's input on this CPU worker (a row that fails is reported on its own)."""
    rows = _rows(batch)
    pre = None
    for row in rows:
        if row["status"]:
            continue
        try:
            pre = pre or _preprocessor(model, kwargs)
            (encoded,) = pre.prepare([pickle.loads(row["input"])], instruction=instruction)
            row["encoded"] = pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            row["status"], row["error"] = "failed", _reason(exc)
        row["input"] = b""
    return _batch(rows)


# ---------------------------------------------------------------------------------------------------------------
# the store: reached directly (a server) or through its one owner (an embedded folder)


class _ServerAccess:
    """Workers talk to the Qdrant server / cluster themselves (one client per worker process)."""

    def __init__(self, address: StoreAddress, spec: CollectionSpec) -> None:
        self.address = address
        self.spec = spec

    def _store(self) -> VectorStore:
        key = (self.address, json.dumps(self.spec.to_dict(), sort_keys=True, default=str))
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = self.address.connect()
            store.open(self.spec, create=False)
        return store

    def existing(self, ids: list[str]) -> set[str]:
        return self._store().existing(ids)

    def write(self, points: list[Point], files: Mapping[str, int]) -> dict[str, str]:
        return store_points(self._store(), points, files)


class StoreOwner:
    """The one process that holds an embedded store (or qdrant-client's local mode) open for the whole run; the
    workers and the driver read and write through it (a Ray actor, one call at a time)."""

    # the store operations the driver may run here (:class:`_OwnedStore`)
    CALLS = frozenset(
        {"open", "count", "retrieve", "existing", "set_payload", "scroll", "remove_source", "points_of_source"}
        | {"points_of_sources"}
        | {"build_index", "delete_ids", "info", "index_status"}
    )

    def __init__(self, address: StoreAddress) -> None:
        self.store = address.connect()

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name not in self.CALLS:
            raise AttributeError(f"the store's owner does not run {name!r}")
        if name == "open":
            return self._open(*args, **kwargs)
        result = getattr(self.store, name)(*args, **kwargs)
        return list(result) if name == "scroll" else result

    def _open(self, spec: CollectionSpec | None = None, **kwargs: Any) -> CollectionSpec:
        """Open (or create) it; a lock that another process holds for a moment (a search) is waited for, a
        while."""
        deadline = time.monotonic() + OWNER_OPEN_WAIT
        while True:
            try:
                return self.store.open(spec, **kwargs)
            except StoreError as exc:
                if "another process has it open" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def existing(self, ids: list[str]) -> set[str]:
        return self.store.existing(ids)

    def write(self, points: list[Point], files: Mapping[str, int]) -> dict[str, str]:
        """Store a batch and make it durable: this process dies with a driver that is killed, and what a batch
        cost to embed is worth far more than a flush."""
        failed = store_points(self.store, points, files)
        self.store.flush()
        return failed

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()


class _OwnedStore:
    """The driver's view of a store its owner actor holds: each operation runs there (what the owner returns
    comes back; its errors are raised here as they are, e.g. :class:`StoreError`)."""

    def __init__(self, owner: Any, store: VectorStore) -> None:
        self._owner = owner
        self.collection = store.collection
        self.location = store.location
        self.spec: CollectionSpec | None = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        try:
            return ray.get(self._owner.call.remote(name, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - Ray wraps the owner's error
            raise _our_error(exc) or exc from None

    def open(self, spec: CollectionSpec | None = None, *, create: bool = True) -> CollectionSpec:
        self.spec = self._call("open", spec, create=create)
        return self.spec

    def __getattr__(self, name: str) -> Any:
        if name not in StoreOwner.CALLS:
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)


def _our_error(exc: BaseException) -> BaseException | None:
    """The project's own error (a StoreError, a collection mismatch, ...) inside what Ray raised, if any: Ray wraps a
    task's or actor's exception (``cause``, ``__cause__``), and the caller's exit code and message depend on it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RAGError):
            return current
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def owner_name(address: StoreAddress) -> str:
    """The Ray actor name of the owner of an embedded store: one per store in a cluster (a second run on the same
    store fails at once instead of waiting for the lock), and a way to ask it how far a run is (``count``)."""
    return f"qwen3vl-rag-store:{address.root or address.path}:{address.collection}"


class _OwnerAccess:
    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def existing(self, ids: list[str]) -> set[str]:
        import ray

        return ray.get(self.owner.existing.remote(ids))

    def write(self, points: list[Point], files: Mapping[str, int]) -> dict[str, str]:
        import ray

        return ray.get(self.owner.write.remote(points, files))


# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """How the run is spread: ``address`` of the Ray cluster (None: the one this process joined, or a local one),
    ``actors`` (an int, or (min, max) for an autoscaling pool), ``gpus_per_actor`` (0: CPU actors),
    ``cpus_per_actor`` and rows per actor call (``batch_size``; each actor stores its batch when it is embedded, so
    that a stopped run keeps all it finished)."""

    address: str | None = None
    actors: int | tuple[int, int] = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1 with GPUs, else 0.5 (read and prepare tasks keep CPUs)
    batch_size: int = ACTOR_BATCH

    def __post_init__(self) -> None:
        sizes = self.actors if isinstance(self.actors, tuple) else (self.actors, self.actors)
        if len(sizes) != 2 or not 1 <= sizes[0] <= sizes[1]:
            raise ValueError(f"actors must be a positive int or a (min, max) range, got {self.actors!r}")
        if self.gpus_per_actor < 0 or (self.cpus_per_actor is not None and self.cpus_per_actor <= 0):
            raise ValueError("gpus_per_actor must be >= 0 and cpus_per_actor > 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def actor_cpus(self) -> float:
        """CPUs each actor reserves: 1 beside a GPU (Ray then also gives its torch one thread; the configuration
        measured on an H100), 0.5 for a CPU actor (the read and tokenise tasks keep the rest)."""
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor
        return 1.0 if self.gpus_per_actor else 0.5


def read_blocks(files: int, resources: Mapping[str, float]) -> int:
    """How many read tasks: a few per CPU of the cluster (they balance), at most :data:`FILES_PER_READ` files each
    on a large corpus, never more than one per file (a task per file costs more to schedule than to read)."""
    cpus = max(1, int(resources.get("CPU", 1)))
    return max(1, min(files, max(4 * cpus, -(-files // FILES_PER_READ))))


def parse_actors(text: str) -> int | tuple[int, int]:
    """``"4"`` -> 4; ``"2-8"`` -> (2, 8) (an autoscaling pool)."""
    low, sep, high = str(text).partition("-")
    try:
        return (int(low), int(high)) if sep else int(low)
    except ValueError:
        raise ValueError(f"--ray-actors takes N or MIN-MAX, got {text!r}") from None


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or start a local one) unless this process already has."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError("distributed indexing needs Ray Data: pip install 'qwen3-vl-rag[ray]'") from None

    if not ray.is_initialized():
        quiet = logging.getLogger("retrieval_pipeline").getEffectiveLevel() >= logging.ERROR
        level = logging.ERROR if quiet else logging.WARNING
        ray.init(address=address, include_dashboard=False, logging_level=level, log_to_driver=True)


def check_resources(options: RayOptions, resources: Mapping[str, float], *, local: bool) -> None:
    """Refuse (a local cluster) or warn about (a cluster that may grow) a pool the cluster cannot hold: Ray would
    wait for the resources forever, saying nothing."""
    low = options.actors[0] if isinstance(options.actors, tuple) else options.actors
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    problem = None
    if options.gpus_per_actor and low * options.gpus_per_actor > gpus:
        problem = f"{low} actors with {options.gpus_per_actor:g} GPU each need {low * options.gpus_per_actor:g} GPUs"
    elif low * options.actor_cpus > cpus - 1:
        kind = "GPU" if options.gpus_per_actor else "CPU"
        problem = (
            f"{low} {kind} actors with {options.actor_cpus:g} CPU each need {low * options.actor_cpus:g} CPUs "
            "and the read and tokenise tasks at least one more"
        )
    if problem is None:
        return
    where = f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    if local:
        raise ValueError(f"{problem}; {where}: ask for fewer actors (--ray-actors) or smaller ones")
    logger.warning("%s; %s: the run waits until the cluster grows", problem, where)


class RayExecutor:
    """An :class:`~.indexer.Indexer` run on Ray Data: the same items, ids, payloads and report as in one process;
    files read and tokenised by CPU tasks, embedded on an actor pool (the indexer's embedder is an
    :class:`EmbedderSpec`: what the actors load), each batch stored as soon as it is embedded.

    The store: an embedded folder (or qdrant-client's local mode) is written through one owner actor that holds it
    for the whole run; a server by the actors in parallel, in Qdrant's bulk-load mode for large runs."""

    def __init__(self, ray_options: RayOptions | None = None, *, embed_actor: type = EmbedActor) -> None:
        self.ray = ray_options or RayOptions()
        self.embed_actor = embed_actor  # a subclass may add e.g. metrics
        self._owner: Any = None
        self.address: StoreAddress | None = None

    @contextlib.contextmanager
    def session(self, ix: Indexer) -> Iterator[None]:
        """The cluster (started or joined), and an embedded store held by one owner actor from the start of the run
        to its end, the driver's own operations included (no moment in between where another process could take
        it)."""
        import ray

        self.address = ix.store.address()  # fails early for a store other processes cannot reach
        init_ray(self.ray.address)
        local = self.ray.address is None and not os.environ.get("RAY_ADDRESS")
        check_resources(self.ray, ray.cluster_resources(), local=local)
        if not self.address.single_writer:
            yield
            return
        ix.store.close()
        try:
            owner = (
                ray.remote(StoreOwner)
                .options(name=owner_name(self.address), num_cpus=0, max_restarts=0)
                .remote(self.address)
            )
        except ValueError:  # the name is taken
            raise StoreError(f"another Ray run is writing {ix.store.location} (wait for it to finish)") from None
        saved, ix.store, self._owner = ix.store, _OwnedStore(owner, ix.store), owner
        try:
            yield
        finally:
            ix.store, self._owner = saved, None
            with contextlib.suppress(Exception):
                ray.get(owner.close.remote())
            ray.kill(owner)

    def run(
        self,
        ix: Indexer,
        files: list[Path],
        options: IngestOptions,
        metadata: dict[str, Any],
        report: IndexReport,
        ledger: Ledger,
        show_progress_bar: bool,
    ) -> None:
        outcomes = self._outcomes(ix, files, options, metadata, show_progress_bar)
        outcomes.sort(key=lambda o: (o[0], o[1]))
        runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # pid -> (source, fields) of its items, in order
        written: set[str] = set()
        for file, _seq, pid, status, error, where, source, fields in outcomes:
            ledger.file(file, os.fspath(files[file]))
            if pid:
                ledger.holds(file, pid)
            if status == "skipped":  # a member of a type not indexed (the file is read in full)
                report.skipped.append(Failure(where, error))
                continue
            if status == "failed":
                report.failed.append(Failure(where, error))
                logger.warning("skipping %s: %s", where, error)
                ledger.fail(file)
                continue
            runs.setdefault(pid, []).append((source, json.loads(fields) if fields else {}))
            if status == "written":
                written.add(pid)
        # a point written twice (two actors embedded the same content at once) is one point
        report.indexed += len(written)
        report.present += sum(len(items) for items in runs.values()) - len(written)
        self._complete_sources(ix, ledger, runs, written)

    def _complete_sources(
        self,
        ix: Indexer,
        ledger: Ledger,
        runs: Mapping[str, list[tuple[str, dict[str, Any]]]],
        written: set[str],
    ) -> None:
        """Every point lists every file that holds its content, in file order, as the ledger answers (each item
        was written with its own file only)."""
        pids = list(runs)
        for start in range(0, len(pids), SCROLL_PAGE):
            chunk = pids[start : start + SCROLL_PAGE]
            stored = ix.store.retrieve(chunk)
            for pid in chunk:
                if pid not in stored:
                    continue
                held = Record.from_payload(stored[pid])
                now = (held.sources, held.files)
                # new in this run: its sources are this run's; else the stored ones, and these
                update = ledger.listing(pid, None if pid in written else now, runs[pid])
                if update is not None and update[0] and update != now:
                    ix.store.set_payload(pid, sources_update(*update))

    def _outcomes(
        self,
        ix: Indexer,
        files: list[Path],
        options: IngestOptions,
        metadata: dict[str, Any],
        show_progress_bar: bool,
    ) -> list[tuple[Any, ...]]:
        import ray

        context = ray.data.DataContext.get_current()
        bars = context.enable_progress_bars
        context.enable_progress_bars = show_progress_bar
        owner = self._owner
        bulk = contextlib.ExitStack()
        if owner is not None:
            access: Any = _OwnerAccess(owner)
        else:
            access = _ServerAccess(self.address, ix.spec)
            if len(files) >= BULK_LOAD_FILES:  # the HNSW graph is built once, after the upload
                bulk.enter_context(ix.store.bulk_load())
        outcomes: list[tuple[Any, ...]] = []
        try:
            with bulk, warnings.catch_warnings():
                # a corpus smaller than the pool leaves actors idle: true, and not worth a warning per run
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                warnings.filterwarnings("ignore", message="Specifying both num_cpus and num_gpus")
                ds = self._dataset(ix, files, options, metadata, access)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    outcomes += [tuple(row[c] for c in _OUTCOME) for row in _rows(batch)]
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Ray Data stages:\n%s", ds.stats())
        except Exception as exc:
            ours = _our_error(exc)  # a store that fails in a worker: the same StoreError (exit 4) as in one process
            if ours is None:
                raise
            raise ours from None
        finally:
            context.enable_progress_bars = bars
        return outcomes

    def _dataset(
        self, ix: Indexer, files: list[Path], options: IngestOptions, metadata: dict[str, Any], access: Any
    ) -> Any:
        import ray

        embedder = cast(EmbedderSpec, ix.embedder)
        items = [{"file": i, "path": os.fsencode(p)} for i, p in enumerate(files)]  # bytes: any file name
        ds = ray.data.from_items(items, override_num_blocks=read_blocks(len(items), ray.cluster_resources()))
        ds = ds.flat_map(read_items, fn_kwargs={"options": options, "metadata": metadata, "spec": ix.spec})
        ds = ds.map_batches(mark_present, fn_kwargs={"access": access}, batch_size=self.ray.batch_size)
        ds = ds.map_batches(
            prepare_rows,
            fn_kwargs={
                "model": embedder.model_name_or_path,
                "kwargs": embedder.preprocessor_kwargs(),
                "instruction": ix.instruction,
            },
            batch_size=self.ray.batch_size,
        )
        gpus = self.ray.gpus_per_actor
        sizes = self.ray.actors if isinstance(self.ray.actors, tuple) else (self.ray.actors, self.ray.actors)
        ds = ds.map_batches(
            self.embed_actor,
            fn_constructor_kwargs={
                "model": embedder.model_name_or_path,
                "kwargs": embedder.embedder_kwargs(),
                "dim": ix.dim,
                "device": "cuda" if gpus else "cpu",
                "access": access,
            },
            batch_size=self.ray.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=sizes[0], max_size=sizes[1]),
            num_cpus=self.ray.actor_cpus,
            **({"num_gpus": gpus} if gpus else {}),
        )
        return ds


def RayIndexer(  # noqa: N802 - version 0.2's class, now an Indexer with a RayExecutor
    embedder: EmbedderSpec,
    store: VectorStore,
    *,
    ray_options: RayOptions | None = None,
    dim: int | None = None,
    instruction: str | None = None,
    layout: VectorLayout | Mapping[str, Any] | None = None,
    embed_actor: type = EmbedActor,
) -> Indexer:
    """An :class:`~.indexer.Indexer` whose files are indexed on Ray (:class:`RayExecutor`)."""
    store.address()  # a store other processes cannot reach is refused before any work
    executor = RayExecutor(ray_options, embed_actor=embed_actor)
    return Indexer(embedder, store, dim=dim, instruction=instruction, layout=layout, executor=executor)
