"""The stored payload's schema: what one point in the collection says about the item it stands for.

:class:`Record` is the one typed view of a point's payload. Ingestion builds records and stores
:meth:`Record.to_payload`; everything that reads a point back (retriever hits, the generator's prompt, the command
line, the adapters) goes through :meth:`Record.from_payload` and then :meth:`Record.to_input` (the model input the
point stands for), :meth:`Record.describe` (one line naming it) or :meth:`Record.context` (what a generator sees).
Adding a modality means teaching this module its input and description.

Payload layout (every key optional except ``modality``; older payloads without ``sources`` / ``files`` read fine):

* ``modality``: ``text`` | ``image`` | ``video`` | ``pdf-page`` | ``mixed``
* ``source``: the primary file path / URL; ``sources``: every file that holds this content (``source`` first);
  ``files``: per source, its :data:`FILE_FIELDS` (the primary source's are also at the top level)
* ``text``: the text (a chunk, a PDF page's extracted text; empty for images and videos)
* ``file_name``, ``metadata`` (the user's; a mail's from / to / cc / date / subject), ``chunk`` + ``span`` (text),
  ``page`` (a page of a PDF or an office document, 1-based), ``sheet`` (a spreadsheet page's sheet), ``segment``
  ([start, end] seconds) + ``duration`` (video), ``item`` (a ``mixed`` item as given), ``content_hash``
* ``member``: where inside its file the item is (``attachment=report.pdf``, ``entry=docs/a.docx``, chained with
  ``#``: see :mod:`~retrieval_pipeline.media.containers`); ``encoding``: a text file's detected encoding
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .media.pdf import (  # the PDF renderer lives with the media; version 0.2's path re-exports it
    PDF_DPI as PDF_DPI,
)
from .media.pdf import (
    PDF_MAX_PIXELS as PDF_MAX_PIXELS,
)
from .media.pdf import (
    PDF_RENDER_PIXELS_CAP as PDF_RENDER_PIXELS_CAP,
)
from .media.pdf import (
    PDF_RENDER_SIDE_CAP as PDF_RENDER_SIDE_CAP,
)
from .media.pdf import (
    PDFIUM_LOCK as PDFIUM_LOCK,
)
from .media.pdf import (
    pdf_render_scale as pdf_render_scale,
)
from .media.pdf import (
    render_page as render_page,
)
from .media.pdf import (
    render_pdf_page as render_pdf_page,
)

MODALITIES = ("text", "image", "video", "pdf-page", "mixed")
# Payload fields that describe a point's place in one file (which file, where in it, the user's metadata for it).
# A point whose content several files hold keeps them per source under ``files``; the primary source's (the first
# of ``sources``) are also at the top level, where filters and readers look.
FILE_FIELDS = ("file_name", "metadata", "chunk", "span", "page", "segment", "member", "sheet", "encoding")
# The fields a search result shows besides its scores and text (the server's ``SearchHit`` mirrors them).
HIT_FIELDS = ("modality", "source", "member", "page", "sheet", "segment", "chunk", "metadata")
# What the stored text is called in a generator's prompt when the model input is not that text itself.
TEXT_LABELS = {"pdf-page": "Page text"}


@dataclass
class Record:
    """One stored point's payload, typed. Unknown payload keys are kept in ``extra`` and written back as they were."""

    modality: str
    source: str = ""
    text: str = ""
    file_name: str | None = None
    metadata: dict[str, Any] | None = None
    chunk: int | None = None
    span: list[int] | None = None
    page: int | None = None
    segment: list[float] | None = None
    member: str | None = None
    sheet: str | None = None
    encoding: str | None = None
    duration: float | None = None
    item: Any = None
    sources: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    content_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------------------
    # payload <-> record

    def to_payload(self) -> dict[str, Any]:
        """The dict stored with the point (keys that are unset are left out)."""
        payload: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None or (f.name in ("sources", "files") and not value):
                continue
            payload[f.name] = list(value) if isinstance(value, tuple) else value
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Record:
        """Read a stored payload; tolerates older layouts (no ``sources`` / ``files``) and keeps unknown keys."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in payload.items() if k in known}
        record = cls(**{**values, "modality": str(payload.get("modality") or "")})
        record.source = str(record.source or "")
        record.text = str(record.text or "")
        record.sources = sources_of(payload)
        record.files = {str(k): dict(v) for k, v in (payload.get("files") or {}).items() if isinstance(v, Mapping)}
        record.extra = {k: v for k, v in payload.items() if k not in known}
        return record

    def file_fields(self) -> dict[str, Any]:
        """This record's :data:`FILE_FIELDS` (its place in its primary file)."""
        return file_fields(self.to_payload())

    def hit_fields(self) -> dict[str, Any]:
        """The :data:`HIT_FIELDS` this record has (what a search result shows)."""
        payload = self.to_payload()
        return {k: payload[k] for k in HIT_FIELDS if k in payload}

    # ------------------------------------------------------------------------------------------------------------
    # what the point stands for

    def to_input(self) -> Any:
        """The model input this point stands for (what the reranker and the generator see): a text chunk, an
        image path, a rendered PDF page, a video (segment), or a mixed item as it was given."""
        if self.modality == "text":
            return {"text": self.text}
        if self.modality == "image":
            return {"image": self.local_file()}
        if self.modality == "pdf-page":
            from .media.documents import render_document_page

            return {"image": render_document_page(self.source, int(self.page or 0), member=self.member)}
        if self.modality == "video":
            item: dict[str, Any] = {"video": self.local_file()}
            if self.segment:
                item["video_start"], item["video_end"] = self.segment
            return item
        if self.modality == "mixed" and self.item is not None:
            return self.item
        raise ValueError(f"stored point has no usable item (modality {self.modality!r})")

    def local_file(self) -> str:
        """The file holding this item's bytes: its source, or its member extracted to the cache."""
        if not self.member:
            return self.source
        from .media.containers import extracted

        return str(extracted(self.source, self.member))

    @property
    def locator(self) -> str:
        """The source with the member path: ``mail.eml#attachment=report.pdf``."""
        return f"{self.source}#{self.member}" if self.member else self.source

    def describe(self, *, chunk: bool = True) -> str:
        """One line naming the item: its source and where in it (member, page, seconds, and the chunk unless
        ``chunk`` is False: a failure names the file, not the chunk)."""
        where = self.locator
        if self.sheet:
            where += f" (sheet {self.sheet})"
        if self.page is not None:
            where += f" (page {self.page})"
        if self.segment:
            a, b = self.segment
            where += f" ({a:g}-{b:g}s)"
        if chunk and self.chunk is not None:
            where += f" (chunk {self.chunk})"
        return where

    def context(self, item: Any = None) -> list[Any]:
        """What a generator is shown for this point: the model input (``item`` when already made), then the stored
        text when the input does not already hold it (a PDF page's extracted text)."""
        parts = [self.to_input() if item is None else item]
        if self.text and self.modality not in ("text", "mixed"):
            parts.append({"text": f"{TEXT_LABELS.get(self.modality, 'Text')}: {self.text}"})
        return parts


