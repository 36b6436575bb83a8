"""Helpers shared by the framework adapters: turning framework objects into the core's inputs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
# A string this long that is valid base64 and not a file is taken as an encoded image, not a path.
BASE64_MIN_CHARS = 64


def image_input(image: Any) -> Any:
    """A framework's image reference (path, URL, data URI, raw base64 str, BytesIO, bytes, PIL) -> core input."""
    if isinstance(image, io.IOBase) or hasattr(image, "getvalue"):
        return image.getvalue()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if (
        isinstance(image, str)
        and len(image) >= BASE64_MIN_CHARS
        and not image.startswith(("http://", "https://", "file://", "data:"))
        and not _is_file(image)
    ):
        try:  # a bare base64 payload (LlamaIndex ImageNode.image, LangChain image documents)
            return base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            pass
    return image


def _is_file(text: str) -> bool:
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):  # e.g. a name too long to be a path
        return False


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking model call in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def collect_model_kwargs(fields: Any, values: Any, target: str = "model_kwargs") -> Any:
    """Pydantic ``before`` validator body: keyword arguments that are not fields of the adapter (``max_pixels``,
    ``device``, ...) belong to the core model and are moved into ``values[target]``."""
    if isinstance(values, dict):
        extra = {k: values[k] for k in list(values) if k not in fields}
        if extra:
            values = {k: v for k, v in values.items() if k not in extra}
            values[target] = {**values.get(target, {}), **extra}
    return values
