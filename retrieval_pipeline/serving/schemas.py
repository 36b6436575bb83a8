"""The wire format: pydantic request and response models of every route and the error body (``ErrorBody``).

Requests are strict (unknown fields and wrong types are a 422 naming the field); responses follow the APIs people
already use (OpenAI embeddings, Cohere / Jina rerank).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

PositiveFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class MultimodalInput(BaseModel):
    """Any of text, image (URL / data URI), video (URL, or a list of frame URLs), with optional settings."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | list[str] | None = None
    image: str | list[str] | None = None
    video: str | list[str] | list[list[str]] | None = None
    instruction: str | None = None
    fps: PositiveFloat | None = None
    max_frames: PositiveInt | None = None
    video_start: Seconds | None = None
    video_end: Seconds | None = None


InputItem = StrictStr | MultimodalInput


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str | list[InputItem] | list[StrictInt] | list[list[StrictInt]] | None = Field(
        default=None, description="A string, or a list of strings / multimodal objects (token ids are refused)."
    )
    messages: list[dict[str, Any]] | None = Field(
        default=None, description="vLLM's chat-style input: one embedding of the messages' content parts."
    )
    model: str | None = Field(
        default=None, description="Checked when given: the served model's name (see /v1/models) or an alias."
    )
    dimensions: PositiveInt | None = Field(default=None, description="Matryoshka dimension.")
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "document"] | None = Field(
        default=None, description="'query' applies the retrieval query instruction."
    )
    instruction: str | None = Field(default=None, description="Instruction for every input (overrides input_type).")
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


Document = StrictStr | dict[str, Any]

# A relevance cut-off (rerank, search, ask, chat retrieval).
MinScore = Annotated[
    float | None,
    Field(
        ge=-1.0,
        le=1.0,
        description="Only hits scoring at least this: the rerank score (0..1) when reranked, else the cosine.",
    ),
]


class RerankRequest(BaseModel):
    """Every rerank dialect's request: Cohere v1 / v2, Jina, vLLM, Infinity. A document is a string, the project's
    multimodal object, the content-part form (``{"content": [...]}``) or a Cohere structured document."""

    model_config = ConfigDict(extra="forbid")
    query: Document
    documents: list[Document]
    top_n: PositiveInt | None = None
    return_documents: bool | None = None
    rank_fields: list[StrictStr] | None = Field(default=None, description="Cohere v1: the fields ranked on.")
    max_chunks_per_doc: PositiveInt | None = Field(default=None, description="Cohere v1; accepted, not used.")
    max_tokens_per_doc: PositiveInt | None = Field(default=None, description="Cohere v2: each document's text cut.")
    raw_scores: bool | None = Field(default=None, description="Infinity: relevance_score is the raw logit difference.")
    instruction: str | None = None
    model: str | None = Field(default=None, description="Checked when given (see /v1/models).")
    truncate_prompt_tokens: int | None = None  # vLLM; accepted
    min_score: MinScore = Field(
        default=None,
        description="Only results whose rerank score (0..1, also with raw_scores) is at least this, before top_n.",
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Any = None


class RerankResponse(BaseModel):
    id: str | None = None
    object: str | None = None
    model: str
    results: list[RerankResult]
    usage: dict[str, int]
    meta: dict[str, Any] | None = None


Filters = Annotated[
    dict[str, Any] | None,
    Field(
        default=None,
        description='Payload filters: {"modality": "image", "metadata.lang": ["en", "de"]}; comparisons '
        '{"metadata.year": {"gte": 2020}} (gt, gte, lt, lte, eq, ne, in, nin); "$and" / "$or" (lists of filters) and '
        '"$not" (a filter).',
    ),
]
Collection = Annotated[
    str | None,
    Field(
        default=None,
        max_length=255,
        description="The collection to search: a name or a vector-store id (default: the one the server started on).",
    ),
]


class SearchKnobs(BaseModel):
    """Stage one's search-time knobs for one request (unset: the server's defaults). An exact full scan is not
    offered over HTTP: on a big collection it reads every vector."""

    model_config = ConfigDict(extra="forbid", strict=True)
    hnsw_ef: int | None = Field(default=None, ge=1, le=2048, description="HNSW beam width")
    oversampling: float | None = Field(
        default=None, ge=1.0, le=20.0, description="quantized candidates per result before rescoring"
    )
    rescore: bool | None = Field(default=None, description="rescore quantized / prefix candidates on the originals")
    prefetch: int | None = Field(default=None, ge=1, le=5000, description="funnel candidates taken on the prefix")
    hybrid: bool | None = Field(default=None, description="fuse BM25 over stored text (default: on where there is)")

    def options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def knobs(value: SearchKnobs | None) -> dict[str, Any] | None:
    return value.options() if value is not None else None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: InputItem
    top_k: int = Field(default=5, ge=1, le=100)
    filters: Filters = None
    rerank: bool = True
    search_options: SearchKnobs | None = None
    min_score: MinScore = None
    collection: Collection = None


class Highlight(BaseModel):
    term: str
    boxes: list[list[float]] = Field(description="[x0, y0, x1, y1] per box, page-relative (0..1, origin top-left).")


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    vector_score: float
    rerank_score: float | None
    stage_one_rank: int = Field(default=0, description="The rank stage one (vector search) gave it, before reranking.")
    modality: str | None = None
    source: str | None = Field(
        default=None, description="URL, or a path relative to the server's source root (a file name otherwise)."
    )
    member: str | None = Field(
        default=None, description="Where in its source the item is: attachment=NAME, entry=PATH (chained with #)."
    )
    page: int | None = None
    sheet: str | None = Field(default=None, description="A spreadsheet page's sheet.")
    segment: list[float] | None = None
    chunk: int | None = None
    metadata: dict[str, Any] | None = None
    text: str = ""
    snippet: str | None = Field(default=None, description="The part of the item's text around the query's words.")
    highlights: list[Highlight] | None = Field(
        default=None,
        description="On a page: where the query's words are (empty when the page has no text layer, e.g. a scan).",
    )


class SearchResponse(BaseModel):
    results: list[SearchHit]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1)
    image: str | None = None
    top_k: int = Field(default=3, ge=1, le=20)
    filters: Filters = None
    rerank: bool = True
    stream: bool = False
    search_options: SearchKnobs | None = None
    min_score: MinScore = None
    collection: Collection = None


