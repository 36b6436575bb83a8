"""Files that hold other files -- mail (``.eml``) with attachments, ``.zip`` archives, MHTML pages, web pages with
their images -- and the *member paths* that name what is inside: ``attachment=report.pdf``,
``entry=docs/plan.docx``, ``part=logo.png``, ``image=img/chart.png``, chained with ``#`` for a member of a member
(``attachment=bundle.zip#entry=a.pdf``). A point read from a member keeps its file as ``source`` (so the file's
bookkeeping -- changed, deleted, pruned -- covers its members) and the path as ``member``; it is shown as
``mail.eml#attachment=report.pdf``.

Archives are read within bounds checked before anything is inflated (entries, declared sizes, compression ratio,
total) and again while reading (a header may lie); mail and archives nest at most :data:`MAX_DEPTH` deep."""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import io
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import cache_dir
from . import web

MAIL_EXTENSIONS = {".eml"}
ARCHIVE_EXTENSIONS = {".zip"}
# Members inside members inside the file: at most this deep (a zip in a mail in a zip is depth 3).
MAX_DEPTH = 3
# One archive: at most this many entries, each at most MAX_MEMBER_BYTES and at most MAX_RATIO times its compressed
# size, all together at most MAX_EXPANDED_BYTES (what a zip bomb needs to exceed).
MAX_ENTRIES = 10_000
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200
RATIO_FLOOR = 1024 * 1024  # the ratio counts for entries above this size (a small, repetitive file is no bomb)
MAX_EXPANDED_BYTES = 2 * 1024 * 1024 * 1024
# Mail: at most this many attachments.
MAX_ATTACHMENTS = 1000


@dataclass
class Member:
    """One file inside another: its step (``attachment=NAME``), its name, and its bytes -- or why it cannot be
    read (an encrypted entry, one over the limits): that member fails alone."""

    step: str
    name: str
    data: bytes | None
    error: str | None = None


@dataclass
class Mail:
    headers: dict[str, str]
    body: str
    members: list[Member] = field(default_factory=list)


def is_container(name: str) -> bool:
    suffix = Path(name).suffix.lower()
    return suffix in MAIL_EXTENSIONS | ARCHIVE_EXTENSIONS | web.MHTML_EXTENSIONS


# ----------------------------------------------------------------------------------------------------------------
# mail


def read_mail(data: bytes) -> Mail:
    """An RFC 822 message: headers (from, to, cc, date, subject), the body as text (an HTML body through the web
    page extractor) and each attachment as a member (a forwarded message is an ``.eml`` member)."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not (message.keys() or message.get_payload()):
        raise InputError("not an e-mail message")
    if not any(message.get(h) for h in ("From", "To", "Subject", "Date", "Message-ID")):
        raise InputError("not an e-mail message: none of From, To, Subject, Date, Message-ID")
    headers = {}
    for key in ("from", "to", "cc", "date", "subject"):
        value = message.get(key)
        if value:
            headers[key] = " ".join(str(value).split())
    body = ""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is not None:
        content = _content(part)
        if part.get_content_type() == "text/html":
            with contextlib.suppress(InputError):
                body = web.page_text(content.encode("utf-8") if isinstance(content, str) else content)[1]
        else:
            body = content if isinstance(content, str) else content.decode("utf-8", "replace")
    mail = Mail(headers, body.strip())
    used: set[str] = set()
    for n, attachment in enumerate(message.iter_attachments(), 1):
        if n > MAX_ATTACHMENTS:
            mail.members.append(Member("attachment=…", "…", None, f"more than {MAX_ATTACHMENTS} attachments"))
            break
        kind = attachment.get_content_type()
        name = attachment.get_filename() or (f"message-{n}.eml" if kind == "message/rfc822" else f"attachment-{n}")
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
    return mail


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


def zip_members(data: bytes) -> Iterator[Member]:
    """The files of a ZIP archive, in archive order, within the bounds (entries, ratio, sizes) checked from the
    central directory before anything is inflated and again while inflating. Folders, macOS resource forks and
    hidden entries are left out; an encrypted or oversized entry fails alone."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise InputError(f"not a readable ZIP archive: {exc}") from None
    if len(infos) > MAX_ENTRIES:
        raise InputError(f"archive has {len(infos)} entries (limit {MAX_ENTRIES})")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_EXPANDED_BYTES:
        raise InputError(f"archive expands to {declared} bytes (limit {MAX_EXPANDED_BYTES}): refused as a zip bomb")
    total = 0
    used: set[str] = set()
    with archive:
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts if p):
                continue
            shown = "/".join(p for p in parts if p and p != "..")
            step_name = web.unique_name(shown.replace("/", "\u2215"), used).replace("\u2215", "/")
            step = f"entry={step_name}"
            if info.flag_bits & 0x1:
                yield Member(step, step_name, None, "encrypted archive entry (no password is tried)")
                continue
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > MAX_MEMBER_BYTES or (ratio > MAX_RATIO and info.file_size > RATIO_FLOOR):
                why = (
                    f"{info.file_size} bytes" if info.file_size > MAX_MEMBER_BYTES else f"compression ratio {ratio:.0f}"
                )
                yield Member(step, step_name, None, f"archive entry refused as a zip bomb ({why})")
                continue
            try:
                payload = _read_entry(archive, info, min(MAX_MEMBER_BYTES, MAX_EXPANDED_BYTES - total))
            except InputError as exc:
                yield Member(step, step_name, None, str(exc))
                continue
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as exc:
                yield Member(step, step_name, None, f"unreadable archive entry: {exc}")
                continue
            total += len(payload)
            yield Member(step, step_name, payload)


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes, never more than ``limit`` nor the size its header declares (checked against the bounds
    before: a header that lies about the size is caught here, before the rest is inflated)."""
    bound = min(limit, info.file_size)
    out = bytearray()
    with archive.open(info) as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            out += block
            if len(out) > bound:
                raise InputError("archive entry inflates beyond its declared bounds: refused as a zip bomb")
    return bytes(out)


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
        for step, image_name, image, error in web.read_html(data, folder).images:
            yield Member(step, image_name, image, error)
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
        if kind == "image" and wanted.startswith("inline-"):
            data, name = web.inline_image(data, wanted), wanted
        elif kind == "image":
            local = web.local_image(folder, wanted) if folder is not None else None
            if local is None:
                raise InputError(f"the page's image {wanted!r} is no longer beside it")
            data, name = local.read_bytes(), wanted
        else:
            found = next((m for m in members(name, data) if m.step == step and m.data is not None), None)
            if found is None or found.data is None:
                raise InputError(f"{os.path.basename(name)} no longer holds {step!r}")
            data, name = found.data, found.name
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
    folder = cache_dir() / "members"
    target = folder / f"{hashlib.sha256(data).hexdigest()}{suffix[:16]}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return target


def _remember(key: tuple, path: Path) -> Path:
    with _EXTRACTED_LOCK:
        _EXTRACTED[key] = path
        while len(_EXTRACTED) > EXTRACTED_ENTRIES:
            _EXTRACTED.popitem(last=False)
    return path
