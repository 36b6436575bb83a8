"""What an indexing run tells: counts, and every failure and skipped path with its reason."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError


@dataclass
class Failure:
    source: str
    reason: str


@dataclass
class ItemFailure:
    """A part of a file that failed on its own (a PDF page that cannot be rendered): reported under ``where``
    while the file's other parts are indexed. ``skipped``: a part of a type that is not indexed (a ``.exe`` in an
    archive): reported with the skipped files, and the file counts as read in full."""

    where: str
    reason: str
    skipped: bool = False


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    files: int = 0
    replaced: int = 0  # points that changed files no longer hold (deleted, or kept for their other sources)
    pruned: int = 0  # points deleted by ``prune`` (their files are gone)
    pruned_files: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)  # the files (paths as read) a part of which failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        """False when something failed and nothing was indexed or found present: the run did nothing useful."""
        return not (self.failed and not self.indexed and not self.present)

    def summary(self) -> str:
        text = (
            f"{self.indexed} items indexed, {self.present} already present, "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped"
        )
        if self.files:  # items given directly (a dataset's corpus) come from no file
            text = f"{self.files} files: {text}"
        if self.replaced:
            text += f", {self.replaced} outdated items replaced"
        if self.pruned or self.pruned_files:
            text += f", {self.pruned} items of {len(self.pruned_files)} removed files pruned"
        lines = [text] + [f"  failed  {f.source}: {f.reason}" for f in self.failed]
        lines += [f"  skipped {f.source}: {f.reason}" for f in self.skipped]
        lines += [f"  pruned  {name}" for name in self.pruned_files]
        return "\n".join(lines)


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name that can be printed and stored as UTF-8 (undecodable bytes shown as ``\\xNN``)."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return f"{exc.field}: {exc.reason}" if getattr(exc, "field", None) else exc.reason
    if isinstance(exc, MemoryError):
        return "out of memory while reading or decoding it"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {display_path(text)}" if text else exc.__class__.__name__
