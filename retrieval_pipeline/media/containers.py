"""Files that hold other files -- mail (``.eml``) with attachments, ``.zip`` archives, MHTML pages, web pages with
their images -- and the *member paths* that name what is inside: ``attachment=report.pdf``,
``entry=docs/plan.docx``, ``part=logo.png``, ``image=img/chart.png``, chained with ``#`` for a member of a member
(``attachment=bundle.zip#entry=a.pdf``). A point read from a member keeps its file as ``source`` (so the file's
bookkeeping -- changed, deleted, pruned -- covers its members) and the path as ``member``; it is shown as
``mail.eml#attachment=report.pdf``.

Archives are read within bounds checked before anything is inflated (entries, declared sizes, compression ratio,
total) and again while reading (a header may lie); mail and archives nest at most :data:`MAX_DEPTH` deep."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import web
from .cache import cache_path, write_atomically

MAIL_EXTENSIONS = {".eml"}
ARCHIVE_EXTENSIONS = {".zip"}
# Members inside members inside the file: at most this deep (a zip in a mail in a zip is depth 3).
MAX_DEPTH = 3
# One archive: at most this many entries, each at most MAX_MEMBER_BYTES and at most MAX_RATIO times its compressed
# size, all together at most MAX_EXPANDED_BYTES (what a zip bomb needs to exceed).
MAX_ENTRIES = 10_000
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200
RATIO_FLOOR = 64 * 1024  # the ratio counts for entries (and archives) above this size
MAX_EXPANDED_BYTES = 1024 * 1024 * 1024
# Mail: at most this many attachments.
MAX_ATTACHMENTS = 1000


@dataclass
class Member:
    """One file inside another: its step (``attachment=NAME``), its name, and its bytes -- or the file beside a
    web page that holds them (``path``, read when the member's turn comes), or why it cannot be read (an encrypted
    entry, one over the limits: that member fails alone; ``skipped``: a member of a type that is not read)."""

    step: str
    name: str
    data: bytes | None
    error: str | None = None
    path: Path | None = None
    skipped: bool = False

    def read(self) -> bytes | None:
        return self.path.read_bytes() if self.data is None and self.path is not None else self.data


@dataclass
class Mail:
    headers: dict[str, str]
    body: str
    members: list[Member] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what of the mail could not be read (reported, not lost)


class Budget:
    """How many bytes the archives inside one file may still inflate, all nesting levels together (a zip of zips
    multiplies any per-archive bound)."""

    def __init__(self, total: int | None = None) -> None:
        self.total = MAX_EXPANDED_BYTES if total is None else total
        self.remaining = self.total

    def take(self, n: int) -> None:
        if n > self.remaining:
            raise InputError(f"the archives in this file expand past {self.total} bytes in all: refused as a zip bomb")
        self.remaining -= n


# ----------------------------------------------------------------------------------------------------------------
# mail

HEADERS = ("from", "to", "cc", "date", "subject")
# A header's raw value is read up to this many characters (the email package's parser is quadratic on some
# hostile headers: a megabyte of encoded words takes minutes).
MAX_HEADER_CHARS = 4096


def read_mail(data: bytes) -> Mail:
    """An RFC 822 message: headers (from, to, cc, date, subject), the body as text (an HTML body through the web
    page extractor) and each attachment as a member (a forwarded message is an ``.eml`` member). What cannot be
    read -- a body over the web page limit, a broken MIME structure -- is in ``problems``."""
    try:
        return _read_mail(data)
    except RecursionError:
        raise InputError("the mail's parts are nested too deeply to read") from None


def _read_mail(data: bytes) -> Mail:
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(message, EmailMessage):
        raise InputError("not an e-mail message")
    raw = {k.lower(): v for k, v in reversed(list(message.raw_items()))}  # the first of each header
    if not any(raw.get(h) for h in ("from", "to", "subject", "date", "message-id")):
        raise InputError("not an e-mail message: none of From, To, Subject, Date, Message-ID")
    headers = {k: _header_text(raw[k]) for k in HEADERS if raw.get(k)}
    mail = Mail({k: v for k, v in headers.items() if v}, "")
    body = _body_part(message)
    if body is not None:
        content = _content(body)
        if body.get_content_type() == "text/html":
            try:
                mail.body = web.page_text(content.encode("utf-8") if isinstance(content, str) else content)[1]
            except InputError as exc:
                mail.problems.append(f"the HTML body: {exc.reason}")
        else:
            mail.body = (content if isinstance(content, str) else content.decode("utf-8", "replace")).strip()
    used: set[str] = set()
    for n, attachment in enumerate(_attachments(message, body), 1):
        if n > MAX_ATTACHMENTS:
            mail.problems.append(f"more than {MAX_ATTACHMENTS} attachments: the rest are not read")
            break
        kind = attachment.get_content_type()
        name = _filename(attachment) or (
            f"message-{n}.eml" if kind == "message/rfc822" else f"attachment-{n}{_extension(kind)}"
        )
        name = web.unique_name(os.path.basename(name.replace("\\", "/")), used)
        try:
            if kind == "message/rfc822":
                inner: Any = attachment.get_payload()
                inner = inner[0] if isinstance(inner, list) else inner
                payload = inner.as_bytes(policy=email.policy.default)
            else:
                payload = decoded_payload(attachment)
        except Exception as exc:  # noqa: BLE001 - a broken part: this attachment only
            mail.members.append(Member(f"attachment={name}", name, None, f"unreadable attachment: {exc}"))
            continue
        mail.members.append(Member(f"attachment={name}", name, payload))
    broken = [d for d in message.defects if "Boundary" in type(d).__name__ or "Multipart" in type(d).__name__]
    for part in message.walk():
        broken += [d for d in getattr(part, "defects", []) if "Boundary" in type(d).__name__]
    if broken:
        mail.problems.append(f"malformed MIME structure ({type(broken[0]).__name__}): parts of it may be missing")
    return mail


def _header_text(value: Any) -> str:
    """A header's text, decoded leniently (an address list the strict parser chokes on stays as written)."""
    from email.header import decode_header, make_header

    text = str(value)[:MAX_HEADER_CHARS]
    try:
        text = str(make_header(decode_header(text)))
    except Exception:  # noqa: BLE001 - undecodable encoded words: the raw text
        pass
    return " ".join(text.split())


