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

from .encoding import MediaSettings, content_items, encode_conversation
from .media import load_input, parse_input
from .runtime import load_processor, pop_dtype, resolve_device, resolve_dtype

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


class Qwen3VLGenerator:
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

        self.model_name_or_path = str(model_name_or_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(pop_dtype(torch_dtype, from_pretrained_kwargs), self.device)
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.media = MediaSettings(max_pixels=max_pixels, total_pixels=total_pixels)
        self.processor = load_processor(self.model_name_or_path, **from_pretrained_kwargs)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(
            self.model_name_or_path, dtype=self.dtype, **from_pretrained_kwargs
        ).to(self.device)
        self.model.eval()

    def to(self, device: str | torch.device) -> Qwen3VLGenerator:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def conversation(self, question: str, hits: Sequence[Any]) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for n, hit in enumerate(hits, 1):
            content.append({"type": "text", "text": f"[{n}] {hit.describe()}\n"})
            loaded = load_input(parse_input(hit.item))
            items = content_items(loaded, self.media)
            if hit.modality == "pdf-page" and hit.text:
                items.append({"type": "text", "text": f"Page text: {hit.text}"})
            content.extend(items)
            content.append({"type": "text", "text": "\n"})
        content.append({"type": "text", "text": f"Question: {question}"})
        return [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
            {"role": "user", "content": content},
        ]

    @torch.inference_mode()
    def __call__(self, question: str, hits: Sequence[Any]) -> str:
        enc = encode_conversation(self.processor, self.conversation(question, hits), max_length=None, truncation=False)
        ids = enc.input_ids[None].to(self.device)
        mm_types = torch.zeros_like(ids, dtype=torch.int32)
        mm_types[ids == self.processor.image_token_id] = 1
        mm_types[ids == self.processor.video_token_id] = 2
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": mm_types,
        }
        for key in ("pixel_values", "pixel_values_videos"):
            value = getattr(enc, key)
            if value is not None:
                inputs[key] = value.to(self.device, self.dtype)
        for key in ("image_grid_thw", "video_grid_thw"):
            value = getattr(enc, key)
            if value is not None:
                inputs[key] = value.to(self.device)
        tokenizer = self.processor.tokenizer
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()
