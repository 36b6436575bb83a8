"""Web pages: the main text (trafilatura, the maintained extractor; its plain-text baseline when it finds no main
part) and the page's own images (``<img>`` sources: files beside the page, ``data:`` URIs, the parts of an MHTML
archive). Nothing of the page runs: it is parsed, never loaded in a browser, and nothing is fetched for it --
images on other hosts are left out (named in the log), so indexing a saved page does not call home."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InputError

logger = logging.getLogger(__name__)

HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
MHTML_EXTENSIONS = {".mhtml", ".mht"}
# At most this many images of one page are indexed (the first ones, in document order).
MAX_PAGE_IMAGES = 64
# Pages larger than this are not parsed (lxml builds the whole tree).
MAX_HTML_BYTES = 32 * 1024 * 1024
IMAGE_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
}


@dataclass
class WebPage:
    """A parsed page: its title, main text, and its images as (member step, name, bytes or the reason none)."""

    title: str
    text: str
    images: list[tuple[str, str, bytes | None, str | None]] = field(default_factory=list)


def page_text(html: bytes | str) -> tuple[str, str]:
    """(title, main text) of an HTML page. An empty page is an :class:`InputError`."""
    import trafilatura
    from lxml import html as lxml_html

    if len(html) > MAX_HTML_BYTES:
        raise InputError(f"web page too large: {len(html)} bytes (limit {MAX_HTML_BYTES})")
    try:
        tree = lxml_html.fromstring(html)
    except Exception as exc:  # noqa: BLE001 - lxml's ParserError, empty documents, ...
        raise InputError(f"not an HTML page: {exc}") from None
    title = " ".join((tree.findtext(".//title") or "").split())
    text = trafilatura.extract(tree, favor_recall=True, include_tables=True, include_comments=False) or ""
    if not text.strip():  # a short or unusual page: the baseline extraction (every visible text)
        text = trafilatura.html2txt(html) or ""
    text = text.strip()
    if not text and not title:
        raise InputError("the web page has no text")
    return title, text


def _image_sources(html: bytes | str) -> list[str]:
    from lxml import html as lxml_html

    try:
        tree = lxml_html.fromstring(html)
    except Exception:  # noqa: BLE001 - page_text reported it
        return []
    sources = []
    for img in tree.iter("img"):
        src = (img.get("src") or "").strip()
        if src and src not in sources:
            sources.append(src)
    return sources


def read_html(data: bytes, folder: Path | None) -> WebPage:
    """A saved web page: its text, and its images -- ``data:`` URIs, and files under ``folder`` (the page's own
    folder; None for a page inside a mail or an archive, whose relative images are not files)."""
    title, text = page_text(data)
    page = WebPage(title, text)
    inline = 0
    for src in _image_sources(data)[:MAX_PAGE_IMAGES]:
        if src.startswith("data:"):
            inline += 1
            name = f"inline-{inline}{_data_suffix(src)}"
            try:
                page.images.append((f"image={name}", name, _data_uri(src), None))
            except InputError as exc:
                page.images.append((f"image={name}", name, None, str(exc)))
            continue
        parsed = urlparse(src)
        if parsed.scheme and parsed.scheme != "file" or parsed.netloc:
            logger.debug("web page image on another host left out (nothing is fetched): %s", src[:120])
            continue
        if folder is None:
            continue
        relative = unquote(parsed.path)
        name = relative.lstrip("/")
        local = local_image(folder, relative)
        if local is None:
            page.images.append((f"image={name}", name, None, "not a file beside the page"))
            continue
        page.images.append((f"image={name}", name, local.read_bytes(), None))
    return page


def local_image(folder: Path, relative: str) -> Path | None:
    """``relative`` (an ``<img src>``) as a file under ``folder``, or None: a path out of the folder, a missing file."""
    if not relative or relative.startswith("/") or "\x00" in relative:
        return None
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        return None
    return Path(path)


def inline_image(data: bytes, name: str) -> bytes:
    """The ``data:`` image a page calls ``inline-N.ext`` (its N-th, in document order)."""
    match = re.fullmatch(r"inline-(\d+)(\.\w+)?", name)
    if match:
        inline = [s for s in _image_sources(data)[:MAX_PAGE_IMAGES] if s.startswith("data:")]
        n = int(match.group(1))
        if 1 <= n <= len(inline):
            return _data_uri(inline[n - 1])
    raise InputError(f"the page has no image {name!r} (it changed since it was indexed)")


def _data_suffix(uri: str) -> str:
    kind = uri[5:].split(";", 1)[0].split(",", 1)[0].lower()
    return IMAGE_TYPES.get(kind, ".img")


def _data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or ";base64" not in header or not header.startswith("data:image/"):
        raise InputError("not a base64 image data URI")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64 in a data URI: {exc}") from None
    if not data:
        raise InputError("empty data URI")
    return data


def read_mhtml(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """An MHTML archive (a page saved by a browser as one file): (the HTML, its other parts as (name, bytes))."""
    from .containers import decoded_payload

    message = email.message_from_bytes(data, policy=email.policy.default)
    html: bytes | None = None
    parts: list[tuple[str, bytes]] = []
    used: set[str] = set()
    for n, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        payload = decoded_payload(part)
        kind = part.get_content_type()
        if kind == "text/html" and html is None:
            html = payload
            continue
        if not kind.startswith("image/"):
            continue
        location = str(part.get("Content-Location") or "")
        name = os.path.basename(urlparse(location).path) or f"part-{n}{IMAGE_TYPES.get(kind, '.img')}"
        parts.append((unique_name(name, used), payload))
    if html is None:
        raise InputError("not an MHTML page: no text/html part")
    return html, parts


def unique_name(name: str, used: set[str]) -> str:
    """``name`` made safe as one step of a member path (no separators) and unique among ``used`` (which it joins)."""
    name = re.sub(r"[#/\\\x00-\x1f]", "_", name).strip() or "unnamed"
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{stem} ({n}){suffix}"
    used.add(candidate)
    return candidate


def mhtml_parts(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield from read_mhtml(data)[1]
