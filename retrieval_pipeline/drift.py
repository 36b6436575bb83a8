"""Drift check against any engine: does a server that says it runs Qwen3-VL-Embedding / -Reranker give this
library's numbers? :func:`check_engine` sends a built-in probe set (:func:`build_probes`: texts in eight
languages, a generated image, an image with text, a short video, a rendered PDF page, on the query side with the
retrieval instruction and on the document side with the model's default one; rerank pairs of every modality mix)
to a server speaking the OpenAI / vLLM / Cohere embedding and rerank dialects, computes the same probes with the
local models, and compares them probe by probe: the cosine of the two embeddings, the difference of the two rerank
scores, each against :class:`Bounds`. ``qwen3vl-rag check-engine URL`` is the command line's face of it.

What an engine gets wrong shows up by name: an engine that resizes images otherwise fails the image, page and
video probes; one that drops the query instruction fails the query probes and no document probe; a wrong chat
template or pooling fails all of them.

Every probe is generated in code (no file of the package is read), and both sides get the same bytes: images as
PNG data URIs, the video as an MPEG-4 data URI (PyAV; without it, a list of PNG frames, which only this project's
dialect carries), the PDF page as the image the indexer makes of it (rendered at the indexer's resolution).
"""

from __future__ import annotations

import fnmatch
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .client import (
    TIMEOUT,
    RemoteServer,
    embeddings_body,
    embeddings_of,
    error_body,
    rerank_body,
    scores_of,
    wire_input,
)
from .errors import ModelLoadError, UsageError

DIALECTS = ("openai", "vllm", "cohere")
# Where each dialect sends embeddings and rerank requests (vLLM serves /v1/rerank too; /rerank is its own).
EMBED_PATHS = {"openai": "/v1/embeddings", "vllm": "/v1/embeddings", "cohere": "/v2/embed"}
RERANK_PATHS = {"openai": "/v1/rerank", "vllm": "/rerank", "cohere": "/v2/rerank"}
MATRYOSHKA_DIM = 256  # the dimension the truncation probes ask for (half the model's width when that is smaller)


@dataclass(frozen=True)
class Bounds:
    """How far an engine's answers may be from the local models' and still count as the same model.

    ``cosine_distance``: at most this 1 - cosine(remote, local) for each embedding; ``score``: at most this
    absolute difference of rerank scores (the 0..1 relevance score, the sigmoid of the yes / no logit).

    :data:`FLOAT32` (1e-4 / 1e-3) is for an engine computing in float32 against the local float32 reference.
    Measured (CPU, the tests' tiny checkpoint): this project's own ``serve`` is within 1.4e-7 of 1 - cosine and
    3e-7 of score (batching and padding change the order of the sums, nothing else). What a bound must catch is
    orders of magnitude above: the tests' wrong servers measure 1 - cosine of 0.26 to 0.74 on the image, image+text
    and page probes for an engine that shrinks images to 64 x 64, and 0.03 to 0.34 on every query probe for one
    that drops the instruction. The bounds leave another engine's float32 kernels (fused attention, TF32
    convolutions on a GPU) two to three orders of magnitude of room above the measured rounding, and a changed
    computation two orders below what it measured.

    :data:`BFLOAT16` (5e-3 / 5e-2) is for an engine computing in bfloat16 (vLLM's and most GPU servers' default)
    against the float32 reference: bfloat16 keeps 8 bits of mantissa, and its rounding accumulates over the layers.
    Measured on the tiny checkpoint (few layers) in bfloat16 against itself in float32: 1 - cosine up to 2.7e-4,
    score differences up to 8.6e-3; a real checkpoint (28 or 36 layers) accumulates more, hence bounds an order of
    magnitude above. They still catch the wrong servers above on every probe they touch, but a bfloat16 check is
    coarser: compare a float32 engine where the choice is yours. (Note that the float32 bound on embeddings alone
    does not tell a bfloat16 engine from a float32 one: the tiny checkpoint's bfloat16 embeddings are mostly within
    it; its rerank scores are not.)
    """

    cosine_distance: float = 1e-4
    score: float = 1e-3

    def scaled(self, factor: float) -> Bounds:
        return Bounds(self.cosine_distance * factor, self.score * factor)


