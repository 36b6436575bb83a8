"""A Qwen3-VL instruct model (transformers) as a LangChain chat model that sees images in messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, field_validator, model_validator

from retrieval_pipeline.models.generator import Qwen3VLGenerator

from .._common import DEFAULT_GENERATOR_MODEL, MODEL_ENV, collect_model_kwargs, image_input, load_core_model

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


class ChatQwen3VL(BaseChatModel):
    """``ChatQwen3VL(model="Qwen/Qwen3-VL-2B-Instruct", device="cuda")`` (``model`` defaults to
    ``$QWEN3VL_RAG_GENERATOR_MODEL``) loads the model, other keyword arguments go to :class:`Qwen3VLGenerator`;
    ``ChatQwen3VL(generator=existing)`` shares a loaded one. Decoding is greedy; ``stream()`` yields the reply as
    one chunk (the core generator does not stream tokens)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    model: str = Field(default_factory=from_env(MODEL_ENV["generator"], default=DEFAULT_GENERATOR_MODEL))
    max_new_tokens: int = Field(default=256, gt=0, alias="max_tokens", description="Reply length limit (tokens).")
    temperature: float | None = Field(default=None, description="0 or None: decoding is greedy (deterministic).")
    stop: list[str] | None = Field(default=None, description="Cut the reply before the first of these strings.")
    streaming: bool = Field(default=False, description="Accepted for compatibility; replies come as one chunk.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLGenerator.")
    generator: Qwen3VLGenerator | None = Field(default=None, exclude=True, description="A loaded core generator.")

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
        if self.generator is not None and "model" not in self.model_fields_set:
            self.model = self.generator.model_name_or_path
        fixed = {"max_new_tokens": self.max_new_tokens}
        self.generator = load_core_model(
            Qwen3VLGenerator, self.generator, self.model, self.model_kwargs, "generator", **fixed
        )
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

    def _reply(self, messages: list[BaseMessage], stop: list[str] | None) -> str:
        text = self.generator.chat(messages_to_chat(messages), max_new_tokens=self.max_new_tokens)
        stop = stop or self.stop
        if stop:
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(content=self._reply(messages, stop), response_metadata={"model_name": self.model})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The whole reply as one (last) chunk: the core generator does not stream tokens."""
        text = self._reply(messages, stop)
        if run_manager is not None:
            run_manager.on_llm_new_token(text)
        chunk = AIMessageChunk(content=text, response_metadata={"model_name": self.model}, chunk_position="last")
        yield ChatGenerationChunk(message=chunk)
