"""The search page at ``/``: plain HTML, CSS and JavaScript shipped in the package (no build step, nothing fetched
at run time, works offline). The shell is public -- it holds no data and asks for the token once when the server
has one; every call it makes (search, chat, thumbnails, media) carries the token in the Authorization header.
A strict Content-Security-Policy allows only the page's own script and style, images and video from this origin
or from blob URLs, and no inline code: corpus text and file names are rendered as text only."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(tags=["page"], include_in_schema=False)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8", "app.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    if name not in FILES:
        raise HTTPException(404, "not found")
    data = resources.files("retrieval_pipeline.serving").joinpath("static", name).read_bytes()
    return Response(data, media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return _file(name)
