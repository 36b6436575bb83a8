"""The models of a running ``qwen3vl-rag serve``, with the local models' interface: :class:`RemoteEmbedder` (like
:class:`~retrieval_pipeline.Qwen3VLEmbedder`: ``embed``, ``check_dim``, ``hidden_size``) and
:class:`RemoteReranker` (like :class:`~retrieval_pipeline.Qwen3VLReranker`: ``score``, ``rerank``).

An app with several worker processes shares one server's models instead of loading them in every process; the
numbers are the server's, which are the library's. Local media (paths, PIL images, bytes, video files up to 16 MB)
travel as data URIs, so the server needs no access to the client's files; URLs travel as they are (the server
fetches them if allowed).
Errors come back as the library's own: a bad input is an :class:`~retrieval_pipeline.errors.InputError` naming the
item, a limit a :class:`~retrieval_pipeline.errors.LimitError`, an unreachable or failing server a
:class:`~retrieval_pipeline.errors.ModelLoadError`.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, LimitError, ModelLoadError
from .media import InputLike
from .ranking import check_matryoshka_dim, check_top_k, rank_scores

TIMEOUT = 300.0
MAX_VIDEO_UPLOAD = 16 * 1024 * 1024  # a local video travels inside the request body (the server takes 32 MB)
URL_PREFIXES = ("http://", "https://", "data:")


def _data_uri(value: Any) -> Any:
    """A local image reference as a data URI (URLs and data URIs unchanged)."""
    if isinstance(value, str) and value.startswith(URL_PREFIXES):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = Path(str(value).removeprefix("file://")).expanduser()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
    if isinstance(value, (bytes, bytearray)):
        return f"data:application/octet-stream;base64,{base64.b64encode(bytes(value)).decode()}"
    if hasattr(value, "save"):  # a PIL image: PNG keeps its pixels exactly
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"
    return value


def wire_input(item: InputLike) -> Any:
    """One input as the server takes it: str stays, PIL images and media references become data URIs."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        return {"image": _data_uri(item)}
    out = dict(item)
    if "image" in out:
        image = out["image"]
        out["image"] = [_data_uri(i) for i in image] if isinstance(image, list) else _data_uri(image)
    if "video" in out:
        video = out["video"]
        if isinstance(video, list):  # frames
            out["video"] = [_data_uri(f) for f in video]
        elif not (isinstance(video, str) and video.startswith(URL_PREFIXES)):
            path = Path(os.fspath(video).removeprefix("file://")).expanduser()
            if path.stat().st_size > MAX_VIDEO_UPLOAD:
                raise InputError(
                    f"the video {path} is over {MAX_VIDEO_UPLOAD >> 20} MB: give the server its URL instead",
                    field="video",
                )
            kind = mimetypes.guess_type(path.name)[0] or "video/mp4"
            out["video"] = f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
    return out