FLOAT32 = Bounds(cosine_distance=1e-4, score=1e-3)
BFLOAT16 = Bounds(cosine_distance=5e-3, score=5e-2)
TOLERANCES = {"float32": FLOAT32, "bfloat16": BFLOAT16}


def tolerance(text: str) -> Bounds:
    """``--tolerance``: a preset (``float32``, ``bfloat16``) or a factor that widens the float32 bounds."""
    if text.lower() in TOLERANCES:
        return TOLERANCES[text.lower()]
    try:
        factor = float(text)
    except ValueError:
        factor = math.nan
    if not math.isfinite(factor) or factor <= 0:
        raise UsageError(f"--tolerance takes {' or '.join(TOLERANCES)} or a positive factor, got {text!r}")
    return FLOAT32.scaled(factor)


class EngineError(ModelLoadError):
    """The engine cannot be reached, speaks none of the dialects, or answered a probe with an error: the message
    names the probe and gives the server's own. ``status``: the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------------------------
# the probe set


@dataclass(frozen=True)
class Probe:
    """One thing sent to the engine and to the local model. ``kind``: ``embed`` (``input`` on the ``side``
    ``query`` or ``document``, at Matryoshka ``dim`` when set) or ``rerank`` (``query`` against ``document``).
    Inputs are in wire form: strings, or the project's objects with media as data URIs."""

    name: str
    kind: str
    modality: str
    input: Any = None
    side: str = "document"
    dim: int | None = None
    query: Any = None
    document: Any = None


QUERY_TEXTS = {
    "en": "Which chart shows revenue growing in the third quarter?",
    "de": "Wo schläft die Katze am Nachmittag?",
    "zh": "哪张图表显示第三季度的收入增长？",
    "ja": "猫は午後どこで寝ていますか？",
    "ar": "أين تنام القطة بعد الظهر؟",
    "ru": "Где кошка спит после обеда?",
}
DOCUMENT_TEXTS = {
    "en": "Revenue grew by twelve percent in the third quarter, driven by sales of red bicycles.",
    "es": "El gato duerme en el sofá junto a la ventana por la tarde.",
    "hi": "बिल्ली दोपहर में खिड़की के पास सोफ़े पर सोती है।",
    "ko": "고양이는 오후에 창가 소파에서 잔다.",
}
CAPTION = "A red circle, a blue square and a green triangle above the words Q3 revenue +12%."
PAGE_TEXT = (
    "Quarterly report\nRevenue grew by twelve percent in the third quarter. The bar chart below shows the four "
    "quarters; the fourth bar is the tallest."
)


def probe_image(width: int = 320, height: int = 240) -> Any:
    """Shapes and text on white (a PIL image): colour, layout and small text, what a resize changes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 120, 120), fill=(220, 30, 30))
    draw.rectangle((150, 30, 240, 120), fill=(30, 60, 200))
    draw.polygon([(260, 120), (310, 120), (285, 40)], fill=(30, 160, 60))
    draw.text((20, 160), "Q3 revenue +12%", fill="black")
    draw.text((20, 190), "Katze / chat / gato", fill=(90, 90, 90))
    return image


def probe_frames(count: int = 16, width: int = 128, height: int = 96) -> list[Any]:
    """A red ball crossing a striped background from left to right."""
    from PIL import Image, ImageDraw

    frames = []
    for i in range(count):
        frame = Image.new("RGB", (width, height), (240, 240, 220))
        draw = ImageDraw.Draw(frame)
        for x in range(0, width, 16):
            draw.rectangle((x, 0, x + 7, height), fill=(200, 210, 230))
        cx = 12 + (width - 24) * i // max(count - 1, 1)
        draw.ellipse((cx - 10, height // 2 - 10, cx + 10, height // 2 + 10), fill=(210, 20, 20))
        frames.append(frame)
    return frames


def probe_video(folder: Path, fps: int = 4) -> Any:
    """The video probe as it travels: an MPEG-4 file's data URI (4 s at 4 fps), or without PyAV the frames."""
    frames = probe_frames()
    try:
        import av
    except ImportError:  # pragma: no cover - av is installed with the dev extras
        return wire_input({"video": frames})["video"]
    path = folder / "probe.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    return wire_input({"video": path})["video"]


