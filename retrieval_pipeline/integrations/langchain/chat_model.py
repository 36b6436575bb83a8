"""A Qwen3-VL instruct model (transformers) as a LangChain chat model that sees images in messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, field_validator, model_validator

from retrieval_pipeline.models.generator import Qwen3VLGenerator

from .._common import (
    DEFAULT_GENERATOR_MODEL,
    MODEL_ENV,
    RebuiltWhenUnpickled,
    collect_model_kwargs,
    image_input,
    iterate_in_thread,
    load_into,
)

DEFAULT_MODEL = DEFAULT_GENERATOR_MODEL  # kept for imports of the old name
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


class ChatQwen3VL(RebuiltWhenUnpickled, BaseChatModel):
    """``ChatQwen3VL(model="Qwen/Qwen3-VL-2B-Instruct", device="cuda")`` (``model`` defaults to
    ``$QWEN3VL_RAG_GENERATOR_MODEL``) loads the model, other keyword arguments go to :class:`Qwen3VLGenerator`;
    ``ChatQwen3VL(generator=existing)`` shares a loaded one. Decoding is greedy; ``stream()`` / ``astream()`` yield
    the reply token by token (joined, exactly ``invoke()``'s reply)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    model: str = Field(default_factory=from_env(MODEL_ENV["generator"], default=DEFAULT_GENERATOR_MODEL))
    max_new_tokens: int = Field(default=256, gt=0, alias="max_tokens", description="Reply length limit (tokens).")
    temperature: float | None = Field(default=None, description="0 or None: decoding is greedy (deterministic).")
    stop: list[str] | None = Field(default=None, description="Cut the reply before the first of these strings.")
    streaming: bool = Field(default=False, description="invoke() streams to the callbacks (LangChain's option).")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLGenerator.")
    generator: Qwen3VLGenerator | None = Field(default=None, exclude=True, description="A loaded core generator.")
    _core_field: ClassVar[str] = "generator"

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Unknown keyword arguments (``device``, ``max_pixels``, ...) are core model arguments; ``max_tokens`` is
        LangChain's name of ``max_new_tokens``."""
        fields = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        return collect_model_kwargs(fields, values, cls.__name__)

    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, value: float | None) -> float | None:
        if value:
            raise ValueError(f"temperature={value}: this model decodes greedily; pass temperature=0 or None")
        return value

    @model_validator(mode="after")
    def _load(self) -> ChatQwen3VL:
        load_into(self, Qwen3VLGenerator, "generator", "model", max_new_tokens=self.max_new_tokens)
        return self

    @property
    def _llm_type(self) -> str:
        return "qwen3-vl"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_new_tokens": self.max_new_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="qwen3vl",
            ls_model_name=kwargs.get("model", self.model),
            ls_model_type="chat",
            ls_max_tokens=self.max_new_tokens,
            ls_temperature=self.temperature or 0.0,
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None) -> Iterator[str]:
        """The reply as the core generator streams it, cut before the first ``stop`` string."""
        chat = messages_to_chat(messages)
        return self.generator.stream(chat, max_new_tokens=self.max_new_tokens, stop=stop or self.stop)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(self._pieces(messages, stop))
        message = AIMessage(content=text, response_metadata={"model_name": self.model})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Token by token from the core generator's streamer; the pieces join to :meth:`invoke`'s reply."""
        for piece in self._pieces(messages, stop):
            if run_manager is not None:
                run_manager.on_llm_new_token(piece)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        last = AIMessageChunk(content="", response_metadata={"model_name": self.model}, chunk_position="last")
        yield ChatGenerationChunk(message=last)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for piece in iterate_in_thread(lambda: self._pieces(messages, stop)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        last = AIMessageChunk(content="", response_metadata={"model_name": self.model}, chunk_position="last")
        yield ChatGenerationChunk(message=last)
