"""Qwen3-VL-Reranker: a (query, document) pair of any modalities -> a relevance score in (0, 1).

Score = sigmoid(h_last . (W[yes] - W[no])), with h_last the final hidden state of the pair's last token and W
the checkpoint's ``lm_head``. Each pair is encoded exactly as the reference does (per pair, its truncation).

Speed: every pair of one call starts with the same tokens (system prompt, instruction, query). That shared
prefix runs once; its key/value cache is then reused by batches of documents, which run only their own
tokens (:mod:`.prefix_cache`). Attention is causal, so the scores are the same as running each pair whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ..media import (
    MAX_IMAGE_PIXELS,
    URL_TIMEOUT,
    InputError,
    InputLike,
    InputLimits,
    LimitError,
    ParsedInput,
    check_text,
    load_input,
    parse_input,
)
from ..ranking import check_top_k, rank_scores  # noqa: F401 - also imported from here
from .batching import distinct, last_token_states, run_batched, windows
from .encoding import (
    FPS,
    IMAGE_PATCH_SIZE,
    MAX_FRAMES,
    MAX_PIXELS,
    MIN_PIXELS,
    TOTAL_PIXELS,
    Encoded,
    MediaSettings,
    SharedVision,
    content_items,
    encode_conversation,
    encode_images_once,
    estimate_tokens,
    rerank_conversation,
    truncate_keep_special,
)
from .prefix_cache import PrefixCache, forward_suffixes, run_prefix, shared_prefix_length
from .runtime import CheckpointModel, locked, settings, show_progress

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = InputLimits()  # the library bounds only the pixels of one image

MAX_LENGTH = 10240
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
# The reference truncates a pair's tokens but always keeps its last 5 (end of user turn, assistant opening).
KEEP_TAIL_TOKENS = 5
# Tokens of a pair's prompt besides the query and the document (system prompt, instruction, tags), for estimates.
PAIR_PROMPT_TOKENS = 64


@dataclass
class PreparedRerank:
    """A rerank call after :meth:`Qwen3VLReranker.prepare`: one encoded (query, document) pair per document."""

    pairs: list[Encoded]
    query_vision: int  # images / videos in the query (the shared prefix never ends inside one)

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class _Query:
    """A call's query, loaded once: its content items and the patches every pair shares."""

    content: list[dict[str, Any]]
    images: int
    videos: int
    shared: SharedVision | None = None
    leading: tuple[SharedVision, torch.Tensor] | None = None  # images encoded once: (patches, grids)