def probe_page(folder: Path) -> Any:
    """A one-page PDF with text and a bar chart, rendered as the indexer renders a page (its DPI and pixel cap):
    a ``pdf-page`` item's model input."""
    from .media.pdf import PDF_DPI, PDF_MAX_PIXELS, render_pdf_page
    from .testing import make_text_pdf

    pdf = make_text_pdf(folder / "probe.pdf", [PAGE_TEXT])
    return render_pdf_page(pdf, 1, PDF_DPI, max_pixels=PDF_MAX_PIXELS)


@lru_cache(maxsize=1)
def _media() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qwen3vl-rag-probes-") as tmp:
        return {
            "image": wire_input(probe_image())["image"],
            "video": probe_video(Path(tmp)),
            "page": wire_input(probe_page(Path(tmp)))["image"],
        }


def build_probes(dim: int | None = None) -> list[Probe]:
    """The probe set: query-side texts (six languages), an image and an image with a question; document-side
    texts (four more languages), the image, the image with its caption, the video and the PDF page; with ``dim``
    a query text and the image again at that Matryoshka dimension; and rerank pairs text-text (also across
    languages), text-image, text-image+text, text-video, text-page, image-text and image-image."""
    media = _media()
    image, video, page = media["image"], media["video"], media["page"]
    probes = [Probe(f"q-text-{lang}", "embed", f"text ({lang})", text, "query") for lang, text in QUERY_TEXTS.items()]
    probes += [
        Probe("q-image", "embed", "image", {"image": image}, "query"),
        Probe("q-image-text", "embed", "image+text", {"image": image, "text": "What shape is red?"}, "query"),
    ]
    probes += [Probe(f"d-text-{lang}", "embed", f"text ({lang})", text) for lang, text in DOCUMENT_TEXTS.items()]
    probes += [
        Probe("d-image", "embed", "image", {"image": image}),
        Probe("d-image-text", "embed", "image+text", {"image": image, "text": CAPTION}),
        Probe("d-video", "embed", "video", {"video": video}),
        Probe("d-pdf-page", "embed", "pdf-page", {"image": page}),
    ]
    if dim:
        probes += [
            Probe(f"q-text-en@{dim}", "embed", "text (en)", QUERY_TEXTS["en"], "query", dim),
            Probe(f"d-image@{dim}", "embed", "image", {"image": image}, "document", dim),
        ]
    pairs = [
        ("text-text", "text/text", "Where does the cat sleep?", "The cat sleeps on the sofa by the window."),
        ("text-text-de", "text/text (en/de)", "Where does the cat sleep?", "Die Katze schläft auf dem Sofa."),
        ("text-image", "text/image", "a red circle next to a blue square", {"image": image}),
        ("text-image-text", "text/image+text", "revenue in the third quarter", {"image": image, "text": CAPTION}),
        ("text-video", "text/video", "a red ball rolling from left to right", {"video": video}),
        ("text-pdf-page", "text/pdf-page", "quarterly revenue bar chart", {"image": page}),
        ("image-text", "image/text", {"image": image}, CAPTION),
        ("image-image", "image/image", {"image": image}, {"image": image}),
    ]
    probes += [Probe(f"rr-{name}", "rerank", modality, query=q, document=d) for name, modality, q, d in pairs]
    return probes


# ------------------------------------------------------------------------------------------------------------------
# the engine


