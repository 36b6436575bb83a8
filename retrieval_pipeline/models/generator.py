"""The generation step: question + retrieved items -> answer with its sources.

:class:`Qwen3VLGenerator` runs a Qwen3-VL instruct checkpoint through transformers
(``Qwen3VLForConditionalGeneration.generate``), seeing retrieved images, PDF pages and video frames as pixels.
Anything callable as ``generator(question, hits) -> str`` can take its place (an API client, a LlamaIndex or
LangChain LLM wrapped in a function, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..media import InputError, load_input, parse_input
from .batching import batch_to_device, token_types
from .encoding import MediaSettings, content_items, encode_conversation
from .runtime import CheckpointModel

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer questions using only the retrieved context items. Each item is numbered [n]. "
    "Cite the items you used as [n]. If the context does not contain the answer, say so."
)
# Generation sees fewer pixels per image than retrieval: enough to read a page, bounded tokens for the prompt.
GENERATION_MAX_PIXELS = 1024 * 32 * 32
GENERATION_TOTAL_PIXELS = 4 * 768 * 32 * 32


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
        **from_pretrained_kwargs: Any,
    ) -> None:
        from transformers import Qwen3VLForConditionalGeneration

        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.media = MediaSettings(max_pixels=max_pixels, total_pixels=total_pixels)
        self._load_checkpoint(
            model_name_or_path,
            Qwen3VLForConditionalGeneration,
            device=device,
            torch_dtype=torch_dtype,
            from_pretrained_kwargs=from_pretrained_kwargs,
        )

    def conversation(self, question: str, hits: Sequence[Any]) -> list[dict[str, Any]]:
        """The RAG prompt as a chat of multimodal objects: numbered context items, then the question. Each hit shows
        what its record says a generator should see (``hit.context()``: the item, then e.g. a PDF page's text)."""
        content: list[Any] = []
        for n, hit in enumerate(hits, 1):
            content.append({"text": f"[{n}] {hit.describe()}\n"})
            content.extend(hit.context() if hasattr(hit, "context") else [hit.item])
            content.append({"text": "\n"})
        content.append({"text": f"Question: {question}"})
        return [{"role": "system", "content": [{"text": self.system_prompt}]}, {"role": "user", "content": content}]

    def __call__(self, question: str, hits: Sequence[Any]) -> str:
        return self.chat(self.conversation(question, hits))

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

    @torch.inference_mode()
    def chat(self, messages: Sequence[dict[str, Any]], *, max_new_tokens: int | None = None) -> str:
        """Generate the assistant's reply to ``messages``: ``[{"role", "content": [multimodal objects]}]``, each
        content part a str or ``{"text" / "image" / "video": ...}`` (paths, URLs, PIL images, bytes)."""
        conversation = self._chat_template_input(messages)
        enc = encode_conversation(self.processor, conversation, max_length=None, truncation=False)
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
        inputs = {k: v for k, v in batch_to_device(tensors, self.device, self.dtype).items() if v is not None}
        tokenizer = self.processor.tokenizer
        with self._lock:
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()