class Qwen3VLReranker(CheckpointModel):
    """Score (query, document) pairs with a Qwen3-VL-Reranker checkpoint (hub id or local folder)."""

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
        share_prefix: bool = True,
        url_timeout: float = URL_TIMEOUT,
        **from_pretrained_kwargs: Any,
    ) -> None:
        from transformers import Qwen3VLForConditionalGeneration

        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.share_prefix = share_prefix
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
            share_prefix=share_prefix,
            **from_pretrained_kwargs,
        )
        self._load_checkpoint(
            model_name_or_path,
            Qwen3VLForConditionalGeneration,
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
        self._special_ids = set(self.processor.tokenizer.all_special_ids)
        self._vision_start_id = self.model.config.vision_start_token_id
        self._vision_end_id = self.model.config.vision_end_token_id

    def _check_processor(self) -> None:
        missing = [t for t in ("yes", "no") if t not in self.processor.tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"{self.model_name_or_path}: the tokenizer has no token for {missing}; not a reranker")

    def _keep(self, loaded: torch.nn.Module) -> torch.nn.Module:
        """The backbone, and the yes/no head: two rows of lm_head. The rest of lm_head (vocab x hidden) is dropped."""
        vocab = self.processor.tokenizer.get_vocab()
        head = loaded.lm_head.weight.detach()
        self._score_weight = (head[vocab["yes"]].float() - head[vocab["no"]].float()).to(self.device)
        return loaded.model

    def to(self, device: str | torch.device) -> Qwen3VLReranker:
        """Move the model (e.g. to the CPU between pipeline stages on a small GPU)."""
        super().to(device)
        self._score_weight = self._score_weight.to(self.device)
        return self

    # ----------------------------------------------------------------------------------------------------------
    def process(self, inputs: dict[str, Any]) -> list[float]:
        """The reference scripts' call: ``{"query", "documents", "instruction"?, "fps"?, "max_frames"?}``."""
        if not isinstance(inputs, dict):
            raise InputError(f"expected a dict with 'query' and 'documents', got {type(inputs).__name__}")
        unknown = set(inputs) - {"query", "documents", "instruction", "fps", "max_frames"}
        if unknown:
            raise InputError(f"unknown field(s) {sorted(unknown)} in the rerank request")
        if "query" not in inputs:
            raise InputError("the rerank request has no 'query'")
        media = self.media
        if inputs.get("fps") is not None:
            media = replace(media, fps=float(inputs["fps"]))
        if inputs.get("max_frames") is not None:
            media = replace(media, max_frames=int(inputs["max_frames"]))
        documents = inputs.get("documents") or []
        # {} is the reference's NULL input here
        return self._score(inputs["query"], documents, inputs.get("instruction"), media, None, None, allow_empty=True)

    def score(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        instruction: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[float]:
        """Relevance of each document to ``query``, in document order."""
        return self._score(query, documents, instruction, self.media, batch_size, show_progress_bar)

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
        """``(document index, score)`` best first, the ``top_k`` best (all when ``None``)."""
        check_top_k(top_k)
        scores = self.score(
            query, documents, instruction=instruction, batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        return rank_scores(scores, top_k)

    # ----------------------------------------------------------------------------------------------------------
    def prepare(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        instruction: str | None = None,
        limits: InputLimits | None = None,
        check_files: bool = True,
    ) -> PreparedRerank:
        """CPU-only first half of :meth:`score`: check, load and tokenise the query and every (query, document)
        pair, no model work. Raises :class:`~retrieval_pipeline.media.InputError` naming the bad query or
        document, :class:`~retrieval_pipeline.media.LimitError` when the call is over ``limits`` (from headers,
        before decoding; ``max_rerank_tokens`` bounds the estimated tokens the call runs). Run the result with
        :meth:`score_prepared` (servers prepare each request on its own)."""
        parsed_query, parsed_docs, chosen = self._parse_call(query, documents, instruction, limits, check_files)
        if not parsed_docs:
            return PreparedRerank([], 0)
        pixels = (limits or DEFAULT_LIMITS).max_image_pixels
        q = self._load_query(parsed_query, self.media, pixels)
        pairs = [self._encode_document(i, d, q, chosen, self.media, pixels) for i, d in enumerate(parsed_docs)]
        return PreparedRerank(pairs, q.images + q.videos)

    def estimate_tokens(self, parsed_query: ParsedInput, parsed_docs: Sequence[ParsedInput]) -> int:
        """Tokens a call runs, estimated from structure and headers: the query once when the pairs share it
        (shared prefix), else once per document; each document; the prompt's own tokens per pair."""
        query = estimate_tokens(parsed_query, self.media)
        docs = [estimate_tokens(d, self.media) for d in parsed_docs]
        shared = self.share_prefix and len(docs) > 1
        return (query if shared else query * len(docs)) + sum(docs) + PAIR_PROMPT_TOKENS * len(docs)

    def score_prepared(
        self, prepared: PreparedRerank, *, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> list[float]:
        """Second half of :meth:`score`: the scores of prepared pairs, in document order (same numbers)."""
        n = len(prepared.pairs)
        bar = tqdm(total=n, desc="reranking", unit="doc", disable=not show_progress(show_progress_bar, n))
        with bar:
            return self._score_pairs(prepared.pairs, prepared.query_vision, batch_size or self.batch_size, bar)

    # ----------------------------------------------------------------------------------------------------------
    def _parse_call(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        instruction: str | None,
        limits: InputLimits | None = None,
        check_files: bool = True,
        allow_empty: bool = False,
    ) -> tuple[ParsedInput, list[ParsedInput], str]:
        """Structural checks of the query and every document, before any loading or model work."""
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        if instruction is not None:
            check_text(instruction, "instruction")
        if isinstance(documents, (str, dict)) or not isinstance(documents, Sequence):
            raise InputError(f"documents must be a list, got {type(documents).__name__}")
        try:
            parsed_query = parse_input(query, limits=limits, check_files=check_files, allow_empty=allow_empty)
        except InputError as exc:
            raise exc.at(kind="query") from None
        parsed_docs = []
        for i, doc in enumerate(documents):
            try:
                parsed = parse_input(doc, index=i, limits=limits, check_files=check_files, allow_empty=allow_empty)
                parsed_docs.append(parsed)
            except InputError as exc:
                raise exc.at(kind="document") from None
        if limits is not None:
            limits.check_call([parsed_query, *parsed_docs])
            if limits.max_rerank_tokens is not None and parsed_docs:
                cost = self.estimate_tokens(parsed_query, parsed_docs)
                if cost > limits.max_rerank_tokens:
                    raise LimitError(
                        f"this call would run about {cost} tokens ({len(parsed_docs)} documents), over the limit of "
                        f"{limits.max_rerank_tokens} (max_rerank_tokens); send fewer or shorter documents, or a "
                        "smaller query image",
                        limit="max_rerank_tokens",
                        value=cost,
                        maximum=limits.max_rerank_tokens,
                        kind="request",
                    )
        return parsed_query, parsed_docs, instruction or self.default_instruction

    def _load_query(
        self, parsed_query: ParsedInput, media: MediaSettings, max_image_pixels: int = MAX_IMAGE_PIXELS
    ) -> _Query:
        """The query is loaded, its media decoded and its images resized once per call, whatever the number of
        documents; its patches are then kept once (:meth:`Encoded.share_leading`), not once per pair."""
        from qwen_vl_utils.vision_process import fetch_image

        try:
            loaded = load_input(
                parsed_query,
                default_max_frames=media.max_frames,
                timeout=self.url_timeout,
                max_image_pixels=max_image_pixels,
            )
            content = content_items(loaded, media)
            query = _Query(
                content,
                images=sum(1 for c in content if c["type"] == "image"),
                videos=sum(1 for c in content if c["type"] == "video"),
            )
            if query.images and not query.videos:
                # qwen-vl-utils' resize and the image processor, once; every pair then carries the query's images
                # as their token blocks and shares their patches
                positions = [k for k, c in enumerate(content) if c["type"] == "image"]
                resized = [fetch_image(content[k], image_patch_size=IMAGE_PATCH_SIZE) for k in positions]
                shared, grids, blocks = encode_images_once(self.processor, resized)
                for k, block in zip(positions, blocks):
                    content[k] = {"type": "tokens", "ids": block}
                query.leading = (shared, grids)
        except InputError as exc:
            raise exc.at(kind="query") from None
        except ValueError as exc:  # qwen-vl-utils: an aspect ratio over 200
            raise InputError(f"vision preprocessing failed: {exc}", kind="query") from None
        return query

    def _encode_document(
        self,
        index: int,
        parsed_doc: ParsedInput,
        query: _Query,
        instruction: str,
        media: MediaSettings,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> Encoded:
        try:
            # (no image budget here: the reference's truncation keeps every special token, vision ones included)
            loaded = load_input(
                parsed_doc,
                index=index,
                default_max_frames=media.max_frames,
                timeout=self.url_timeout,
                max_image_pixels=max_image_pixels,
            )
            conversation = rerank_conversation(query.content, content_items(loaded, media), instruction)
            return self._encode_pair(conversation, query)
        except InputError as exc:
            raise exc.at(index=index, kind="document") from None

    def _score(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        instruction: str | None,
        media: MediaSettings,
        batch_size: int | None,
        show_progress_bar: bool | None,
        *,
        allow_empty: bool = False,
    ) -> list[float]:
        parsed_query, parsed_docs, chosen = self._parse_call(query, documents, instruction, allow_empty=allow_empty)
        if not parsed_docs:
            return []
        q = self._load_query(parsed_query, media)
        batch_size = batch_size or self.batch_size
        scores: list[float] = []
        n = len(parsed_docs)
        bar = tqdm(total=n, desc="reranking", unit="doc", disable=not show_progress(show_progress_bar, n))
        with bar:
            for window in windows(n, lambda i: self._encode_document(i, parsed_docs[i], q, chosen, media)):
                scores.extend(self._score_pairs(list(window.values()), q.images + q.videos, batch_size, bar))
        return scores

    def _score_pairs(self, pairs: list[Encoded], query_vision: int, batch_size: int, bar: tqdm) -> list[float]:
        """Scores of encoded pairs in order; identical pairs run once. With a shared prefix, it runs once and the
        batches run only the pairs' own tokens after it; else the batches run whole pairs."""
        unique = distinct(pairs)
        prefix = self._shared_prefix(unique, query_vision) if self.share_prefix and len(unique) > 1 else 0
        forward: Callable[[list[Encoded]], list[float]] = self._forward_pairs
        if prefix:
            cache = self._run_prefix(unique[0], prefix)

            def forward(group: list[Encoded]) -> list[float]:
                return self._forward_suffixes(group, prefix, cache)

        results = run_batched(
            pairs,
            forward,
            batch_size=batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_padding=self.max_padding,
            length=lambda enc: len(enc) - prefix,
            bar=bar,
        )
        return [results[enc.key] for enc in pairs]

    def _encode_pair(self, conversation: list[dict[str, Any]], query: _Query | None = None) -> Encoded:
        enc = encode_conversation(
            self.processor,
            conversation,
            max_length=None,
            truncation=False,
            text_budget=self.max_length,
            leading=query.leading if query is not None else None,
        )
        ids = enc.input_ids.tolist()
        if len(ids) > self.max_length + KEEP_TAIL_TOKENS:
            head = truncate_keep_special(ids[:-KEEP_TAIL_TOKENS], self.max_length, self._special_ids)
            enc.input_ids = torch.tensor(head + ids[-KEEP_TAIL_TOKENS:], dtype=torch.long)
        if query is not None and query.leading is None:  # a query with videos: its patches move out of the pair
            query.shared = enc.share_leading(query.images, query.videos, query.shared)
        enc.compute_key()
        return enc

    # ----------------------------------------------------------------------------------------------------------
    # Model calls: the shared prefix (see :mod:`.prefix_cache`), its suffixes, whole pairs; yes/no from the states

    def _shared_prefix(self, items: list[Encoded], query_vision: int) -> int:
        return shared_prefix_length(items, query_vision, self._vision_start_id, self._vision_end_id)

    @locked
    def _run_prefix(self, enc: Encoded, prefix: int) -> PrefixCache:
        return run_prefix(self.model, enc, prefix, self.processor, self.device, self.dtype)

    @locked
    @torch.inference_mode()
    def _forward_suffixes(self, items: list[Encoded], prefix: int, prefix_cache: PrefixCache) -> list[float]:
        states = forward_suffixes(
            self.model, items, prefix, prefix_cache, self.processor, self._pad_id, self.device, self.dtype
        )
        return self._scores(states)

    @locked
    @torch.inference_mode()
    def _forward_pairs(self, items: list[Encoded]) -> list[float]:
        return self._scores(last_token_states(self.model, self._collate(items), self.device, self.dtype))

    def _scores(self, last_hidden: torch.Tensor) -> list[float]:
        return torch.sigmoid(last_hidden.float() @ self._score_weight).cpu().tolist()
