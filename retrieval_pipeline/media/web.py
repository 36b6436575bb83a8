"""Web pages: the main text (trafilatura, the maintained extractor; its plain-text baseline when it finds no main
part) and the page's own images (``<img>`` sources: files beside the page, ``data:`` URIs, the parts of an MHTML
archive). Nothing of the page runs: it is parsed, never loaded in a browser, and nothing is fetched for it --
images on other hosts are left out (named in the log), so indexing a saved page does not call home."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InputError

logger = logging.getLogger(__name__)

HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
MHTML_EXTENSIONS = {".mhtml", ".mht"}
# At most this many images of one page are indexed (the first ones, in document order; the rest are counted and
# reported), each file beside the page at most MAX_PAGE_IMAGE_BYTES.
MAX_PAGE_IMAGES = 64
MAX_PAGE_IMAGE_BYTES = 64 * 1024 * 1024
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
class WebImage:
    """One image of a page: its member step, its name, and its bytes (a ``data:`` URI) or the file beside the page
    that holds them (``path``, read when its turn comes) -- or why it cannot be read."""

    step: str
    name: str
    data: bytes | None = None
    error: str | None = None
    path: Path | None = None


@dataclass
class WebPage:
    """A parsed page: its title, main text, its images, and how many more images it names than are read."""

    title: str
    text: str
    images: list[WebImage] = field(default_factory=list)
    left_out: int = 0


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
    """A saved web page: its text, and its images -- ``data:`` URIs, and image files under ``folder`` (the page's
    own folder; None for a page inside a mail or an archive, whose relative images are not files). At most
    MAX_PAGE_IMAGES; each file beside the page once, whatever its spellings (``a.png``, ``./a.png``, ``a.png?1``)."""
    title, text = page_text(data)
    page = WebPage(title, text)
    inline = 0
    seen: set[str] = set()
    for src in _image_sources(data):
        if len(page.images) >= MAX_PAGE_IMAGES:
            page.left_out += 1
            continue
        if src.startswith("data:"):
            inline += 1
            name = f"{inline}{_data_suffix(src)}"
            try:
                page.images.append(WebImage(f"inline={name}", f"inline-{name}", _data_uri(src)))
            except InputError as exc:
                page.images.append(WebImage(f"inline={name}", f"inline-{name}", error=str(exc)))
            continue
        parsed = urlparse(src)
        if parsed.scheme and parsed.scheme != "file" or parsed.netloc:
            logger.debug("web page image on another host left out (nothing is fetched): %s", src[:120])
            continue
        if folder is None:
            continue
        relative = unquote(parsed.path)
        local = local_image(folder, relative)
        step = f"image={escape_step(relative.lstrip('/'))}"
        if local is None:
            page.images.append(WebImage(step, relative, error="not an image file beside the page"))
            continue
        if os.fspath(local) in seen:
            continue
        seen.add(os.fspath(local))
        size = local.stat().st_size
        if size > MAX_PAGE_IMAGE_BYTES:
            why = f"image too large: {size} bytes (limit {MAX_PAGE_IMAGE_BYTES})"
            page.images.append(WebImage(step, relative, error=why))
            continue
        page.images.append(WebImage(step, relative, path=local))
    return page


def escape_step(name: str) -> str:
    """A name as one step of a member path: ``#`` separates steps, so it (and ``%``) is escaped."""
    return name.replace("%", "%25").replace("#", "%23")


def unescape_step(step: str) -> str:
    return step.replace("%23", "#").replace("%25", "%")


def local_image(folder: Path, relative: str) -> Path | None:
    """``relative`` (an ``<img src>``) as an image file under ``folder``, or None (see :func:`_beside`)."""
    from .inputs import IMAGE_EXTENSIONS

    return _beside(folder, relative, IMAGE_EXTENSIONS)


def _beside(folder: Path, relative: str, suffixes: set[str]) -> Path | None:
    """``relative`` as a file under ``folder`` whose name ends in one of ``suffixes``, or None: a path out of the
    folder (links followed), a hidden one, a missing file, a file of another type."""
    if not relative or relative.startswith("/") or "\x00" in relative:
        return None
    if any(part.startswith(".") and part not in (".", "..") for part in Path(relative).parts):
        return None
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        return None
    return Path(path) if Path(path).suffix.lower() in suffixes else None


def inline_image(data: bytes, name: str) -> bytes:
    """The ``data:`` image a page calls ``inline=N.ext`` (its N-th, in document order)."""
    match = re.fullmatch(r"(\d+)(\.\w+)?", name)
    if match:
        inline = [s for s in _image_sources(data) if s.startswith("data:")]
        n = int(match.group(1))
        if 1 <= n <= len(inline):
            return _data_uri(inline[n - 1])
    raise InputError(f"the page has no image {name!r} (it changed since it was indexed)")


def _data_suffix(uri: str) -> str:
    kind = uri[5:].split(";", 1)[0].split(",", 1)[0].lower()
    return IMAGE_TYPES.get(kind, ".img")


def _data_uri(uri: str) -> bytes:
    """A page's ``data:`` image (base64 as pages write it: line breaks and spaces allowed)."""
    from .inputs import decode_data_uri

    return decode_data_uri(uri, strict=False)


def read_mhtml(data: bytes) -> tuple[bytes, list[tuple[str, bytes]], int]:
    """An MHTML archive (a page saved by a browser as one file): (the HTML, its image parts as (name, bytes), how
    many more image parts there are than the MAX_PAGE_IMAGES read)."""
    from .containers import decoded_payload

    message = email.message_from_bytes(data, policy=email.policy.default)
    html: bytes | None = None
    parts: list[tuple[str, bytes]] = []
    left_out = 0
    used: set[str] = set()
    for n, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind == "text/html" and html is None:
            html = decoded_payload(part)
            continue
        if not kind.startswith("image/"):
            continue
        if len(parts) >= MAX_PAGE_IMAGES:
            left_out += 1
            continue
        payload = decoded_payload(part)
        location = str(part.get("Content-Location") or "")
        name = os.path.basename(urlparse(location).path) or f"part-{n}{IMAGE_TYPES.get(kind, '.img')}"
        parts.append((unique_name(name, used), payload))
    if html is None:
        raise InputError("not an MHTML page: no text/html part")
    return html, parts, left_out


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


# What the renderer serves from a page's folder: its images, style sheets, scripts and fonts (a saved page's
# ``page_files/``), nothing else (a script reading the page's neighbours could print them into the page).
PAGE_ASSETS = {".css", ".js", ".mjs", ".woff", ".woff2", ".ttf", ".otf"}


def page_asset(folder: Path, relative: str) -> Path | None:
    """A file the renderer may serve from beside the page (an image, or one of PAGE_ASSETS), or None."""
    from .inputs import IMAGE_EXTENSIONS

    return _beside(folder, relative, IMAGE_EXTENSIONS | PAGE_ASSETS)