def content_parts(item: Any) -> list[dict[str, Any]]:
    """A wire input as OpenAI / vLLM content parts in the model's order: video, image, text (as the local model
    builds its prompt, so an engine that renders the parts in the order given sees the same prompt)."""
    if isinstance(item, str):
        return [{"type": "text", "text": item}]
    parts: list[dict[str, Any]] = []
    for key, kind in (("video", "video_url"), ("image", "image_url")):
        value = item.get(key)
        if key == "video" and isinstance(value, list):
            raise _NotCarried("a video as a list of frames travels only in this project's dialect (install av)")
        if value is not None:
            parts.append({"type": kind, kind: {"url": value}})
    if item.get("text"):
        parts.append({"type": "text", "text": item["text"]})
    return parts


class _NotCarried(Exception):
    """A probe the dialect cannot express (it is skipped, with this reason)."""


class Engine(RemoteServer):
    """A server under test: ``embed`` / ``score`` send one probe in the ``dialect`` (:meth:`detect` finds it)."""

    def __init__(
        self, url: str, *, dialect: str | None = None, api_key: str | None = None, model: str | None = None, **kw: Any
    ) -> None:
        super().__init__(url, api_key=api_key, model=model, **kw)
        self.dialect = dialect

    def call(self, probe: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST path``; a failure is an :class:`EngineError` naming the probe and quoting the server."""
        try:
            response = self._send(path, body)
        except ModelLoadError as exc:
            raise EngineError(f"probe {probe}: {exc}") from None
        if response.status_code >= 400:
            message = error_body(response).get("message", "")
            raise EngineError(
                f"probe {probe}: the server {self.base_url} answered POST {path} with {response.status_code}: "
                f"{message}",
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"probe {probe}: POST {path} did not answer JSON: {response.text[:200]!r}") from None

    def detect(self, kind: str) -> str | None:
        """The dialect the server speaks for ``kind`` (``embed`` or ``rerank``): this project's OpenAI dialect
        (multimodal objects in ``input``) first, then vLLM's (``messages``; ``/rerank``), then Cohere v2. None:
        every dialect's route is missing (404 / 405), the server does not serve ``kind``."""
        attempts: list[tuple[str, str, dict[str, Any]]]
        if kind == "embed":
            attempts = [
                ("openai", "/v1/embeddings", {"input": [{"text": "dialect probe"}]}),
                ("vllm", "/v1/embeddings", {"messages": [{"role": "user", "content": "dialect probe"}]}),
                ("cohere", "/v2/embed", {"texts": ["dialect probe"], "embedding_types": ["float"]}),
            ]
        else:
            doc = {"content": [{"type": "text", "text": "dialect probe"}]}
            attempts = [
                ("openai", "/v1/rerank", {"query": "dialect probe", "documents": [{"text": "dialect probe"}]}),
                ("vllm", "/rerank", {"query": "dialect probe", "documents": [doc]}),
                ("cohere", "/v2/rerank", {"query": "dialect probe", "documents": ["dialect probe"]}),
            ]
        refused: list[EngineError] = []
        for dialect, path, body in attempts:
            try:
                self.call(f"{kind} dialect", path, {**body, **({"model": self.model} if self.model else {})})
                return dialect
            except EngineError as exc:
                if exc.status in (401, 403) or exc.status is None:  # a wrong key, no server: said as it is
                    raise
                refused.append(exc)
        if all(exc.status in (404, 405) for exc in refused):
            return None
        said = "; ".join(str(exc).split(": ", 1)[1] for exc in refused)
        raise EngineError(f"the server speaks none of the {kind} dialects: {said}", status=refused[-1].status)

    def embed(self, probe: Probe, instruction: str) -> np.ndarray:
        """``probe``'s embedding from the engine; ``instruction``: the one the local model uses for its side."""
        query = probe.side == "query"
        if self.dialect == "openai":  # the instruction in this project's extension field, as RemoteEmbedder sends it
            body = embeddings_body([probe.input], instruction=instruction if query else None, dim=probe.dim)
        elif self.dialect == "vllm":  # the system message: the chat template's instruction slot
            messages = [{"role": "system", "content": instruction}]
            body = {"messages": messages + [{"role": "user", "content": content_parts(probe.input)}]}
            body["encoding_format"] = "float"
            if probe.dim:
                body["dimensions"] = probe.dim
        else:
            body = self._cohere_embed(probe.input, "search_query" if query else "search_document", probe.dim)
        if self.model:
            body["model"] = self.model
        answer = self.call(probe.name, EMBED_PATHS[self.dialect or "openai"], body)
        try:
            if self.dialect == "cohere":
                return np.asarray(answer["embeddings"]["float"][0], dtype=np.float32)
            return embeddings_of(answer)[0]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"probe {probe.name}: an embeddings answer without its vector ({exc!r})") from None

    @staticmethod
    def _cohere_embed(item: Any, input_type: str, dim: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"input_type": input_type, "embedding_types": ["float"]}
        if isinstance(item, str):
            body["texts"] = [item]
        elif set(item) == {"image"} and isinstance(item["image"], str):
            body["images"] = [item["image"]]
        else:
            body["inputs"] = [{"content": content_parts(item)}]
        if dim:
            body["output_dimension"] = dim
        return body

    def score(self, probe: Probe) -> float:
        """``probe``'s rerank score (0..1) from the engine, in the default rerank instruction."""
        if self.dialect == "openai":
            body = rerank_body(probe.query, [probe.document])
        else:  # vLLM, Jina and Cohere take multimodal items as content parts
            wire = [q if isinstance(q, str) else {"content": content_parts(q)} for q in (probe.query, probe.document)]
            body = {"query": wire[0], "documents": wire[1:]}
        if self.model:
            body["model"] = self.model
        answer = self.call(probe.name, RERANK_PATHS[self.dialect or "openai"], body)
        try:
            return scores_of(answer, 1)[0]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"probe {probe.name}: a rerank answer without its score ({exc!r})") from None


