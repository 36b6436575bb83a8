"""The server's settings (:class:`ServerConfig`): every limit, timeout and permission ``serve`` runs under."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..media import SERVER_LIMITS, InputLimits
from ..netfetch import FetchPolicy

MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 2048  # OpenAI's limit of inputs per embeddings request


@dataclass
class ServerConfig:
    """What ``serve`` allows and bounds; the defaults are safe for a server facing the internet."""

    api_key: str | None = None  # bearer token; None = no auth. An empty or blank token is refused.
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_items: int = MAX_ITEMS  # inputs per request (embeddings) / documents per request (rerank)
    dynamic_batching: bool = True
    max_wait_ms: float = 5.0  # how long a request waits for others to share its batch
    batch_items: int = 64  # a merged batch closes at this many inputs
    allow_local_files: bool = False  # inputs may name files on the server's disk
    # Media URLs: off by default. allow_remote_media opens public addresses; fetch_allow names hosts (private ones
    # included) that may be reached; with fetch_allow alone only those hosts are.
    allow_remote_media: bool = False
    fetch_allow: tuple[str, ...] = ()
    fetch_max_bytes: int = 64 * 1024 * 1024  # per URL
    fetch_total_bytes: int = 128 * 1024 * 1024  # per request, all URLs together
    fetch_timeout: float = 20.0  # seconds, wall clock, per URL (redirects included)
    max_fetches: int = 16  # URLs (frames included) per request
    max_redirects: int = 3
    request_timeout: float = 60.0  # seconds to prepare one request's inputs (all downloads and decoding)
    body_timeout: float = 15.0  # seconds for a client to send its whole request body
    max_in_flight: int = 16  # requests served at once (reading, preparing, holding their inputs); beyond: they wait
    # Requests waiting for a slot, in arrival order: at most this many, announcing at most max_queued_bytes of body
    # together, each for at most queue_timeout seconds; past any of them: 429 with Retry-After.
    max_queued: int = 256
    max_queued_bytes: int = 256 * 1024 * 1024
    queue_timeout: float = 60.0
    retry_after_s: int = 1
    max_queued_generations: int = 8  # chat / ask generations running or waiting; beyond: 429 with Retry-After
    max_generation_tokens: int = 4096  # a chat request's max_tokens; above: 413 naming the limit
    prepare_workers: int = 4  # threads preparing requests (twice: one pool for requests with URLs)
    served_model_names: tuple[str, ...] = ()  # names accepted in a request's "model" (besides the model's own)
    source_root: str | None = None  # search hits name local sources relative to this folder
    expose_paths: bool = False  # True: search hits carry the stored (absolute) source paths
    # characters, images, frames, pixels per item and per request, rerank cost: refusals are 413 naming the limit
    limits: InputLimits = field(default_factory=lambda: SERVER_LIMITS)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("an empty bearer token would switch authentication off: pass a real token or None")
        if self.max_in_flight < 1 or self.prepare_workers < 1 or self.max_queued_generations < 1:
            raise ValueError("max_in_flight, prepare_workers and max_queued_generations must be >= 1")
        if any(not isinstance(n, str) or not n.strip() for n in self.served_model_names):
            raise ValueError("a served model name (--served-model-name) must be a non-empty name")
        if self.max_queued < 0 or self.max_queued_bytes < 0 or not self.queue_timeout > 0:
            raise ValueError("max_queued and max_queued_bytes must be >= 0, queue_timeout > 0")

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy.server(
            allow_remote=self.allow_remote_media,
            allow_hosts=tuple(self.fetch_allow),
            max_bytes=self.fetch_max_bytes,
            deadline=self.fetch_timeout,
            max_redirects=self.max_redirects,
            max_fetches=self.max_fetches,
            max_total_bytes=self.fetch_total_bytes,
        )