def item_for(payload: Mapping[str, Any]) -> Any:
    """The model input a stored point stands for: ``Record.from_payload(payload).to_input()``."""
    return Record.from_payload(payload).to_input()


# ----------------------------------------------------------------------------------------------------------------
# sources: which files hold a point's content


def file_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in FILE_FIELDS if k in payload}


def sources_of(payload: Mapping[str, Any]) -> list[str]:
    """Every source (file path / URL) that holds a point's content; older points only have ``source``."""
    sources = payload.get("sources")
    if isinstance(sources, list) and sources:
        return [str(s) for s in sources]
    source = payload.get("source")
    return [str(source)] if source else []


def sources_update(sources: list[str], files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The payload keys to set when a point's sources change: the list, the primary source and its file fields."""
    update: dict[str, Any] = {"sources": sources, "source": sources[0]}
    if files:  # points written before per-file fields existed have none
        update["files"] = dict(files)
        primary = files.get(sources[0], {})
        # the new primary source's place, and none of the old one's (a member path of a file no longer primary)
        update.update({k: None for k in FILE_FIELDS if k not in primary and k != "metadata"})
        update.update(primary)
    return update


# ----------------------------------------------------------------------------------------------------------------
# PDF pages: a ``pdf-page`` record's input is the page rendered again from its file
