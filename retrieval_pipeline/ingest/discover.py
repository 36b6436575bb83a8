"""Which files a run reads: folders walked (links followed with a loop guard, hidden files left out,
``--include`` / ``--exclude``), each file's modality by its extension."""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Sequence
from pathlib import Path

from ..media import IMAGE_EXTENSIONS
from ..media.containers import ARCHIVE_EXTENSIONS, MAIL_EXTENSIONS
from ..media.office import OFFICE_EXTENSIONS
from ..media.web import HTML_EXTENSIONS, MHTML_EXTENSIONS
from .options import IngestOptions
from .report import Failure, display_path

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"}


TEXT_EXTENSIONS = {".txt", ".md", ".markdown", ".rst", ".text", ".csv", ".tsv", ".log"}


PDF_EXTENSIONS = {".pdf"}


def modality_of(path: Path) -> str | None:
    """What kind of file ``path`` is, by its extension: ``image``, ``video``, ``text``, ``pdf``, ``office`` (rendered
    by LibreOffice), ``web`` (HTML, MHTML), ``mail`` (.eml), ``archive`` (.zip); None when it is not read."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in PDF_EXTENSIONS:
        return "pdf"
    if suffix in OFFICE_EXTENSIONS:
        return "office"
    if suffix in HTML_EXTENSIONS or suffix in MHTML_EXTENSIONS:
        return "web"
    if suffix in MAIL_EXTENSIONS:
        return "mail"
    if suffix in ARCHIVE_EXTENSIONS:
        return "archive"
    return None


def discover(paths: Sequence[str | Path], options: IngestOptions) -> tuple[list[Path], list[Failure], list[Failure]]:
    """(files under ``paths``, sorted and de-duplicated; missing paths as failures; skipped links).

    Symbolic links are followed, to files and to folders alike, and a file found through a link is indexed under
    the link's path (the folder's own name for it: deleting the link and ``--prune`` removes it). A link to a folder
    the walk has already entered (a loop, or a second way to the same folder) is skipped and reported, as is a
    dangling link. The root paths given are resolved; nothing below them is."""
    files: list[Path] = []
    missing: list[Failure] = []
    skipped: list[Failure] = []
    for raw in paths:
        given = Path(raw).expanduser()
        try:
            if given.is_file():
                files.append(given.resolve())
            elif given.is_dir():
                _walk(given.resolve(), options, files, skipped)
            elif given.is_symlink():
                missing.append(Failure(display_path(given), "a link to nothing (its target does not exist)"))
            else:
                missing.append(Failure(display_path(given), "no such file or folder"))
        except OSError as exc:  # a name longer than the system allows, a folder we may not enter, ...
            missing.append(Failure(display_path(given), exc.strerror or str(exc)))
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, missing, skipped


def _walk(root: Path, options: IngestOptions, files: list[Path], skipped: list[Failure]) -> None:
    """Files under ``root`` (hidden ones left out; ``include`` / ``exclude`` on the name or the relative path),
    following links with a guard: each real folder is entered once."""
    entered: dict[tuple[int, int], Path] = {}
    found: list[Path] = []
    # Folders reached without a link are entered first, links to folders after them: a folder is indexed under its
    # own path, and a link that leads to it (or to an ancestor: a loop) is the one skipped.
    real, linked = collections.deque([root]), collections.deque()
    while real or linked:
        folder = real.popleft() if real else linked.popleft()
        st = folder.stat()
        first = entered.get((st.st_dev, st.st_ino))
        if first is not None:  # a link loop, or a second way to one folder
            skipped.append(Failure(display_path(folder), f"the same folder as {display_path(first)}, indexed once"))
            continue
        entered[(st.st_dev, st.st_ino)] = folder
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            skipped.append(Failure(display_path(folder), f"cannot list the folder: {exc.strerror or exc}"))
            continue
        for child in children:
            rel = child.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            try:
                _visit(child, rel, options, found, real, linked, skipped)
            except OSError as exc:  # this entry only (a path longer than the system allows, ...)
                skipped.append(Failure(display_path(child), exc.strerror or str(exc)))
    files.extend(sorted(found))


def _visit(
    child: Path,
    rel: Path,
    options: IngestOptions,
    found: list[Path],
    real: collections.deque,
    linked: collections.deque,
    skipped: list[Failure],
) -> None:
    """One folder entry: a folder to walk (by a link: after the others), a file to index, or a dangling link."""
    if child.is_dir():
        if options.recursive:
            (linked if child.is_symlink() else real).append(child)
    elif child.is_file():
        name, rel_text = child.name, rel.as_posix()
        if options.include and not any(_match(name, rel_text, g) for g in options.include):
            return
        if not any(_match(name, rel_text, g) for g in options.exclude):
            found.append(child)
    elif child.is_symlink():
        skipped.append(Failure(display_path(child), "a link to nothing (its target does not exist)"))


def _match(name: str, rel: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)
