"""The server's settings (:class:`ServerConfig`): every limit, timeout and permission ``serve`` runs under."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import UsageError
from ..media import SERVER_LIMITS, InputLimits
from ..media.fetch import FetchPolicy
from ..settings import ENV, env

MB = 1024 * 1024
MAX_REQUEST_BYTES = 32 * MB
MAX_ITEMS = 2048  # OpenAI's limit of inputs per embeddings request
LOG_FORMATS = ("text", "json")


def at_least(minimum: int) -> Any:
    """An argparse type: an int >= ``minimum`` (else a usage error, exit 2, naming the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def limits_from(items: list[str]) -> InputLimits:
    """``--limit NAME=VALUE`` options over the server's input limits (``none`` lifts one)."""
    names = {f.name for f in fields(SERVER_LIMITS)}
    changes: dict[str, int | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise UsageError(f"--limit expects NAME=VALUE with NAME one of {sorted(names)}, got {item!r}")
        changes[name] = None if value.lower() == "none" else int(value)
    return dataclasses.replace(SERVER_LIMITS, **changes)


def _cli(flag: str, help: str, kind: str = "value", **options: Any) -> dict[str, Any]:
    """How a setting appears on ``serve``'s command line. ``kind``: ``value``, ``on`` (a switch that sets True),
    ``off`` (a switch that sets False), ``append`` (repeatable, a tuple), ``limits`` (``--limit`` items);
    ``scale``: the option's unit in the setting's (MB -> bytes); ``env``: the environment variable that gives the
    default; ``type``, ``choices``, ``metavar``: argparse's."""
    return {"cli": {"flag": flag, "help": help, "kind": kind, **options}}


@dataclass
class ServerConfig:
    """What ``serve`` allows and bounds; the defaults are safe for a server facing the internet."""

    api_key: str | None = field(
        default=None,  # None = no auth. An empty or blank token is refused.
        metadata=_cli("--token", "require 'Authorization: Bearer TOKEN'", env="SERVER_TOKEN"),
    )
    keys_file: str | None = field(
        default=None,
        metadata=_cli(
            "--keys",
            "API keys per collection: a JSON or TOML file of {name, sha256, collections, role, rpm} (re-read when "
            "it changes)",
            env="SERVER_KEYS",
            metavar="FILE",
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=_cli(
            "--data-dir",
            "where uploaded files and the vector-store registry live (documents over HTTP: /v1/files, "
            "/v1/vector_stores)",
            env="SERVER_DATA_DIR",
            metavar="DIR",
        ),
    )
    max_upload_bytes: int = field(
        default=64 * MB, metadata=_cli("--max-upload-mb", "MB per uploaded file (/v1/files)", type=float, scale=MB)
    )
    max_queued_files: int = field(
        default=10000,
        metadata=_cli("--max-queued-files", "files waiting to be indexed; beyond: 429", type=at_least(1)),
    )
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_items: int = field(
        default=MAX_ITEMS,  # inputs per request (embeddings) / documents per request (rerank)
        metadata=_cli("--max-items", "inputs / documents per request, as OpenAI's", type=int),
    )
    dynamic_batching: bool = field(
        default=True, metadata=_cli("--no-dynamic-batching", "run each request on its own", kind="off")
    )
    max_wait_ms: float = field(
        default=5.0,  # how long a request waits for others to share its batch
        metadata=_cli("--max-wait-ms", "dynamic batching: longest wait for company, in ms", type=float),
    )
    batch_items: int = 64  # a merged batch closes at this many inputs
    allow_local_files: bool = field(
        default=False, metadata=_cli("--allow-local-files", "let requests name files on this machine", kind="on")
    )
    # Media URLs: off by default. allow_remote_media opens public addresses; fetch_allow names hosts (private ones
    # included) that may be reached; with fetch_allow alone only those hosts are.
    allow_remote_media: bool = field(
        default=False,
        metadata=_cli("--allow-remote-media", "fetch image/video URLs of requests (public addresses only)", kind="on"),
    )
    fetch_allow: tuple[str, ...] = field(
        default=(),
        metadata=_cli(
            "--fetch-allow",
            "a host (name or IP, private ones too) whose media URLs are fetched (repeatable)",
            kind="append",
            metavar="HOST",
        ),
    )
    fetch_max_bytes: int = field(
        default=64 * MB, metadata=_cli("--fetch-max-mb", "MB per media URL", type=float, scale=MB)
    )
    fetch_total_bytes: int = 128 * MB  # per request, all URLs together
    fetch_timeout: float = field(
        default=20.0, metadata=_cli("--fetch-timeout", "seconds per media URL, in all (redirects included)", type=float)
    )
    max_fetches: int = field(default=16, metadata=_cli("--max-fetches", "media URLs per request", type=int))
    max_redirects: int = 3
    request_timeout: float = field(
        default=60.0, metadata=_cli("--request-timeout", "seconds to load one request's media", type=float)
    )
    body_timeout: float = field(
        default=15.0, metadata=_cli("--body-timeout", "seconds for a client to send its request body", type=float)
    )
    max_in_flight: int = field(
        default=16,  # requests served at once (reading, preparing, holding their inputs); beyond: they wait
        metadata=_cli("--max-in-flight", "requests served at once; more wait in the queue", type=int),
    )
    # Requests waiting for a slot, in arrival order: at most this many, announcing at most max_queued_bytes of body
    # together, each for at most queue_timeout seconds; past any of them: 429 with Retry-After.
    max_queued: int = field(
        default=256, metadata=_cli("--max-queued", "requests waiting for a slot; beyond: 429", type=at_least(0))
    )
    max_queued_bytes: int = field(
        default=256 * MB,
        metadata=_cli(
            "--max-queued-mb", "request bodies waiting for a slot, in MB together; beyond: 429", type=at_least(0),
            scale=MB,
        ),
    )  # fmt: skip
    queue_timeout: float = field(
        default=60.0, metadata=_cli("--queue-timeout", "seconds a request waits for a slot; then 429", type=float)
    )
    retry_after_s: int = 1
    max_queued_generations: int = field(
        default=8,
        metadata=_cli("--max-queued-generations", "chat / ask generations running or waiting; beyond: 429", type=int),
    )
    max_generation_tokens: int = field(
        default=4096,  # a chat request's max_tokens; above: 413 naming the limit
        metadata=_cli("--max-generation-tokens", "most max_tokens a chat request may ask", type=int),
    )
    prepare_workers: int = 4  # threads preparing requests (twice: one pool for requests with URLs)
    # observability (serving.metrics, serving.tracing): GET /metrics, OpenTelemetry traces, one log line a request
    public_metrics: bool = field(
        default=False, metadata=_cli("--public-metrics", "GET /metrics without a key (Prometheus scrapes)", kind="on")
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=_cli(
            "--otlp-endpoint",
            "send traces (OTLP/HTTP) to this collector URL, e.g. http://localhost:4318/v1/traces",
            metavar="URL",
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_cli("--log-format", "json: one structured line per request on stderr", choices=LOG_FORMATS),
    )
    served_model_names: tuple[str, ...] = field(
        default=(),  # names accepted in a request's "model" (besides the model's own)
        metadata=_cli("--served-model-name", "extra accepted 'model' name (repeatable)", kind="append"),
    )
    source_root: str | None = field(
        default=None, metadata=_cli("--source-root", "search hits name files relative to this folder")
    )
    expose_paths: bool = field(
        default=False, metadata=_cli("--expose-paths", "search hits carry absolute server paths", kind="on")
    )
    # search / chat result caches (retrieval_pipeline.caching): a repeated query runs no model; 0 switches one off
    query_cache_bytes: int = field(
        default=64 * MB,
        metadata=_cli(
            "--query-cache-mb", "MB of cached query vectors (repeated searches skip the embedder; 0: off)",
            type=float, scale=MB,
        ),
    )  # fmt: skip
    rerank_cache_bytes: int = field(
        default=16 * MB,
        metadata=_cli(
            "--rerank-cache-mb", "MB of cached rerank scores (by query, point and reranker; 0: off)",
            type=float, scale=MB,
        ),
    )  # fmt: skip
    # characters, images, frames, pixels per item and per request, rerank cost: refusals are 413 naming the limit
    limits: InputLimits = field(
        default_factory=lambda: SERVER_LIMITS,
        metadata=_cli(
            "--limit",
            "an input limit (max_text_chars, max_images_per_item, max_frames_per_video, max_image_pixels, "
            "max_request_pixels, max_rerank_tokens, ...; 'none' lifts it) over the server defaults (repeatable)",
            kind="limits",
            metavar="NAME=VALUE",
        ),
    )

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("an empty bearer token would switch authentication off: pass a real token or None")
        if self.max_in_flight < 1 or self.prepare_workers < 1 or self.max_queued_generations < 1:
            raise ValueError("max_in_flight, prepare_workers and max_queued_generations must be >= 1")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if any(not isinstance(n, str) or not n.strip() for n in self.served_model_names):
            raise ValueError("a served model name (--served-model-name) must be a non-empty name")
        if self.max_queued < 0 or self.max_queued_bytes < 0 or not self.queue_timeout > 0:
            raise ValueError("max_queued and max_queued_bytes must be >= 0, queue_timeout > 0")
        if self.query_cache_bytes < 0 or self.rerank_cache_bytes < 0:
            raise ValueError("query_cache_bytes and rerank_cache_bytes must be >= 0 (0 switches a cache off)")

    # the command line: every setting above with a ``cli`` entry is a ``serve`` option, declared here only ------
    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        """Add ``serve``'s options for these settings (their defaults are the fields' defaults)."""
        for f in fields(cls):
            spec = f.metadata.get("cli")
            if spec is None:
                continue
            flag, kind, help_text = spec["flag"], spec["kind"], spec["help"]
            options: dict[str, Any] = {k: spec[k] for k in ("metavar", "choices") if k in spec}
            if kind in ("on", "off"):
                parser.add_argument(flag, action="store_true", help=help_text, **options)
            elif kind in ("append", "limits"):
                parser.add_argument(flag, action="append", default=[], help=help_text, **options)
            else:
                default = f.default
                if "env" in spec:
                    default = env(spec["env"])
                    help_text += f" (or {ENV}{spec['env']})"
                elif default is not None:
                    shown = default / spec["scale"] if "scale" in spec else default
                    help_text += f" (default {shown:g})" if isinstance(shown, (int, float)) else ""
                    default = shown
                parser.add_argument(flag, type=spec.get("type", str), default=default, help=help_text, **options)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerConfig:
        """The settings ``serve``'s parsed options give."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            spec = f.metadata.get("cli")
            if spec is None:
                continue
            raw = getattr(args, spec["flag"].lstrip("-").replace("-", "_"))
            kind = spec["kind"]
            if kind == "off":
                values[f.name] = not raw
            elif kind == "append":
                values[f.name] = tuple(raw)
            elif kind == "limits":
                values[f.name] = limits_from(raw)
            elif "scale" in spec and raw is not None:
                values[f.name] = int(raw * spec["scale"])
            else:
                values[f.name] = raw
        return cls(**values)

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
