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


class _Remote:
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

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"the server {self.base_url} cannot be reached: {exc}") from None
        if response.status_code < 400:
            return response.json()
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": response.text[:500]}
        message = error.get("message", "")
        if response.status_code in (400, 413, 422):
            # the server's message already names the item and field; they are kept as attributes too
            exc = LimitError(message, limit=error.get("limit") or "server") if response.status_code == 413 else None
            exc = exc or InputError(message)
            exc.index, exc.field = error.get("index"), error.get("param")
            raise exc
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


class RemoteEmbedder(_Remote):
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
        body: dict[str, Any] = {"input": items, "encoding_format": "base64"}
        if instruction:
            body["instruction"] = instruction
        if dim:
            body["dimensions"] = int(dim)
        if self.model:
            body["model"] = self.model
        data = sorted(self._post("/v1/embeddings", body)["data"], key=lambda d: d["index"])
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]).astype(np.float32)


class RemoteReranker(_Remote):
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
        body: dict[str, Any] = {"query": wire_input(query), "documents": [wire_input(d) for d in documents]}
        if instruction:
            body["instruction"] = instruction
        if self.model:
            body["model"] = self.model
        scores = [0.0] * len(documents)
        for result in self._post("/v1/rerank", body)["results"]:
            scores[result["index"]] = float(result["relevance_score"])
        return scores

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