class AskResponse(BaseModel):
    question: str
    answer: str
    sources: list[SearchHit]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    index: int | str | None = None
    param: str | None = None
    limit: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 411, 413, 429, 503, 504)
}


def plain(item: Any) -> Any:
    """A request item as the core takes it: a string, or the dict of a multimodal object."""
    return item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item


# ------------------------------------------------------------------------------------------------------------------
# OpenAI chat completions (retrieval-augmented): OpenAI's request, unknown fields accepted and ignored


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: StrictStr
    detail: str | None = None


class ContentPart(BaseModel):
    """OpenAI's content parts: ``text`` and ``image_url`` (an http(s) URL or a data URI)."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None
    image_url: ImageURL | StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: str | None = None


class RetrievalOptions(BaseModel):
    """The extension object ``retrieval``: what the last user turn retrieves (``enabled: false``: plain chat)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool = True
    top_k: int = Field(default=3, ge=1, le=20)
    filters: Filters = None
    rerank: bool = True
    collection: Collection = None
    search_options: SearchKnobs | None = None
    min_score: MinScore = None
    rewrite: bool = Field(
        default=False,
        description="Rewrite a follow-up question into a standalone search query from the conversation (one more "
        "short generation) before retrieving.",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63, description="an int64, as OpenAI's")
    n: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    retrieval: RetrievalOptions | None = None


class ChatSource(SearchHit):
    """A retrieved item given to the model (extension field ``sources``; OpenAI clients ignore it)."""


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    sources: list[ChatSource] = Field(default_factory=list)
    retrieval_query: str | None = None


class CohereEmbedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: list[dict[str, Any]]


class CohereEmbedRequest(BaseModel):
    """Cohere v2 ``/v2/embed``: ``texts``, ``images`` (data URIs) or ``inputs`` (content parts)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"] | None = None
    texts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None
    inputs: list[CohereEmbedInput] | None = None
    output_dimension: PositiveInt | None = None
    embedding_types: list[Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]] | None = None
    max_tokens: PositiveInt | None = None
    truncate: Literal["NONE", "START", "END"] | None = None
