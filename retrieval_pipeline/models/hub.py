"""Hub ids before ``from_pretrained``: fail in seconds when the hub cannot be reached, load a cached model offline,
and say what a first run downloads, how large it is and where it goes.

transformers alone retries an unreachable hub for minutes before it says it cannot load the model; a model already
in the local cache then still needs ``HF_HUB_OFFLINE=1`` to load. :func:`prepare_hub_load` asks the hub once, with
a short timeout, and decides.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Seconds to wait for the hub's answer about one model (a server that accepts and never answers costs this).
PROBE_TIMEOUT = 6.0
LOCAL_HINT = (
    "point --embedding-model / --reranker-model / --generator-model (or QWEN3VL_RAG_EMBEDDING_MODEL, "
    "QWEN3VL_RAG_RERANKER_MODEL, QWEN3VL_RAG_GENERATOR_MODEL) at local folders that hold the checkpoints, or "
    "download them once where there is a network (they are then reused from the cache offline)"
)


class HubUnavailable(OSError):
    """The model is a hub id, it is not in the local cache, and the hub cannot be reached (or is switched off)."""


def is_hub_id(name: str) -> bool:
    """``org/name`` (or ``name``) that is not an existing local path."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1):
        return False
    return 0 < name.count("/") <= 1 and all(part for part in name.split("/"))


def _cached(name: str, kwargs: dict[str, Any]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        name, "config.json", cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision")
    )
    return isinstance(found, str)


def cache_dir(kwargs: dict[str, Any]) -> str:
    from huggingface_hub import constants

    return str(kwargs.get("cache_dir") or constants.HF_HUB_CACHE)


def prepare_hub_load(name: str, kwargs: dict[str, Any]) -> None:
    """For a hub id: raise :class:`HubUnavailable` within :data:`PROBE_TIMEOUT` seconds when it can be neither
    downloaded nor found in the cache; set ``local_files_only`` when the hub is unreachable (or ``HF_HUB_OFFLINE``)
    but the model is cached; log what a download will fetch. ``kwargs``: the ``from_pretrained`` keyword
    arguments (updated in place). Local folders pass through untouched."""
    if not is_hub_id(name) or kwargs.get("local_files_only"):
        return
    from huggingface_hub import constants

    cached = _cached(name, kwargs)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise HubUnavailable(
                f"{name} is not in the local cache ({cache_dir(kwargs)}) and HF_HUB_OFFLINE is set: {LOCAL_HINT}"
            )
        kwargs["local_files_only"] = True
        return
    size = _probe(name, kwargs, cached)
    if size is None:  # unreachable, but cached: load it offline
        kwargs["local_files_only"] = True
    elif not cached:
        logger.warning(
            "downloading %s (%s) into %s; later runs reuse it. Set HF_HOME (or HF_HUB_CACHE) to keep models "
            "elsewhere, or pass a local folder",
            name,
            f"{size / 1e9:.1f} GB" if size else "size unknown",
            cache_dir(kwargs),
        )


def _probe(name: str, kwargs: dict[str, Any], cached: bool) -> int | None:
    """The checkpoint's download size in bytes (0 when the hub does not say), or None when the hub cannot be
    reached and the model is cached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=None, token=kwargs.get("token")).model_info(
            name, revision=kwargs.get("revision"), files_metadata=True, timeout=PROBE_TIMEOUT
        )
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        if cached:
            return None
        raise HubUnavailable(f"{name}: {type(exc).__name__} on the hub ({exc}); {LOCAL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, DNS, proxies, TLS: all mean "unreachable"
        if cached:
            logger.info("the hub cannot be reached (%s): loading %s from the local cache", type(exc).__name__, name)
            return None
        from huggingface_hub import constants

        raise HubUnavailable(
            f"{name} is not in the local cache and the hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(exc).__name__}): {LOCAL_HINT}"
        ) from None
    weights = (".safetensors", ".bin", ".json", ".jinja", ".txt", ".model")
    return sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(weights))
