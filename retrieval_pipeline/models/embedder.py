"""Qwen3-VL-Embedding: any text / image / video / mixed input -> one vector in a shared space.

The model is the checkpoint's ``Qwen3VLModel`` backbone; the embedding is the final hidden state of the last
token (the prompt ends with the assistant turn's opening), L2-normalised, optionally truncated to a Matryoshka
dimension first. Inputs are encoded one by one exactly as the reference does, then run in length-sorted
batches under a token budget; identical inputs in one call run once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..media import URL_TIMEOUT, InputError, InputLike, InputLimits, check_text, load_input, parse_inputs
from ..ranking import check_matryoshka_dim  # noqa: F401 - also imported from here
from .batching import last_token_states, run_batched, windows
from .encoding import (
    FPS,
    MAX_FRAMES,
    MAX_PIXELS,
    MIN_PIXELS,
    TOTAL_PIXELS,
    Encoded,
    MediaSettings,
    check_image_budget,
    embedding_conversation,
    encode_conversation,
)
from .runtime import CheckpointModel, load_processor, locked, settings, show_progress

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = InputLimits()  # the library bounds only the pixels of one image

MAX_LENGTH = 8192
DEFAULT_INSTRUCTION = "Represent the user's input."


def truncate_and_normalize(
    vectors: torch.Tensor | np.ndarray, dim: int | None = None, normalize: bool = True
) -> np.ndarray:
    """Matryoshka: keep the first ``dim`` components, then L2-normalise (in that order, as the model was trained).
    Takes raw (un-normalised) embeddings, ``(n, hidden)`` or ``(hidden,)``; returns float32 numpy."""
    t = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if isinstance(vectors, np.ndarray) else vectors).float()
    if dim is not None:
        t = t[..., :dim]
    if normalize:
        t = F.normalize(t, p=2, dim=-1)
    return t.cpu().numpy().astype(np.float32, copy=False)


class InputEncoding:
    """Checking, loading and tokenising embedding inputs: the CPU half of embedding, which needs the checkpoint's
    processor and the media settings but not its weights. :class:`Qwen3VLEmbedder` has it; so has
    :class:`EmbeddingPreprocessor` (the processor alone), which CPU workers use to prepare inputs for a model that
    runs elsewhere (distributed ingestion)."""

    processor: Any
    media: MediaSettings
    max_length: int
    default_instruction: str
    url_timeout: float

    def encode_input(
        self, parsed_item: Any, index: int, instruction: str | None, limits: InputLimits | None = None
    ) -> Encoded:
        """Load and tokenise one parsed input (see :mod:`retrieval_pipeline.media`)."""
        try:
            check_image_budget(parsed_item, self.media, self.max_length, self.processor)
        except InputError as exc:
            raise exc.at(index) from None
        loaded = load_input(
            parsed_item,
            index=index,
            default_max_frames=self.media.max_frames,
            timeout=self.url_timeout,
            max_image_pixels=(limits or DEFAULT_LIMITS).max_image_pixels,
        )
        chosen = loaded.instruction or instruction or self.default_instruction
        conversation = embedding_conversation(loaded, self.media, chosen)
        try:
            enc = encode_conversation(
                self.processor, conversation, max_length=self.max_length, truncation=True, text_budget=self.max_length
            )
        except InputError as exc:
            raise exc.at(index) from None
        enc.compute_key()
        return enc

    def prepare(
        self,
        inputs: Sequence[InputLike],
        *,
        instruction: str | None = None,
        limits: InputLimits | None = None,
        check_files: bool = True,
    ) -> list[Encoded]:
        """CPU-only first half of :meth:`embed`: check, load and tokenise every input (no model work).

        Raises :class:`~retrieval_pipeline.media.InputError` naming the first bad input, a
        :class:`~retrieval_pipeline.media.LimitError` for one over ``limits`` (checked from headers, before
        decoding). Servers prepare each request on its own, so one request's bad or slow input never reaches a
        shared model batch; distributed ingestion prepares on CPU workers. Run the result with
        :meth:`embed_prepared`. ``check_files=False``: local paths are not looked at while parsing.
        """
        self._check_instruction(instruction)
        parsed = parse_inputs(inputs, limits=limits, check_files=check_files)
        return [self.encode_input(item, i, instruction, limits) for i, item in enumerate(parsed)]

    @staticmethod
    def _check_instruction(instruction: str | None) -> None:
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        if instruction is not None:
            check_text(instruction, "instruction")


class EmbeddingPreprocessor(InputEncoding):
    """The processor and settings of an embedding checkpoint, without its weights: :meth:`prepare` gives the same
    :class:`Encoded` inputs as :meth:`Qwen3VLEmbedder.prepare`, for :meth:`Qwen3VLEmbedder.embed_prepared`."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        max_length: int = MAX_LENGTH,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        total_pixels: int = TOTAL_PIXELS,
        fps: float = FPS,
        max_frames: int = MAX_FRAMES,
        default_instruction: str = DEFAULT_INSTRUCTION,
        url_timeout: float = URL_TIMEOUT,
        **from_pretrained_kwargs: Any,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.model_name_or_path = str(model_name_or_path)
        self.processor = load_processor(self.model_name_or_path, **from_pretrained_kwargs)
        self.media = MediaSettings(min_pixels, max_pixels, total_pixels, float(fps), max_frames)
        self.max_length = max_length
        self.default_instruction = default_instruction
        self.url_timeout = url_timeout