def error_body(response: Any) -> dict[str, Any]:
    """The error object of a failed response: this server's and OpenAI's ``{"error": {"message", ...}}``, vLLM's
    and FastAPI's ``{"message"}`` / ``{"detail"}``, else the start of the body as the message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return error
        for key in ("message", "detail", "error"):
            if body.get(key):
                value = body[key]
                return {"message": value if isinstance(value, str) else str(value)[:500]}
    return {"message": response.text[:500]}


def embeddings_body(
    items: Sequence[Any], *, instruction: str | None = None, dim: int | None = None, model: str | None = None
) -> dict[str, Any]:
    """``POST /v1/embeddings``'s body for wire inputs (:func:`wire_input`), with this server's extension field
    ``instruction`` (OpenAI's API has none) and Matryoshka ``dimensions``."""
    body: dict[str, Any] = {"input": list(items), "encoding_format": "base64"}
    if instruction:
        body["instruction"] = instruction
    if dim:
        body["dimensions"] = int(dim)
    if model:
        body["model"] = model
    return body


def embeddings_of(response: dict[str, Any]) -> np.ndarray:
    """The vectors of an OpenAI embeddings response, in input order (float lists or base64 float32)."""
    data = sorted(response["data"], key=lambda d: d["index"])
    return np.stack([_vector(d["embedding"]) for d in data]).astype(np.float32)


def _vector(value: Any) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


def rerank_body(
    query: Any, documents: Sequence[Any], *, instruction: str | None = None, model: str | None = None
) -> dict[str, Any]:
    """``POST /v1/rerank``'s body for wire inputs (this server's ``instruction`` extension when given)."""
    body: dict[str, Any] = {"query": query, "documents": list(documents)}
    if instruction:
        body["instruction"] = instruction
    if model:
        body["model"] = model
    return body


def scores_of(response: dict[str, Any], n: int) -> list[float]:
    """The ``relevance_score`` of each of ``n`` documents, in document order, from any rerank dialect's response
    (``results[{index, relevance_score}]``: Cohere, Jina, vLLM, Infinity)."""
    scores = [0.0] * n
    for result in response["results"]:
        scores[result["index"]] = float(result["relevance_score"])
    return scores


class RemoteServer:
    """A connection to a running server: its base URL (a trailing ``/v1`` dropped), the bearer token, and its
    answers as the library's errors (:meth:`_post`)."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, model: str | None = None, timeout: float = TIMEOUT
    ):
        import httpx

        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        # how to reach the same model again (the framework adapters serialise and unpickle with it)
        self.init_kwargs: dict[str, Any] = {"base_url": self.base_url, "api_key": api_key, "timeout": timeout}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model = model
        self.model_name_or_path = model or self.base_url

    def _send(self, path: str, body: dict[str, Any]) -> Any:
        """The server's ``httpx.Response`` to ``POST path`` (any status); an unreachable server is a
        :class:`ModelLoadError`."""
        import httpx

        try:
            return self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"the server {self.base_url} cannot be reached: {exc}") from None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._send(path, body)
        if response.status_code < 400:
            return response.json()
        error = error_body(response)
        message = error.get("message", "")
        if response.status_code in (400, 413, 422):
            # the server's message already names the item and field; they are kept as attributes too
            refusal = InputError(message)
            if response.status_code == 413:
                refusal = LimitError(message, limit=error.get("limit") or "server")
            refusal.index, refusal.field = error.get("index"), error.get("param")
            raise refusal
        raise ModelLoadError(f"the server {self.base_url} answered {response.status_code}: {message}")

    def _model_entry(self, kind: str) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.get("/v1/models")
            response.raise_for_status()
            entries = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"the server {self.base_url} cannot be reached: {exc}") from None
        for entry in entries:
            if entry.get("type") == kind:
                return entry
        raise ModelLoadError(f"the server {self.base_url} serves no {kind} model")

    def close(self) -> None:
        self._http.close()


class RemoteEmbedder(RemoteServer):
    """The embedding model of a running server (``POST /v1/embeddings``). ``model_name_or_path`` and ``model_id``
    are the server's (``/v1/models``), so a collection indexed by the server's model opens with this one."""

    default_instruction: str | None = None

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        entry = self._model_entry("embedding")
        self.model_name_or_path = entry["id"]
        self.model_id: str | None = entry.get("fingerprint")

    @property
    def hidden_size(self) -> int:
        if not hasattr(self, "_hidden_size"):
            self._hidden_size = len(self.embed(["dimension probe"])[0])
        return self._hidden_size

    def check_dim(self, dim: int | None) -> int | None:
        return check_matryoshka_dim(dim, self.hidden_size)

    def embed(
        self,
        inputs: Sequence[InputLike],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Like :meth:`Qwen3VLEmbedder.embed` (the server's vectors are L2-normalised)."""
        if not normalize:
            raise ValueError("a remote embedder returns normalised vectors: pass normalize=True")
        items = [wire_input(i) for i in inputs]
        if not items:
            return np.zeros((0, dim or 0), dtype=np.float32)
        body = embeddings_body(items, instruction=instruction, dim=dim, model=self.model)
        return embeddings_of(self._post("/v1/embeddings", body))


class RemoteReranker(RemoteServer):
    """The reranker of a running server (``POST /v1/rerank``)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.model_name_or_path = self._model_entry("rerank")["id"]

    def score(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        instruction: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[float]:
        if not documents:
            return []
        docs = [wire_input(d) for d in documents]
        body = rerank_body(wire_input(query), docs, instruction=instruction, model=self.model)
        return scores_of(self._post("/v1/rerank", body), len(docs))

    def rerank(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[tuple[int, float]]:
        check_top_k(top_k)
        return rank_scores(self.score(query, documents, instruction=instruction), top_k)
