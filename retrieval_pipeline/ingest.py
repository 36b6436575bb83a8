"""Ingestion: files and folders -> items -> vectors -> Qdrant, idempotent and resumable.

A file becomes one or more items (units): an image; a video (whole, or fixed-length segments); text and
Markdown in overlapping chunks; a PDF's pages, each rendered to an image (visual-document retrieval) with the
page's extracted text in the payload. Every unit's point id derives from its content and the model +
dimension, so indexing twice stores nothing new, and a run that was killed half way, started again, embeds only
what is missing. One bad file never aborts the run: it is reported with its reason and the rest is indexed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from .media import IMAGE_EXTENSIONS, InputError, parse_input
from .store import CollectionSpec, Point, VectorStore, point_id

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"}
TEXT_EXTENSIONS = {".txt", ".md", ".markdown", ".rst", ".text"}
PDF_EXTENSIONS = {".pdf"}
# Text chunks: about a page of prose each, overlapping so a sentence cut at a border is whole in one of them.
CHUNK_CHARS = 1200
CHUNK_OVERLAP = 200
# PDF pages are rendered at this resolution; the embedder's max_pixels then bounds the tokens per page.
PDF_DPI = 144
# Units embedded and upserted together (also the unit of resumption after an interruption).
GROUP_SIZE = 32


@dataclass
class Unit:
    """One item to embed: ``content_key`` (identity), the embedder ``input`` and the stored ``payload``."""

    content_key: str
    input: Any
    payload: dict[str, Any]


@dataclass
class Failure:
    source: str
    reason: str


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"{self.files} files: {self.indexed} items indexed, {self.present} already present, "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped"
        )
        lines = [text] + [f"  failed  {f.source}: {f.reason}" for f in self.failed]
        lines += [f"  skipped {f.source}: {f.reason}" for f in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True)
class IngestOptions:
    recursive: bool = True
    include: tuple[str, ...] = ()  # glob patterns on file names or relative paths; empty = every supported file
    exclude: tuple[str, ...] = ()
    chunk_chars: int = CHUNK_CHARS
    chunk_overlap: int = CHUNK_OVERLAP
    video_segment_seconds: float | None = None  # None: a video is one item
    pdf_dpi: int = PDF_DPI

    def __post_init__(self) -> None:
        if self.chunk_chars < 1 or not 0 <= self.chunk_overlap < self.chunk_chars:
            raise ValueError("need chunk_chars >= 1 and 0 <= chunk_overlap < chunk_chars")
        if self.video_segment_seconds is not None and self.video_segment_seconds <= 0:
            raise ValueError("video_segment_seconds must be positive")


def modality_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in PDF_EXTENSIONS:
        return "pdf"
    return None


def discover(paths: Sequence[str | Path], options: IngestOptions) -> tuple[list[Path], list[Failure]]:
    """Files under ``paths`` (sorted, de-duplicated); missing paths come back as failures."""
    files: list[Path] = []
    missing: list[Failure] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            files.append(path.resolve())
        elif path.is_dir():
            pattern = "**/*" if options.recursive else "*"
            for child in sorted(path.glob(pattern)):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                    rel = child.relative_to(path).as_posix()
                    if options.include and not any(_match(child.name, rel, g) for g in options.include):
                        continue
                    if any(_match(child.name, rel, g) for g in options.exclude):
                        continue
                    files.append(child.resolve())
        else:
            missing.append(Failure(str(path), "no such file or folder"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, missing


def _match(name: str, rel: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = CHUNK_OVERLAP) -> list[tuple[int, int]]:
    """Character spans of overlapping chunks, cut at whitespace where possible."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    start = 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(n, start + size)
        if end < n:
            cut = max(text.rfind("\n\n", start + size // 2, end), text.rfind(" ", start + size // 2, end))
            if cut > start:
                end = cut
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        space = text.find(" ", nxt, end)
        start = space + 1 if space != -1 else nxt
    return spans


def units_for_file(path: Path, options: IngestOptions, metadata: Mapping[str, Any]) -> Iterator[Unit]:
    """The items of one file. Raises :class:`InputError` (or OSError) when the file cannot be read."""
    modality = modality_of(path)
    source = str(path)
    base = {"source": source, "file_name": path.name, "metadata": dict(metadata)}
    if modality == "image":
        yield Unit(file_digest(path), {"image": source}, {**base, "modality": "image", "text": ""})
    elif modality == "text":
        text = _read_text(path)
        for i, (a, b) in enumerate(chunk_text(text, options.chunk_chars, options.chunk_overlap)):
            chunk = text[a:b]
            key = hashlib.sha256(chunk.encode()).hexdigest()
            payload = {**base, "modality": "text", "text": chunk, "chunk": i, "span": [a, b]}
            yield Unit(f"text:{key}", {"text": chunk}, payload)
    elif modality == "video":
        digest = file_digest(path)
        duration = video_duration(path)
        step = options.video_segment_seconds
        if step is None or duration <= step:
            yield Unit(digest, {"video": source}, {**base, "modality": "video", "text": "", "duration": duration})
        else:
            start = 0.0
            while start < duration:
                end = min(duration, start + step)
                if end - start < min(1.0, step):  # a sliver at the end joins nothing; too short to sample
                    break
                segment = {"video": source, "video_start": start, "video_end": end}
                payload = {**base, "modality": "video", "text": "", "segment": [start, end], "duration": duration}
                yield Unit(f"{digest}:{start:.3f}-{end:.3f}", segment, payload)
                start = end
    elif modality == "pdf":
        digest = file_digest(path)
        for page_number, image, text in render_pdf(path, options.pdf_dpi):
            payload = {**base, "modality": "pdf-page", "text": text, "page": page_number}
            yield Unit(f"{digest}:page={page_number}", {"image": image}, payload)
    else:
        raise InputError(f"unsupported file type {path.suffix or '(none)'!r}")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text") from None


def video_duration(path: Path) -> float:
    import decord

    try:
        reader = decord.VideoReader(str(path))
        frames, fps = len(reader), reader.get_avg_fps()
    except Exception as exc:
        raise InputError(f"unreadable video: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if frames == 0 or not fps:
        raise InputError("video has no frames")
    return frames / fps


def render_pdf(path: Path, dpi: int = PDF_DPI) -> Iterator[tuple[int, Image.Image, str]]:
    """(1-based page number, page image, page text) for each page, rendered lazily."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception as exc:  # pdfium raises PdfiumError for corrupt / encrypted files
        raise InputError(f"unreadable PDF: {exc}") from None
    try:
        if len(pdf) == 0:
            raise InputError("PDF has no pages")
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                image = page.render(scale=dpi / 72).to_pil().convert("RGB")
                textpage = page.get_textpage()
                text = textpage.get_text_bounded().replace("\r\n", "\n").strip()
                textpage.close()
            finally:
                page.close()
            yield index + 1, image, text
    finally:
        pdf.close()


def render_pdf_page(path: str | Path, page_number: int, dpi: int = PDF_DPI) -> Image.Image:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        page = pdf[page_number - 1]
        try:
            return page.render(scale=dpi / 72).to_pil().convert("RGB")
        finally:
            page.close()
    finally:
        pdf.close()


def item_for(payload: Mapping[str, Any]) -> Any:
    """The model input a stored point stands for (what the reranker and the generator see)."""
    modality = payload.get("modality")
    if modality == "text":
        return {"text": payload.get("text", "")}
    if modality == "image":
        return {"image": payload["source"]}
    if modality == "pdf-page":
        return {"image": render_pdf_page(payload["source"], int(payload["page"]))}
    if modality == "video":
        item: dict[str, Any] = {"video": payload["source"]}
        if payload.get("segment"):
            item["video_start"], item["video_end"] = payload["segment"]
        return item
    if modality == "mixed" and "item" in payload:
        return payload["item"]
    raise ValueError(f"stored point has no usable item (modality {modality!r})")


def unit_for_item(item: Any, metadata: Mapping[str, Any] | None = None) -> Unit:
    """A unit for an item given directly (str or a multimodal dict with paths / URLs): API and integrations."""
    parse_input(item)  # structural check, clear error
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise InputError(f"items to index must be str or dict (JSON-storable), got {type(item).__name__}")
    kinds = [k for k in ("text", "image", "video") if item.get(k) is not None]
    modality = kinds[0] if len(kinds) == 1 else "mixed"
    try:
        canonical = json.dumps(item, sort_keys=True)
    except TypeError:
        raise InputError("items to index must be JSON-storable (paths or URLs, not PIL images)") from None
    parts = [canonical]
    for key in ("image", "video"):
        for ref in _refs(item.get(key)):
            if isinstance(ref, str) and os.path.isfile(ref):
                parts.append(file_digest(Path(ref)))
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()
    text = item.get("text")
    payload: dict[str, Any] = {
        "modality": modality,
        "source": _first_ref(item) or "",
        "text": " ".join(text) if isinstance(text, list) else (text or ""),
        "metadata": dict(metadata or {}),
    }
    if modality == "mixed" or set(item) - {"text", "image", "video"} or isinstance(item.get(kinds[0]), list):
        payload["modality"] = "mixed"
        payload["item"] = item
    return Unit(f"item:{key}", item, payload)


def _refs(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return [value]


def _first_ref(item: Mapping[str, Any]) -> str | None:
    for key in ("image", "video"):
        refs = _refs(item.get(key))
        if refs and isinstance(refs[0], str):
            return refs[0]
    return None


# ---------------------------------------------------------------------------------------------------------------


class Indexer:
    """Embeds units in groups and upserts them; skips what the store already holds."""

    def __init__(
        self,
        embedder: Any,
        store: VectorStore,
        *,
        dim: int | None = None,
        instruction: str | None = None,
        group_size: int = GROUP_SIZE,
    ):
        self.embedder = embedder
        self.store = store
        self.dim = dim or embedder.hidden_size
        self.instruction = instruction or embedder.default_instruction
        self.group_size = group_size
        self.spec = CollectionSpec(model=embedder.model_name_or_path, dim=self.dim, instruction=self.instruction)

    def index_paths(
        self,
        paths: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress_bar: bool = True,
    ) -> IndexReport:
        options = options or IngestOptions()
        self.store.open(self.spec)
        files, missing = discover(paths, options)
        report = IndexReport(files=len(files), failed=list(missing))
        supported = []
        for f in files:
            if modality_of(f) is None:
                report.skipped.append(Failure(str(f), f"unsupported file type {f.suffix or '(none)'!r}"))
            else:
                supported.append(f)
        bar = tqdm(supported, desc="indexing", unit="file", disable=not show_progress_bar)
        pending: list[Unit] = []
        for path in bar:
            try:
                for unit in units_for_file(path, options, metadata or {}):
                    pending.append(unit)
                    if len(pending) >= self.group_size:
                        self._flush(pending, report)
                        pending = []
            except (InputError, OSError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, InputError) else f"{exc.__class__.__name__}: {exc}"
                report.failed.append(Failure(str(path), reason))
                logger.warning("skipping %s: %s", path, reason)
            bar.set_postfix(indexed=report.indexed, present=report.present, failed=len(report.failed))
        self._flush(pending, report)
        return report

    def index_items(
        self, items: Iterable[Any], *, metadata: Mapping[str, Any] | None = None
    ) -> tuple[IndexReport, list[str | None]]:
        """Index items given directly; returns the report and each item's point id (None where it failed)."""
        self.store.open(self.spec)
        report = IndexReport()
        ids: list[str | None] = []
        units: list[Unit] = []
        for n, item in enumerate(items):
            try:
                unit = unit_for_item(item, metadata)
            except InputError as exc:
                report.failed.append(Failure(f"item {n}", exc.reason))
                ids.append(None)
                continue
            units.append(unit)
            ids.append(point_id(unit.content_key, self.spec))
        for start in range(0, len(units), self.group_size):
            self._flush(units[start : start + self.group_size], report)
        stored = self.store.existing({i for i in ids if i is not None})
        return report, [i if i in stored else None for i in ids]

    def _flush(self, units: list[Unit], report: IndexReport) -> None:
        if not units:
            return
        ids = [point_id(u.content_key, self.spec) for u in units]
        present = self.store.existing(set(ids))
        todo: dict[str, Unit] = {}
        for pid, unit in zip(ids, units):
            if pid in present:
                report.present += 1
            elif pid in todo:
                report.present += 1  # the same content twice in this run
            else:
                todo[pid] = unit
        if not todo:
            return
        vectors, failures = embed_isolating(
            self.embedder, [u.input for u in todo.values()], instruction=self.instruction, dim=self.dim
        )
        points = []
        for k, (pid, unit) in enumerate(todo.items()):
            if k in failures:
                where = unit.payload.get("source", "?")
                if "page" in unit.payload:
                    where += f" (page {unit.payload['page']})"
                elif "segment" in unit.payload:
                    where += f" (segment {unit.payload['segment'][0]:g}-{unit.payload['segment'][1]:g}s)"
                report.failed.append(Failure(pid if where == "?" else where, failures[k]))
                continue
            payload = {**unit.payload, "content_hash": hashlib.sha256(unit.content_key.encode()).hexdigest()}
            points.append(Point(pid, vectors[k].tolist(), payload))
        self.store.upsert(points)
        report.indexed += len(points)


def embed_isolating(embedder: Any, inputs: list[Any], **kwargs: Any) -> tuple[dict[int, Any], dict[int, str]]:
    """Embed ``inputs``; an input that fails is reported (index -> reason) and the others are still embedded."""
    remaining = list(range(len(inputs)))
    failures: dict[int, str] = {}
    while remaining:
        try:
            out = embedder.embed([inputs[i] for i in remaining], **kwargs)
        except InputError as exc:
            if exc.index is None:
                raise
            bad = remaining.pop(exc.index)
            failures[bad] = f"{exc.field}: {exc.reason}" if exc.field else exc.reason
            continue
        return {i: out[k] for k, i in enumerate(remaining)}, failures
    return {}, failures
