"""A Qwen3-VL instruct model (transformers) as a LlamaIndex LLM that sees images and videos in chat messages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    VideoBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from retrieval_pipeline.models.generator import Qwen3VLGenerator

from .._common import (
    DEFAULT_GENERATOR_MODEL,
    RebuiltWhenUnpickled,
    deprecated_alias,
    in_thread,
    init_core_model,
    iterate_in_thread,
)

DEFAULT_MODEL = DEFAULT_GENERATOR_MODEL  # kept for imports of the old name


def _block_input(block: Any) -> Any:
    if isinstance(block, TextBlock):
        return {"text": block.text}
    if isinstance(block, ImageBlock):
        if block.path is not None:
            return {"image": str(block.path)}
        if block.url is not None:
            return {"image": str(block.url)}
        return {"image": block.resolve_image().read()}
    if isinstance(block, VideoBlock) and (block.path is not None or block.url is not None):
        return {"video": str(block.path or block.url)}
    raise ValueError(f"unsupported content block {type(block).__name__} for Qwen3-VL")


def messages_to_chat(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages (text, image and video blocks) -> the generator's chat format."""
    role_names = {MessageRole.SYSTEM: "system", MessageRole.ASSISTANT: "assistant"}
    return [{"role": role_names.get(m.role, "user"), "content": [_block_input(b) for b in m.blocks]} for m in messages]


class Qwen3VLLLM(RebuiltWhenUnpickled, CustomLLM):
    """``Qwen3VLLLM(model="Qwen/Qwen3-VL-2B-Instruct", device="cuda")`` (``model`` defaults to
    ``$QWEN3VL_RAG_GENERATOR_MODEL``; other keyword arguments go to :class:`Qwen3VLGenerator`) or
    ``Qwen3VLLLM(generator=existing)``; multimodal chat (``RetrieverQueryEngine.from_args(..., llm=Qwen3VLLLM(...),
    multimodal=True)``) passes retrieved images as pixels. ``core_kwargs`` is the deprecated name of
    ``model_kwargs``."""

    model: str = Field(default=DEFAULT_GENERATOR_MODEL, description="Hub id or local folder of an instruct model.")
    max_new_tokens: int = Field(default=256, gt=0, description="Answer length limit.")
    context_window: int = Field(default=32768, description="Prompt tokens the model accepts.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLGenerator.")

    _generator: Qwen3VLGenerator = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        *,
        generator: Qwen3VLGenerator | None = None,
        max_new_tokens: int = 256,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        generator, name, opts = init_core_model(
            "generator",
            Qwen3VLGenerator,
            generator,
            model,
            kwargs,
            type(self),
            {"max_new_tokens": max_new_tokens},
            model_kwargs=model_kwargs,
        )
        super().__init__(model=name, max_new_tokens=max_new_tokens, **opts)
        self._generator = generator

    core_kwargs = deprecated_alias("core_kwargs", "model_kwargs")  # deprecated name

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model,
        )

    def _stream(self, chat: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        """(reply so far, new piece), from the core generator's token streamer."""
        text = ""
        for piece in self._generator.stream(chat, max_new_tokens=self.max_new_tokens):
            text += piece
            yield text, piece

    @staticmethod
    def _prompt_chat(prompt: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [prompt]}]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = self._generator.chat(self._prompt_chat(prompt), max_new_tokens=self.max_new_tokens)
        return CompletionResponse(text=text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        chat = self._prompt_chat(prompt)
        return (CompletionResponse(text=text, delta=piece) for text, piece in self._stream(chat))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = self._generator.chat(messages_to_chat(messages), max_new_tokens=self.max_new_tokens)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """The reply token by token, from the same prompt as :meth:`chat` (images and videos included)."""
        chat = messages_to_chat(messages)
        return (
            ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
            for text, piece in self._stream(chat)
        )

    # async: generation runs in a worker thread, the event loop keeps serving ----------------------------------
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await in_thread(self.complete, prompt, formatted=formatted, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        chat = self._prompt_chat(prompt)

        async def gen() -> CompletionResponseAsyncGen:
            async for text, piece in iterate_in_thread(lambda: self._stream(chat)):
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await in_thread(self.chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        chat = messages_to_chat(messages)

        async def gen() -> ChatResponseAsyncGen:
            async for text, piece in iterate_in_thread(lambda: self._stream(chat)):
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)

        return gen()
