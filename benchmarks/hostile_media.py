"""Small files that decode to a lot, and requests that ask for a lot: the inputs of issue 10 (findings 10 and 11).

Each generator writes a real file (PyAV for videos, pypdfium2 for PDFs, Pillow for images) and returns its path;
the request builders return JSON bodies for ``qwen3vl-rag serve``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_video(path: Path, width: int, height: int, seconds: float, fps: int = 2) -> Path:
    """An H.264 MP4 of a small moving square on grey: megapixel frames, a few hundred KB."""
    import av

    if path.exists():
        return path
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "40"}
        frame = np.full((height, width, 3), 96, dtype=np.uint8)
        side = max(16, height // 20)
        for i in range(int(seconds * fps)):
            frame[:] = 96
            x = (i * side) % (width - side)
            frame[height // 2 : height // 2 + side, x : x + side] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_pdf(path: Path, pages: int, points: float) -> Path:
    """A PDF of ``pages`` blank square pages of ``points`` x ``points`` pt (1 KB per page or so)."""
    import pypdfium2 as pdfium

    if path.exists():
        return path
    pdf = pdfium.PdfDocument.new()
    for _ in range(pages):
        pdf.new_page(points, points)
    pdf.save(str(path))
    pdf.close()
    return path


def png_bytes(width: int, height: int, mode: str = "L") -> bytes:
    """A flat PNG (compresses to almost nothing whatever its size); mode 'I;16' for a 16-bit one."""
    if mode == "I;16":
        img = Image.fromarray(np.zeros((height, width), dtype=np.uint16))
    else:
        img = Image.new(mode, (width, height), 128)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def requests_of_finding_10() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (route, JSON body): each measured above 6 GiB on version 0.1."""
    small = data_uri(png_bytes(1024, 768))
    big = data_uri(png_bytes(4000, 3000))
    frame = data_uri(png_bytes(640, 480))
    sixteen = data_uri(png_bytes(9000, 9000, "I;16"))
    return {
        "rerank: image query, 160 text documents": (
            "/v1/rerank",
            {"query": {"image": small, "text": "what is shown?"}, "documents": [f"document {i}" for i in range(160)]},
        ),
        "embeddings: one input with 80 images": ("/v1/embeddings", {"input": [{"image": [big] * 80}]}),
        "embeddings: a 400-frame frame list": ("/v1/embeddings", {"input": [{"video": [frame] * 400}]}),
        "embeddings: a 30 MB text": ("/v1/embeddings", {"input": ["word " * 6_000_000]}),
        "search: a 16-bit 9000x9000 PNG query": ("/v1/search", {"query": {"image": sixteen}, "top_k": 3}),
        "embeddings: a 2-million-entry text list": ("/v1/embeddings", {"input": ["a"] * 2_000_000}),
    }