def _extension(kind: str) -> str:
    """The usual extension of a MIME type (an unnamed part is read by its type)."""
    import mimetypes

    known = {"text/plain": ".txt", "text/html": ".html", "image/jpeg": ".jpg", "application/pdf": ".pdf"}
    return known.get(kind) or mimetypes.guess_extension(kind) or ""


def _filename(part: Any) -> str | None:
    try:
        return part.get_filename()
    except Exception:  # noqa: BLE001 - a Content-Disposition the parser cannot read
        return None


def _body_part(message: EmailMessage) -> Any:
    try:
        return message.get_body(preferencelist=("plain", "html"))
    except Exception:  # noqa: BLE001 - a structure get_body cannot walk: no body, the parts still count
        return None


def _attachments(message: Any, body: Any) -> list[Any]:
    """Every leaf part that is not the body nor one of its alternatives, at any depth of multipart nesting (a
    forwarded message, ``message/rfc822``, is one attachment: not entered)."""
    out: list[Any] = []

    def walk(part: Any, inside_alternative: bool) -> None:
        kind = part.get_content_type()
        if kind == "message/rfc822" and part is not message:
            out.append(part)
            return
        if part.is_multipart():
            children = part.get_payload()
            for child in children if isinstance(children, list) else []:
                walk(child, inside_alternative or kind == "multipart/alternative")
            return
        if part.get_content_maintype() == "multipart":  # its boundary was not found: no part can be told apart
            return
        if part is body:
            return
        disposition = (part.get_content_disposition() or "").lower()
        textual = kind in ("text/plain", "text/html") and disposition != "attachment" and not _filename(part)
        if textual and inside_alternative:
            return  # the body's other rendering
        out.append(part)

    walk(message, False)
    return out