class Qwen3VLEmbedder(InputEncoding, CheckpointModel):
    """Embed text, images, screenshots, videos and mixed inputs with a Qwen3-VL-Embedding checkpoint.

    ``model_name_or_path``: a hub id (e.g. ``Qwen/Qwen3-VL-Embedding-2B``) or a local folder. Extra keyword
    arguments go to ``from_pretrained`` (``attn_implementation``, ``revision``, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        max_length: int = MAX_LENGTH,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        total_pixels: int = TOTAL_PIXELS,
        fps: float = FPS,
        max_frames: int = MAX_FRAMES,
        default_instruction: str = DEFAULT_INSTRUCTION,
        device: str | torch.device | None = None,
        torch_dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        max_batch_tokens: int | None = None,
        max_padding: float | None = None,
        url_timeout: float = URL_TIMEOUT,
        **from_pretrained_kwargs: Any,
    ) -> None:
        from transformers import Qwen3VLModel

        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.init_kwargs = settings(
            max_length=max_length,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            total_pixels=total_pixels,
            fps=fps,
            max_frames=max_frames,
            default_instruction=default_instruction,
            device=device,
            torch_dtype=torch_dtype,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            max_padding=max_padding,
            url_timeout=url_timeout,
            **from_pretrained_kwargs,
        )
        self._load_checkpoint(
            model_name_or_path,
            Qwen3VLModel,
            device=device,
            torch_dtype=torch_dtype,
            from_pretrained_kwargs=from_pretrained_kwargs,
        )
        self._configure_runs(
            max_length=max_length,
            media=MediaSettings(min_pixels, max_pixels, total_pixels, float(fps), max_frames),
            default_instruction=default_instruction,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            max_padding=max_padding,
            url_timeout=url_timeout,
        )

    # ----------------------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """The full embedding dimension (Matryoshka ``dim`` may be anything from 1 to this)."""
        return int(self.model.config.text_config.hidden_size)

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
        """Embed ``inputs`` (str = text, ``PIL.Image`` = image, dict = multimodal object), in input order.

        ``instruction`` applies to every input without its own ``instruction`` key (default:
        ``default_instruction``). ``dim`` truncates to a Matryoshka dimension before normalising.
        Returns float32 ``(len(inputs), dim or hidden_size)``.
        """
        dim = self._check_dim(dim)
        return self._finish(self._embed(inputs, instruction, batch_size, show_progress_bar), dim, normalize)

    def process(self, inputs: list[dict[str, Any]], normalize: bool = True) -> torch.Tensor:
        """The reference scripts' call: a list of multimodal dicts -> ``(n, hidden_size)`` tensor (CPU, float32)."""
        vectors = self._embed(inputs, None, None, None, allow_empty=True)  # {} is the reference's NULL input
        return F.normalize(vectors, p=2, dim=-1) if normalize else vectors

    def embed_queries(self, queries: Sequence[InputLike], *, instruction: str, **kwargs: Any) -> np.ndarray:
        """Queries usually carry a task instruction; documents keep the default one."""
        return self.embed(queries, instruction=instruction, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int | None:
        """``dim`` as an int when it is a Matryoshka dimension of this model (1..hidden_size); None stays None.
        Raises ``ValueError`` saying what to pass otherwise."""
        return self._check_dim(dim)

    def _check_dim(self, dim: int | None) -> int | None:
        return check_matryoshka_dim(dim, self.hidden_size)

    def embed_prepared(
        self,
        encoded: Sequence[Encoded],
        *,
        dim: int | None = None,
        normalize: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Second half of :meth:`embed`: run prepared inputs through the model (same numbers, same order)."""
        dim = self._check_dim(dim)
        out = torch.empty((len(encoded), self.hidden_size), dtype=torch.float32)
        done: dict[bytes, torch.Tensor] = {}
        self._run(dict(enumerate(encoded)), done, out, batch_size or self.batch_size, None)
        return self._finish(out, dim, normalize)

    def _finish(self, vectors: torch.Tensor, dim: int | None, normalize: bool) -> np.ndarray:
        return truncate_and_normalize(vectors, dim, normalize)

    def _embed(
        self,
        inputs: Sequence[InputLike],
        instruction: str | None,
        batch_size: int | None,
        show_progress_bar: bool | None,
        *,
        allow_empty: bool = False,
    ) -> torch.Tensor:
        self._check_instruction(instruction)
        # every structural error is raised here, before any model work
        parsed = parse_inputs(inputs, allow_empty=allow_empty)
        batch_size = batch_size or self.batch_size
        done: dict[bytes, torch.Tensor] = {}
        out = torch.empty((len(parsed), self.hidden_size), dtype=torch.float32)
        bar = tqdm(
            total=len(parsed), desc="embedding", unit="item", disable=not show_progress(show_progress_bar, len(parsed))
        )
        with bar:
            for encoded in windows(len(parsed), lambda i: self.encode_input(parsed[i], i, instruction)):
                self._run(encoded, done, out, batch_size, bar)
        return out

    def _run(
        self,
        encoded: dict[int, Encoded],
        done: dict[bytes, torch.Tensor],
        out: torch.Tensor,
        batch_size: int,
        bar: tqdm | None,
    ) -> None:
        """Forward the encoded items (identical ones once, length-sorted batches) into ``out`` rows."""
        run_batched(
            list(encoded.values()),
            self._forward,
            batch_size=batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_padding=self.max_padding,
            done=done,
            bar=bar,
        )
        for i, enc in encoded.items():
            out[i] = done[enc.key]

    @locked
    @torch.inference_mode()
    def _forward(self, items: list[Encoded]) -> torch.Tensor:
        return last_token_states(self.model, self._collate(items), self.device, self.dtype).float().cpu()
