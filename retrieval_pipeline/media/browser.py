"""Web pages rendered as pages (``index --render-html``): Chromium, driven by Playwright, prints the page to PDF and
its pages go the PDF way (images at the embedder's budget, text layer, highlights).

Rendering runs the page's scripts (that is what asking for it means), so the page gets no network and no files:
it is loaded from a made-up origin (``http://page.invalid/``) whose only answers are the page itself and the files
beside it in its own folder (the images a saved page keeps next to it); every other request -- the internet,
``127.0.0.1``, ``file://`` (which Chromium refuses to an http page anyway) -- is aborted. The PDF is kept in the
cache by the page's SHA-256, as office documents' are."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InputError
from ..settings import env
from .cache import cache_path, cached_or_made
from .web import page_asset

logger = logging.getLogger(__name__)

ORIGIN = "http://page.invalid"
# One page may take at most this long to load and print (seconds; ``$QWEN3VL_RAG_RENDER_TIMEOUT``).
RENDER_TIMEOUT = 60.0
INSTALL_HINT = (
    "--render-html needs Chromium and Playwright (apt-get install chromium; pip install playwright; or set "
    "$QWEN3VL_RAG_CHROMIUM to a Chromium executable)"
)


def chromium() -> str | None:
    """The Chromium executable: ``$QWEN3VL_RAG_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on the PATH."""
    given = env("CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render_html_pdf(data: bytes, folder: Path | None, *, timeout: float | None = None) -> bytes:
    """The page (its bytes; ``folder``: where it lies, for the files beside it) printed to PDF by Chromium."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    program = chromium()
    if program is None:
        raise InputError(INSTALL_HINT)
    limit = timeout or float(env("RENDER_TIMEOUT", str(RENDER_TIMEOUT)) or RENDER_TIMEOUT)

    def answer(route) -> None:  # noqa: ANN001 - Playwright's Route
        url = urlparse(route.request.url)
        if f"{url.scheme}://{url.netloc}" != ORIGIN:
            logger.debug("rendering a web page: blocked a request for %s", route.request.url[:200])
            route.abort("blockedbyclient")
            return
        path = unquote(url.path).lstrip("/")
        if path == "index.html":
            route.fulfill(status=200, body=data, content_type="text/html")
            return
        local = page_asset(folder, path) if folder is not None else None
        if local is None:
            route.fulfill(status=404, body=b"")
            return
        kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
        route.fulfill(status=200, body=local.read_bytes(), content_type=kind)

    try:
        with sync_playwright() as p:  # a private, temporary browser profile (Playwright's)
            browser = p.chromium.launch(
                executable_path=program,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                timeout=limit * 1000,
            )
            try:
                context = browser.new_context(java_script_enabled=True, accept_downloads=False)
                context.route("**/*", answer)
                page = context.new_page()
                page.set_default_timeout(limit * 1000)
                page.goto(f"{ORIGIN}/index.html", wait_until="load")
                return page.pdf(format="A4", print_background=True)
            finally:
                with contextlib.suppress(Exception):
                    browser.close()
    except PlaywrightError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"Chromium could not render the page: {text[:200]}") from None


def rendered_pdf(data: bytes, folder: Path | None, digest: str) -> Path:
    """The cached PDF of a rendered page (rendered now if not cached): ``<cache>/documents/<sha256>.html.pdf``."""
    return cached_or_made(cache_path("documents", f"{digest}.html.pdf"), lambda: render_html_pdf(data, folder))