def _content(part: Any) -> str | bytes:
    try:
        return part.get_content()
    except (LookupError, UnicodeError):  # an unknown charset: the bytes, decoded leniently
        return decoded_payload(part).decode("utf-8", "replace")


def decoded_payload(part: Any) -> bytes:
    """A MIME part's bytes, transfer encoding undone (b"" for a part without any)."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


# ----------------------------------------------------------------------------------------------------------------
# archives


def zip_members(
    data: bytes, budget: Budget | None = None, wanted: Callable[[str], bool] | None = None
) -> Iterator[Member]:
    """The files of a ZIP archive, in archive order, within the bounds (entries, ratio, sizes, overlapping entries)
    checked from the central directory before anything is inflated and again while inflating. Folders, macOS
    resource forks and hidden entries are left out; an encrypted or oversized entry fails alone. ``budget``: the
    bytes the archives of the whole file may still inflate; ``wanted``: whether an entry's name is of a type that
    is read (the others are skipped without being inflated)."""
    budget = budget or Budget()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise InputError(f"not a readable ZIP archive: {exc}") from None
    check_zip_bounds(infos, len(data))
    used: set[str] = set()
    with archive:
        for info in infos:
            parts = info.filename.replace("\\", "/").split("/")
            if info.is_dir() or any(p.startswith(".") and p != ".." or p == "__MACOSX" for p in parts if p):
                continue
            shown = "/".join(p for p in parts if p and p != "..")
            step_name = web.unique_name(shown.replace("/", "\u2215"), used).replace("\u2215", "/")
            step = f"entry={step_name}"
            if wanted is not None and not wanted(step_name):
                suffix = Path(step_name).suffix or "(none)"
                yield Member(step, step_name, None, f"unsupported file type {suffix!r}", skipped=True)
                continue
            if info.flag_bits & 0x1:
                yield Member(step, step_name, None, "encrypted archive entry (no password is tried)")
                continue
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > MAX_MEMBER_BYTES or (ratio > MAX_RATIO and info.file_size > RATIO_FLOOR):
                too_big = info.file_size > MAX_MEMBER_BYTES
                why = f"{info.file_size} bytes" if too_big else f"compression ratio {ratio:.0f}"
                yield Member(step, step_name, None, f"archive entry refused as a zip bomb ({why})")
                continue
            try:
                budget.take(info.file_size)
                payload = _read_entry(archive, info, min(MAX_MEMBER_BYTES, info.file_size))
            except InputError as exc:
                yield Member(step, step_name, None, str(exc))
                continue
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as exc:
                yield Member(step, step_name, None, f"unreadable archive entry: {exc}")
                continue
            yield Member(step, step_name, payload)


def check_zip_bounds(infos: list[zipfile.ZipInfo], size: int, max_total: int | None = None) -> None:
    """Refuse an archive whose central directory describes a bomb: too many entries, too much in all (``max_total``,
    default MAX_EXPANDED_BYTES), too high a ratio overall, or entries that overlap (one compressed kernel named by
    many entries)."""
    max_total = MAX_EXPANDED_BYTES if max_total is None else max_total
    if len(infos) > MAX_ENTRIES:
        raise InputError(f"archive has {len(infos)} entries (limit {MAX_ENTRIES})")
    declared = sum(info.file_size for info in infos)
    if declared > max_total:
        raise InputError(f"archive expands to {declared} bytes (limit {max_total}): refused as a zip bomb")
    if declared > RATIO_FLOOR and declared / max(1, size) > MAX_RATIO:
        raise InputError(f"archive expands {declared / max(1, size):.0f} times its size: refused as a zip bomb")
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for cur, nxt in zip(ordered, ordered[1:]):
        name_bytes = len(cur.filename.encode("utf-8" if cur.flag_bits & 0x800 else "cp437", "replace"))
        if cur.header_offset + 30 + name_bytes + cur.compress_size > nxt.header_offset:
            raise InputError("archive entries overlap (one compressed stream named by several entries): a zip bomb")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, never more than ``limit`` (its declared size: checked against the bounds before; a header
    that lies about the size is caught here, before the rest is inflated)."""
    out = io.BytesIO()
    with archive.open(info) as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            out.write(block)
            if out.tell() > limit:
                raise InputError("archive entry inflates beyond its declared size: refused as a zip bomb")
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# members of a container, and member paths resolved again


