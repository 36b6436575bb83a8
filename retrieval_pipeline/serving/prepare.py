"""Per-request preparation: where a request's media may come from, how many URLs it may name, and the thread
pools and deadline under which its inputs are fetched, decoded and tokenised before any model batch sees them.

Requests with media URLs are prepared in a pool of their own, so slow sources only wait on each other.
Observed (:mod:`retrieval_pipeline.observe`) as the stage ``prepare``; the media code inside it reports ``fetch``
(each URL) and ``decode`` (each image).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import observe
from ..errors import InputError, LimitError
from ..media import InputLimits, download_video, fetch_url, looks_like_frame, parse_input
from ..media.fetch import FetchPolicy, fetch_policy
from .error_handlers import HTTPError

URL_PREFIXES = ("http://", "https://")


def media_refs(item: Any) -> list[str]:
    """Every media reference (image, video, frame) of a multimodal object."""
    if not isinstance(item, dict):
        return []
    out: list[str] = []
    for key in ("image", "video"):
        stack = [item[key]] if item.get(key) is not None else []
        while stack:
            ref = stack.pop()
            if isinstance(ref, (list, tuple)):
                stack.extend(ref)
            elif isinstance(ref, str):
                out.append(ref)
    return out


def count_urls(items: list[Any]) -> int:
    return sum(ref.startswith(URL_PREFIXES) for item in items for ref in media_refs(item))


def check_fan_out(items: list[Any], max_fetches: int) -> None:
    """Refuse a request naming more media URLs than it may fetch, before any is fetched."""
    n = count_urls(items)
    if n > max_fetches:
        raise LimitError(
            f"{n} media URLs in one request exceed the limit of {max_fetches} (max_fetches)",
            limit="max_fetches",
            value=n,
            maximum=max_fetches,
        )


def check_sources(items: list[Any], allow_local: bool, *, kinds: list[str] | None = None) -> None:
    """Requests name media by URL or data URI; files on the server's disk only when the server allows it.
    ``kinds``: ``["query", "document", ...]`` for a rerank call (the error then names the query or document)."""
    if allow_local:
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for key in ("image", "video"):
            if any(not r.startswith((*URL_PREFIXES, "data:")) for r in media_refs({key: item.get(key)})):
                kind = kinds[i] if kinds else "input"
                index = None if kind == "query" else (i - 1 if kinds else i)
                raise InputError(
                    "local file paths are not accepted; send an http(s) URL or a data URI",
                    index=index,
                    field=key,
                    kind=kind,
                )


def materialize(item: Any, timeout: float) -> Any:
    """The item with its media URLs fetched (under the current fetch policy): images and frames as bytes, video
    files as paths in the bounded download cache. What runs later never touches the network."""
    if not isinstance(item, dict):
        return item
    out = dict(item)
    image = out.get("image")
    if image is not None:
        out["image"] = [_fetched(i, timeout) for i in image] if isinstance(image, list) else _fetched(image, timeout)
    video = out.get("video")
    if isinstance(video, str):
        out["video"] = download_video(video, timeout) if video.startswith(URL_PREFIXES) else video
    elif isinstance(video, list):
        out["video"] = [
            [_fetched(f, timeout) for f in v] if isinstance(v, list) else _video_or_frame(v, timeout) for v in video
        ]
    return out


def _fetched(ref: Any, timeout: float) -> Any:
    return fetch_url(ref, timeout) if isinstance(ref, str) and ref.startswith(URL_PREFIXES) else ref


def _video_or_frame(ref: Any, timeout: float) -> Any:
    if not (isinstance(ref, str) and ref.startswith(URL_PREFIXES)):
        return ref
    return fetch_url(ref, timeout) if looks_like_frame(ref) else download_video(ref, timeout)


class Preparer:
    """Runs one request's preparation in a preparation thread, under the fetch policy and ``request_timeout``
    (a 504 naming the limit past it). ``local_pool`` serves requests without URLs, ``remote_pool`` the others."""

    def __init__(
        self,
        local_pool: ThreadPoolExecutor,
        remote_pool: ThreadPoolExecutor,
        policy: FetchPolicy,
        *,
        request_timeout: float,
        fetch_timeout: float,
        max_fetches: int,
        allow_local_files: bool,
        limits: InputLimits,
    ):
        self.local_pool, self.remote_pool, self.policy = local_pool, remote_pool, policy
        self.request_timeout, self.fetch_timeout = request_timeout, fetch_timeout
        self.max_fetches, self.allow_local_files, self.limits = max_fetches, allow_local_files, limits

    async def run(self, fn: Callable[[], Any], items: list[Any]) -> Any:
        """``fn()`` for a request whose inputs are ``items``: their URLs are counted first (a 413 past
        ``max_fetches``, nothing fetched), then ``fn`` runs in the pool their URLs choose."""
        check_fan_out(items, self.max_fetches)

        def task() -> Any:
            with fetch_policy(self.policy, deadline=self.request_timeout), observe.stage("prepare"):
                return fn()

        pool = self.remote_pool if count_urls(items) else self.local_pool
        future = asyncio.get_running_loop().run_in_executor(pool, contextvars.copy_context().run, task)
        try:
            return await asyncio.wait_for(future, self.request_timeout + 1.0)
        except asyncio.TimeoutError:
            raise HTTPError(
                504,
                f"preparing this request's inputs took over {self.request_timeout:g}s (request_timeout)",
                "timeout_error",
                limit="request_timeout",
            ) from None

    async def query(self, item: Any) -> Any:
        """A search query (or the image of a question) checked and with its media fetched."""

        def work() -> Any:
            check_sources([item], self.allow_local_files, kinds=["query"])
            try:
                parse_input(item, limits=self.limits)
            except InputError as exc:
                raise exc.at(kind="query") from None
            return materialize(item, self.fetch_timeout)

        return await self.run(work, [item])