# ------------------------------------------------------------------------------------------------------------------
# the report


@dataclass
class ProbeResult:
    """One probe's comparison. ``metric``: ``cosine`` (``value`` the cosine of the two embeddings, ``drift`` 1 -
    cosine) or ``score`` (``value`` the engine's score, ``local`` the local one, ``drift`` the difference)."""

    name: str
    kind: str
    modality: str
    metric: str
    value: float
    drift: float
    bound: float
    ok: bool
    local: float | None = None
    note: str = ""


@dataclass
class DriftReport:
    """Every probe's result, the probes skipped and why, and the verdict (:attr:`ok`)."""

    url: str
    dialects: dict[str, str]
    bounds: Bounds
    results: list[ProbeResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failing(self) -> list[str]:
        return [r.name for r in self.results if not r.ok]

    def max_drift(self, kind: str) -> float | None:
        values = [r.drift for r in self.results if r.kind == kind]
        return max(values) if values else None

    @property
    def verdict(self) -> str:
        if not self.results:
            return "no probe compared"
        if self.ok:
            return f"ok: {len(self.results)} probes within bounds"
        return f"drift: {len(self.failing)} of {len(self.results)} probes out of bounds: {', '.join(self.failing)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "dialects": self.dialects,
            "ok": self.ok,
            "verdict": self.verdict,
            "bounds": asdict(self.bounds),
            "max_drift": {"embed": _finite(self.max_drift("embed")), "rerank": _finite(self.max_drift("rerank"))},
            "failing": self.failing,
            "probes": [{k: _finite(v) for k, v in asdict(r).items()} for r in self.results],
            "skipped": [{"name": name, "reason": why} for name, why in self.skipped],
        }

    def table(self) -> str:
        rows = [("probe", "kind", "modality", "metric", "value", "drift", "bound", "ok")]
        for r in self.results:
            value = f"{r.value:.7f}" if r.metric == "cosine" else f"{r.value:.6f} (local {r.local:.6f})"
            rows.append((r.name, r.kind, r.modality, r.metric, value, f"{r.drift:.2e}", f"{r.bound:.0e}", _mark(r)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines += [f"skipped {name}: {why}" for name, why in self.skipped]
        dialects = ", ".join(f"{k} {v}" for k, v in self.dialects.items())
        drift = [f"{k} {v:.2e}" for k in ("embed", "rerank") if (v := self.max_drift(k)) is not None]
        lines.append(f"{self.url} ({dialects}); max drift: {', '.join(drift) or '-'}")
        lines.append(self.verdict)
        return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: None stands for them (a probe whose vector could not be compared)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _mark(result: ProbeResult) -> str:
    return ("ok" if result.ok else "DRIFT") + (f" ({result.note})" if result.note else "")


# ------------------------------------------------------------------------------------------------------------------
# the check


def matryoshka_dim(hidden_size: int) -> int | None:
    """The truncation probes' dimension: :data:`MATRYOSHKA_DIM`, or half the model's width when that is less."""
    dim = min(MATRYOSHKA_DIM, hidden_size // 2)
    return dim if dim >= 1 else None


def check_engine(
    url: str,
    *,
    embedder: Any = None,
    reranker: Any = None,
    dialect: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    bounds: Bounds = FLOAT32,
    skip: Sequence[str] = (),
    matryoshka: bool = True,
    timeout: float = TIMEOUT,
) -> DriftReport:
    """Compare the engine at ``url`` with the local ``embedder`` (embedding probes) and ``reranker`` (rerank
    probes); either may be None to leave that side out, or a function that loads the model (called only when the
    engine serves that side: a server with no rerank route, as vLLM serving one model, is skipped on that side).

    ``dialect``: ``openai`` (this project's server: multimodal objects in ``input``, the ``instruction`` field),
    ``vllm`` (``messages``, the instruction as the system message; ``/rerank``) or ``cohere`` (``/v2/embed`` with
    ``input_type``; ``/v2/rerank``); None: detected. ``model``: the ``model`` field of every request. ``skip``:
    glob patterns of probe names left out. ``matryoshka``: also compare at a truncated dimension (skipped when the
    engine refuses ``dimensions``). Raises :class:`EngineError` when the engine cannot be reached, serves neither
    side, or answers a probe with an error (naming the probe, quoting the server)."""
    if dialect is not None and dialect not in DIALECTS:
        raise UsageError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    local = {kind: m for kind, m in (("embed", embedder), ("rerank", reranker)) if m is not None}
    if not local:
        raise UsageError("nothing to compare: give a local embedder, a local reranker or both")
    report = DriftReport(url, {}, bounds)
    engines: dict[str, Engine] = {}
    try:
        for kind in local:
            engine = Engine(url, dialect=dialect, api_key=api_key, model=model, timeout=timeout)
            engines[kind] = engine
            engine.dialect = dialect or engine.detect(kind)
            if engine.dialect is None:
                report.skipped.append((f"{kind} probes", f"the engine serves no {kind} route (404 on each dialect's)"))
            else:
                report.dialects[kind] = engine.dialect
        if not report.dialects:
            raise EngineError(f"the server {engines[next(iter(local))].base_url} serves neither embeddings nor rerank")
        models = {kind: _loaded(local[kind]) for kind in report.dialects}
        dim = matryoshka_dim(int(models["embed"].hidden_size)) if "embed" in models and matryoshka else None
        probes = []
        for probe in build_probes(dim):
            if probe.kind not in models:
                continue
            if any(fnmatch.fnmatchcase(probe.name, pattern) for pattern in skip):
                report.skipped.append((probe.name, "--skip"))
            else:
                probes.append(probe)
        if "embed" in models:
            _compare_embeddings(engines["embed"], models["embed"], [p for p in probes if p.kind == "embed"], report)
        if "rerank" in models:
            _compare_scores(engines["rerank"], models["rerank"], [p for p in probes if p.kind == "rerank"], report)
    finally:
        for engine in engines.values():
            engine.close()
    return report


def _loaded(model: Any) -> Any:
    """A model, or what a loader function gives."""
    is_model = hasattr(model, "embed") or hasattr(model, "score")
    return model() if callable(model) and not is_model else model


def _compare_embeddings(engine: Engine, embedder: Any, probes: list[Probe], report: DriftReport) -> None:
    from .retriever import QUERY_INSTRUCTION

    instructions = {"query": QUERY_INSTRUCTION, "document": embedder.default_instruction}
    remote: dict[str, np.ndarray] = {}
    for probe in probes:
        try:
            remote[probe.name] = engine.embed(probe, instructions[probe.side])
        except _NotCarried as exc:
            report.skipped.append((probe.name, str(exc)))
        except EngineError as exc:
            if not (probe.dim and exc.status in (400, 422)):
                raise
            report.skipped.append((probe.name, f"the engine refuses dimensions ({exc})"))
    compared = [p for p in probes if p.name in remote]
    groups: dict[tuple[str, int | None], list[Probe]] = {}
    for probe in compared:
        groups.setdefault((probe.side, probe.dim), []).append(probe)
    for (side, dim), group in groups.items():
        instruction = QUERY_INSTRUCTION if side == "query" else None
        local = embedder.embed([p.input for p in group], instruction=instruction, dim=dim)
        for probe, vector in zip(group, local):
            report.results.append(_embedding_result(probe, remote[probe.name], vector, report.bounds))
    order = {p.name: i for i, p in enumerate(probes)}
    report.results.sort(key=lambda r: (r.kind != "embed", order.get(r.name, 0)))


def _embedding_result(probe: Probe, remote: np.ndarray, local: np.ndarray, bounds: Bounds) -> ProbeResult:
    bound = bounds.cosine_distance
    if remote.shape != local.shape:
        note = f"the engine gave {remote.shape[-1]} dimensions, the local model {local.shape[-1]}"
        return ProbeResult(probe.name, "embed", probe.modality, "cosine", math.nan, math.inf, bound, False, note=note)
    norms = float(np.linalg.norm(remote) * np.linalg.norm(local))
    cosine = float(np.dot(remote.astype(np.float64), local.astype(np.float64)) / norms) if norms else math.nan
    drift = abs(1.0 - cosine) if math.isfinite(cosine) else math.inf
    return ProbeResult(probe.name, "embed", probe.modality, "cosine", cosine, drift, bound, drift <= bound)


def _compare_scores(engine: Engine, reranker: Any, probes: list[Probe], report: DriftReport) -> None:
    remote: dict[str, float] = {}
    for probe in probes:
        try:
            remote[probe.name] = engine.score(probe)
        except _NotCarried as exc:
            report.skipped.append((probe.name, str(exc)))
    groups: dict[str, list[Probe]] = {}
    for probe in probes:
        if probe.name in remote:
            groups.setdefault(json.dumps(probe.query, sort_keys=True), []).append(probe)
    local: dict[str, float] = {}
    for group in groups.values():
        local.update(zip((p.name for p in group), reranker.score(group[0].query, [p.document for p in group])))
    bound = report.bounds.score
    for probe in probes:
        if probe.name not in remote:
            continue
        theirs, ours = remote[probe.name], float(local[probe.name])
        drift = abs(theirs - ours) if math.isfinite(theirs) else math.inf
        report.results.append(
            ProbeResult(probe.name, "rerank", probe.modality, "score", theirs, drift, bound, drift <= bound, ours)
        )


__all__ = [
    "BFLOAT16",
    "DIALECTS",
    "FLOAT32",
    "TOLERANCES",
    "Bounds",
    "DriftReport",
    "Engine",
    "EngineError",
    "Probe",
    "ProbeResult",
    "build_probes",
    "check_engine",
    "tolerance",
]