def members(name: str, data: bytes, folder: Path | None = None) -> Iterator[Member]:
    """The members of container ``name`` (a mail's attachments, an archive's entries, an MHTML page's images; a
    web page's images when ``folder`` -- the page's folder on disk -- is given)."""
    suffix = Path(name).suffix.lower()
    if suffix in MAIL_EXTENSIONS:
        yield from read_mail(data).members
    elif suffix in ARCHIVE_EXTENSIONS:
        yield from zip_members(data)
    elif suffix in web.MHTML_EXTENSIONS:
        for part_name, payload in web.read_mhtml(data)[1]:
            yield Member(f"part={part_name}", part_name, payload)
    elif suffix in web.HTML_EXTENSIONS:
        for image in web.read_html(data, folder).images:
            yield Member(image.step, image.name, image.data, image.error, image.path)
    else:
        raise InputError(f"{name!r} holds no members")


def split_member(member: str) -> list[str]:
    return [step for step in member.split("#") if step]


def member_bytes(path: str | os.PathLike, member: str) -> tuple[str, bytes]:
    """(name, bytes) of ``member`` inside the file at ``path``, read again from the file. :class:`InputError`
    when the file no longer holds it."""
    name, data = os.fspath(path), Path(path).read_bytes()
    folder: Path | None = Path(path).parent
    for step in split_member(member):
        kind, _, wanted = step.partition("=")
        if kind == "inline":
            data, name = web.inline_image(data, wanted), wanted
        elif kind == "image":
            local = web.local_image(folder, web.unescape_step(wanted)) if folder is not None else None
            if local is None:
                raise InputError(f"the page's image {wanted!r} is no longer beside it")
            data, name = local.read_bytes(), wanted
        else:
            found = next((m for m in members(name, data, folder) if m.step == step and m.read() is not None), None)
            payload = found.read() if found is not None else None
            if found is None or payload is None:
                raise InputError(f"{os.path.basename(name)} no longer holds {step!r}")
            data, name = payload, found.name
        folder = None  # only the file on disk has a folder beside it
    return name, data


# Members extracted for a reader that needs a file (a video decoder, the server's file responses), by
# (file, size, mtime, member) -> the cached copy; each copy is named by its content's SHA-256.
_EXTRACTED: OrderedDict[tuple, Path] = OrderedDict()
_EXTRACTED_LOCK = threading.Lock()
EXTRACTED_ENTRIES = 1024


def extracted(path: str | os.PathLike, member: str) -> Path:
    """A file holding ``member`` of the file at ``path``: ``<cache>/members/<sha256><suffix>``."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, member)
    with _EXTRACTED_LOCK:
        known = _EXTRACTED.get(key)
    if known is not None and known.is_file():
        return known
    name, data = member_bytes(path, member)
    return _remember(key, store_bytes(data, Path(name).suffix.lower()))


def store_bytes(data: bytes, suffix: str) -> Path:
    """``data`` as a file in the cache, named by its SHA-256 (written once, atomically)."""
    target = cache_path("members", f"{hashlib.sha256(data).hexdigest()}{suffix[:16]}")
    if target.is_file() and target.stat().st_size == len(data):
        return target
    return write_atomically(target, data)


def _remember(key: tuple, path: Path) -> Path:
    with _EXTRACTED_LOCK:
        _EXTRACTED[key] = path
        while len(_EXTRACTED) > EXTRACTED_ENTRIES:
            _EXTRACTED.popitem(last=False)
    return path
