"""A Qwen3-VL instruct model (transformers) as a LangChain chat model that sees images in messages."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, model_validator

from retrieval_pipeline.models.generator import Qwen3VLGenerator

from .._common import image_input

DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
_ROLES = {"system": "system", "ai": "assistant", "human": "user"}


def _part_input(part: Any) -> Any:
    if isinstance(part, str):
        return {"text": part}
    kind = part.get("type")
    if kind == "text":
        return {"text": part["text"]}
    if kind == "image_url":  # OpenAI-style
        url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
        return {"image": image_input(url)}
    if kind == "image":  # LangChain's standard multimodal block
        if part.get("url"):
            return {"image": part["url"]}
        data = part.get("base64") or part.get("data")
        if data:
            return {"image": image_input(data)}
    if kind == "video" and part.get("url"):
        return {"video": part["url"]}
    raise ValueError(f"unsupported message content block {part!r:.80}")


def messages_to_chat(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        content = message.content
        parts = [content] if isinstance(content, str) else list(content)
        out.append({"role": _ROLES.get(message.type, "user"), "content": [_part_input(p) for p in parts]})
    return out


class ChatQwen3VL(BaseChatModel):
    """``ChatQwen3VL(model="Qwen/Qwen3-VL-2B-Instruct")`` (default ``$QWEN3VL_RAG_GENERATOR_MODEL``) or
    ``ChatQwen3VL(generator=existing)``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str = Field(default_factory=from_env("QWEN3VL_RAG_GENERATOR_MODEL", default=DEFAULT_MODEL))
    max_new_tokens: int = Field(default=256, gt=0)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    generator: Qwen3VLGenerator | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _load(self) -> ChatQwen3VL:
        if self.generator is None:
            self.generator = Qwen3VLGenerator(self.model, max_new_tokens=self.max_new_tokens, **self.model_kwargs)
        return self

    @property
    def _llm_type(self) -> str:
        return "qwen3-vl"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_new_tokens": self.max_new_tokens}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self.generator.chat(messages_to_chat(messages), max_new_tokens=self.max_new_tokens)
        if stop:
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
