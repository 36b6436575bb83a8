"""The generation step: question + retrieved items -> answer with its sources.

:class:`Qwen3VLGenerator` runs a Qwen3-VL instruct checkpoint through transformers
(``Qwen3VLForConditionalGeneration.generate``), seeing retrieved images, PDF pages and video frames as pixels.
Anything callable as ``generator(question, hits) -> str`` can take its place (an API client, a LlamaIndex or
LangChain LLM wrapped in a function, ...).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..media import InputError, LimitError, load_input, parse_input
from ..settings import PIXELS_PER_TOKEN
from .batching import batch_to_device, token_types
from .encoding import MediaSettings, content_items, encode_conversation, estimate_tokens, estimate_vision_tokens
from .runtime import CheckpointModel, settings

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer questions using only the retrieved context items. Each item is numbered [n]. "
    "Cite the items you used as [n]. If the context does not contain the answer, say so."
)
# Generation sees fewer pixels per image than retrieval: enough to read a page, bounded tokens for the prompt.
GENERATION_MAX_PIXELS = 1024 * PIXELS_PER_TOKEN
GENERATION_TOTAL_PIXELS = 4 * 768 * PIXELS_PER_TOKEN
# Tokens of retrieved context a prompt may hold; past it the lowest-ranked items are left out.
CONTEXT_TOKENS = 6144
# Tokens a whole prompt (conversation + retrieved context) may hold by default: prompt processing time and memory
# grow with it (a 99,000-character conversation held a CPU for minutes). A conversation over it is refused; the
# context gets what the conversation leaves, up to CONTEXT_TOKENS.
MAX_PROMPT_TOKENS = 16384
HIT_OVERHEAD_TOKENS = 16  # a context item's "[n] source (page)" line around it


class Generator(Protocol):
    def __call__(self, question: str, hits: Sequence[Any]) -> str: ...


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "sources": [h.to_dict() for h in self.sources]}


class Qwen3VLGenerator(CheckpointModel):
    """Answer from retrieved multimodal context with a Qwen3-VL instruct model (hub id or local folder)."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | torch.device | None = None,
        torch_dtype: str | torch.dtype | None = None,
        max_new_tokens: int = 256,
        max_pixels: int = GENERATION_MAX_PIXELS,
        total_pixels: int = GENERATION_TOTAL_PIXELS,
        system_prompt: str = SYSTEM_PROMPT,
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
        **from_pretrained_kwargs: Any,
    ) -> None:
        from transformers import Qwen3VLForConditionalGeneration

        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt
        self.media = MediaSettings(max_pixels=max_pixels, total_pixels=total_pixels)
        self.init_kwargs = settings(
            device=device,
            torch_dtype=torch_dtype,
            max_new_tokens=max_new_tokens,
            max_pixels=max_pixels,
            total_pixels=total_pixels,
            system_prompt=system_prompt,
            max_prompt_tokens=max_prompt_tokens,
            **from_pretrained_kwargs,
        )
        self._load_checkpoint(
            model_name_or_path,
            Qwen3VLForConditionalGeneration,
            device=device,
            torch_dtype=torch_dtype,
            from_pretrained_kwargs=from_pretrained_kwargs,
        )

    def conversation(self, question: str, hits: Sequence[Any]) -> list[dict[str, Any]]:
        """The RAG prompt as a chat of multimodal objects: numbered context items, then the question. Each hit shows
        what its record says a generator should see (``hit.context()``: the item, then e.g. a PDF page's text).
        The context is what fits beside the question (:meth:`fit_context`); a question over
        ``max_prompt_tokens`` by itself is a :class:`LimitError`."""
        return self._rag_chat(question, self._given(question, hits))

    def _given(self, question: str, hits: Sequence[Any]) -> list[Any]:
        """The hits a prompt for ``question`` holds (a question over the bound by itself raises)."""
        return self.fit_context(hits, self.check_prompt(self._rag_chat(question, [])))

    def check_prompt(self, messages: Sequence[dict[str, Any]]) -> int:
        """The prompt tokens of ``messages`` (:meth:`prompt_tokens`); over ``max_prompt_tokens`` a
        :class:`LimitError` naming the limit."""
        tokens = self.prompt_tokens(messages)
        if tokens > self.max_prompt_tokens:
            raise LimitError(
                f"the prompt needs {tokens} tokens, over the limit of {self.max_prompt_tokens} (max_prompt_tokens); "
                "shorten the conversation",
                limit="max_prompt_tokens",
                value=tokens,
                maximum=self.max_prompt_tokens,
                field="messages",
            )
        return tokens

    def prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens ``messages`` make as a prompt, before any pixel is decoded: the chat template's text exactly (empty
        messages count), images and videos as estimated from their headers (exact for images of known size)."""
        vision = 0
        text_only = []
        for m, message in enumerate(messages):
            content = message.get("content")
            parts = [content] if isinstance(content, (str, dict)) else list(content or [])
            items = []
            for p, part in enumerate(parts):
                try:
                    parsed = parse_input(part, allow_empty=True)
                except InputError as exc:
                    raise exc.at(index=f"{m}.{p}", kind="message part") from None
                vision += estimate_vision_tokens(parsed, self.media)
                items += [{"type": "text", "text": t} for t in parsed.texts]
            text_only.append({"role": message.get("role", "user"), "content": items})
        text = self.processor.apply_chat_template(text_only, add_generation_prompt=True, tokenize=False)
        return len(self.processor.tokenizer(text)["input_ids"]) + vision

    def fit_context(self, hits: Sequence[Any], spent: int, budget: int | None = None) -> list[Any]:
        """The best hits whose context fits beside a conversation of ``spent`` tokens: at most ``budget`` tokens
        (default :data:`CONTEXT_TOKENS`) and what ``max_prompt_tokens`` leaves; the lowest-ranked leave first. An
        item whose content cannot be read is left out with a logged reason."""
        room = min(CONTEXT_TOKENS if budget is None else budget, self.max_prompt_tokens - spent)
        given, used = [], 0
        for hit in hits:
            try:
                parts = hit.context() if hasattr(hit, "context") else [hit.item]
                parsed = [parse_input(part) for part in parts]
                cost = sum(estimate_tokens(x, self.media) for x in parsed) + HIT_OVERHEAD_TOKENS
                for x in parsed:
                    load_input(x)  # a deleted or corrupt source is left out here, not a failed answer later
            except InputError as exc:
                name = hit.describe() if hasattr(hit, "describe") else getattr(hit, "id", "?")
                logger.warning("context item %s left out: %s", name, exc.reason)
                continue
            if used + cost > room:
                break
            given.append(hit)
            used += cost
        return given

    def _rag_chat(self, question: str, hits: Sequence[Any]) -> list[dict[str, Any]]:
        return rag_conversation(self.system_prompt, [{"role": "user", "content": [{"text": question}]}], hits, rag=True)

    def __call__(self, question: str, hits: Sequence[Any]) -> str:
        return self.answer(question, hits)[0]

    def answer(self, question: str, hits: Sequence[Any]) -> tuple[str, list[Any]]:
        """The answer and the hits it was given (those that fit the prompt and could be read)."""
        given = self._given(question, hits)
        return self.chat(self._rag_chat(question, given)), given

    def _chat_template_input(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m, message in enumerate(messages):
            content = message.get("content")
            parts = [content] if isinstance(content, (str, dict)) else list(content or [])
            items: list[dict[str, Any]] = []
            for p, part in enumerate(parts):
                try:
                    loaded = load_input(parse_input(part))
                except InputError as exc:
                    raise exc.at(index=f"{m}.{p}", kind="message part") from None
                items.extend(content_items(loaded, self.media))
            out.append({"role": message.get("role", "user"), "content": items})
        return out

    def _inputs(self, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
        self.check_prompt(messages)  # before decoding: the bound from the text and the headers
        conversation = self._chat_template_input(messages)
        enc = encode_conversation(self.processor, conversation, max_length=None, truncation=False)
        if len(enc) > self.max_prompt_tokens:  # and exactly, once encoded (special-token strings, video frames)
            raise LimitError(
                f"the prompt has {len(enc)} tokens, over the limit of {self.max_prompt_tokens} (max_prompt_tokens)",
                limit="max_prompt_tokens",
                value=len(enc),
                maximum=self.max_prompt_tokens,
                field="messages",
            )
        ids = enc.input_ids[None]
        tensors = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": token_types(ids, self.processor.image_token_id, self.processor.video_token_id),
            "pixel_values": enc.pixel_values,
            "image_grid_thw": enc.image_grid_thw,
            "pixel_values_videos": enc.pixel_values_videos,
            "video_grid_thw": enc.video_grid_thw,
        }
        return {k: v for k, v in batch_to_device(tensors, self.device, self.dtype).items() if v is not None}

    def chat(self, messages: Sequence[dict[str, Any]], *, max_new_tokens: int | None = None, **sampling: Any) -> str:
        """Generate the assistant's reply to ``messages``: ``[{"role", "content": [multimodal objects]}]``, each
        content part a str or ``{"text" / "image" / "video": ...}`` (paths, URLs, PIL images, bytes). ``sampling``:
        :meth:`stream`'s options. The text equals the concatenation of :meth:`stream`'s pieces."""
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens, **sampling))

    def stream(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        cancel: threading.Event | None = None,
        result: GenerationResult | None = None,
    ) -> Iterator[str]:
        """The reply as it is generated, in pieces of text (leading and trailing whitespace of the whole reply left
        out). Greedy at ``temperature`` 0 (the default), else sampled (``top_p``, ``seed``). Generation stops at
        ``max_new_tokens``, at a ``stop`` string (not included), or when ``cancel`` is set (a client went away);
        closing the iterator early sets it. ``result`` receives the token counts and the finish reason."""
        result = result if result is not None else GenerationResult()
        cancel = cancel or threading.Event()
        inputs = self._inputs(messages)
        result.prompt_tokens = int(inputs["input_ids"].shape[1])
        limit = max_new_tokens or self.max_new_tokens
        streamer = _CountingStreamer(self.processor.tokenizer, result, timeout=None)
        options = _sampling(temperature, top_p, self.processor.tokenizer)
        worker = threading.Thread(
            target=self._generate,
            args=(inputs, limit, options, streamer, cancel, seed, result),
            name="generate",
            daemon=True,
        )
        worker.start()
        trimmer = _Trimmer(stop or ())
        try:
            for piece in streamer:
                out = trimmer.feed(piece)
                if out:
                    yield out
                if trimmer.stopped:
                    result.finish_reason = "stop"
                    cancel.set()
                    break
            tail = trimmer.flush()
            if tail:
                yield tail
        finally:
            cancel.set()  # a consumer that stops early stops the generation
            worker.join()
        if result.error is not None:
            raise result.error
        if result.finish_reason is None:
            result.finish_reason = "length" if result.completion_tokens >= limit else "stop"

    @torch.inference_mode()
    def _generate(
        self,
        inputs: dict[str, Any],
        limit: int,
        options: dict[str, Any],
        streamer: Any,
        cancel: threading.Event,
        seed: int | None,
        result: GenerationResult,
    ) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        try:
            with self._lock:
                if cancel.is_set():
                    return
                if seed is not None:
                    torch.manual_seed(seed)
                self.model.generate(
                    **inputs,
                    max_new_tokens=limit,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    **options,
                )
        except Exception as exc:  # reported to the consumer
            result.error = exc
        finally:
            streamer.end()


def rag_conversation(
    system_prompt: str,
    turns: Sequence[dict[str, Any]],
    hits: Sequence[Any],
    *,
    client_system: str = "",
    rag: bool | None = None,
) -> list[dict[str, Any]]:
    """The one RAG prompt, for a question (``ask``, ``run``) and for a conversation (chat completions): the system
    prompt (a client's own system text after it) when the reply is grounded (there are ``hits``, or ``rag``),
    earlier turns as they are, and the last user turn preceded by the numbered context items and "Question: "."""
    rag = bool(hits) if rag is None else rag
    system = (system_prompt + ("\n\n" + client_system if client_system else "")) if rag else client_system
    out: list[dict[str, Any]] = [{"role": "system", "content": [{"text": system}]}] if system else []
    out.extend(turns[:-1])
    content: list[Any] = []
    for n, hit in enumerate(hits, 1):
        content.append({"text": f"[{n}] {hit.describe()}\n"})
        content.extend(hit.context() if hasattr(hit, "context") else [hit.item])
        content.append({"text": "\n"})
    if rag:
        content.append({"text": "Question: "})
    out.append({"role": "user", "content": content + list(turns[-1]["content"])})
    return out


@dataclass
class GenerationResult:
    """What one generation did: tokens in and out, why it ended ("stop": end of text or a stop string, "length":
    ``max_new_tokens``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: BaseException | None = None


def _sampling(temperature: float, top_p: float | None, tokenizer: Any) -> dict[str, Any]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if temperature <= 0:
        return {"do_sample": False, "pad_token_id": pad, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p or 1.0, "top_k": None, "pad_token_id": pad}


class _CountingStreamer:
    """transformers' ``TextIteratorStreamer`` (text of the new tokens, as they come) that also counts them."""

    def __init__(self, tokenizer: Any, result: GenerationResult, timeout: float | None) -> None:
        from transformers import TextIteratorStreamer

        self._inner = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self._result = result
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self._result.completion_tokens += int(value.numel())
        self._prompt_seen = True
        self._inner.put(value)

    def end(self) -> None:
        if not getattr(self, "_ended", False):
            self._ended = True
            self._inner.end()

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner)


class _Trimmer:
    """Pieces of text in, the same text out without its leading and trailing whitespace (a piece's trailing
    whitespace is held until more text comes) and cut before the first stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._started = False
        self._held = ""  # trailing whitespace, or a tail that may begin a stop string
        self._longest = max((len(s) for s in self.stop), default=0)

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        text = self._held + piece
        if not self._started:
            text = text.lstrip()
            if not text:
                self._held = ""
                return ""
            self._started = True
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                self.stopped = True
                return text[:at].rstrip()
        # what may begin a stop string waits, and so does the whitespace before it (or at the end)
        cut = max(0, len(text) - (self._longest - 1)) if self._longest > 1 else len(text)
        cut = len(text[:cut].rstrip())
        self._held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The end of the text: what was held back, without trailing whitespace."""
        out, self._held = ("" if self.stopped else self._held.rstrip()), ""
        return out
