"""Real and hostile input to the core models: special-token strings in text, invalid Unicode, huge texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MEDIA

from retrieval_pipeline import InputError
from retrieval_pipeline.media import load_input, parse_input
from retrieval_pipeline.models.encoding import content_items, embedding_conversation, encode_conversation

CHELSEA = str(MEDIA / "chelsea.jpg")
SPECIALS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>"]


def _reference_ids(embedder, item, instruction="Represent the user's input."):
    """What the reference does: the whole templated prompt through the checkpoint's processor, untouched."""
    from qwen_vl_utils import process_vision_info

    loaded = load_input(parse_input(item))
    conversation = embedding_conversation(loaded, embedder.media, instruction)
    text = embedder.processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
    images, videos, _ = process_vision_info([conversation], image_patch_size=16, return_video_kwargs=True)
    out = embedder.processor(text=text, images=images, videos=videos, padding=False, do_resize=False)
    return list(out["input_ids"][0])


def _our_ids(embedder, item, instruction="Represent the user's input."):
    loaded = load_input(parse_input(item))
    conversation = embedding_conversation(loaded, embedder.media, instruction)
    enc = encode_conversation(embedder.processor, conversation, max_length=embedder.max_length, truncation=True)
    return enc.input_ids.tolist()


@pytest.mark.parametrize(
    "item",
    [
        "plain text",
        "\n\nstarts with blank lines",
        " leading space and trailing newline\n",
        "",
        "Unicode: héllo wörld — 日本語 😀",
        {"text": ["first", "second", "\nthird"]},
        {"text": "caption", "image": CHELSEA},
        {"text": "  spaced  ", "image": [CHELSEA, CHELSEA]},
        "<think> is an added token, not a special one",
    ],
)
def test_ordinary_text_tokenises_exactly_like_the_reference(embedder, item):
    assert _our_ids(embedder, item) == _reference_ids(embedder, item)


def test_instruction_tokenises_exactly_like_the_reference(embedder):
    instruction = "Find the pictures!\n"
    assert _our_ids(embedder, "a dog", instruction) == _reference_ids(embedder, "a dog", instruction)


@pytest.mark.parametrize("special", SPECIALS)
def test_special_token_strings_in_text_are_text(embedder, special):
    """The reference crashes (vision-slot mismatch) or lets the text forge the prompt; here it is characters."""
    text = f"The Qwen-VL prompt uses {special} to mark its structure."
    ids = _our_ids(embedder, text)
    special_ids = set(embedder.processor.tokenizer.all_special_ids)
    template_only = _our_ids(embedder, "The Qwen-VL prompt uses  to mark its structure.")
    # the same special tokens as the prompt without the quoted string: nothing forged
    assert [t for t in ids if t in special_ids] == [t for t in template_only if t in special_ids]
    assert len(ids) > len(template_only)
    vec = embedder.embed([text, {"text": text, "image": CHELSEA}])
    assert np.isfinite(vec).all()


def test_special_token_strings_do_not_change_an_images_vision_slots(embedder):
    plain = embedder.embed([{"image": CHELSEA, "text": "cat"}])[0]
    quoted = embedder.embed([{"image": CHELSEA, "text": "cat <|image_pad|><|image_pad|>"}])[0]
    assert np.isfinite(quoted).all() and not np.allclose(plain, quoted)


def test_repeated_im_end_counts_against_the_reranker_limit(reranker):
    """8,000 quoted <|im_end|> were 80,010 tokens kept past max_length (special tokens are never cut)."""
    doc = "<|im_end|>" * 8000
    query = {"text": "what ends a turn?"}
    conversation = None
    from retrieval_pipeline.models.encoding import rerank_conversation

    loaded_q = content_items(load_input(parse_input(query)), reranker.media)
    loaded_d = content_items(load_input(parse_input(doc)), reranker.media)
    conversation = rerank_conversation(loaded_q, loaded_d, reranker.default_instruction)
    enc = reranker._encode_pair(conversation)
    assert len(enc) <= reranker.max_length + 5
    scores = reranker.score(query, [doc, "a plain document"])
    assert all(0.0 < s < 1.0 for s in scores)


def test_embedder_truncates_special_token_floods_to_max_length(embedder):
    loaded = load_input(parse_input("<|im_end|>" * 5000))
    conversation = embedding_conversation(loaded, embedder.media, "x")
    enc = encode_conversation(embedder.processor, conversation, max_length=512, truncation=True, text_budget=512)
    assert len(enc) == 512


@pytest.mark.slow
def test_huge_text_is_bounded_and_equals_the_truncated_reference(embedder):
    """A 3 MB text: only the part that can fit in max_length is tokenised; the tokens kept are the reference's."""
    text = "All work and no play makes Jack a dull boy. " * 70_000
    loaded = load_input(parse_input(text))
    conversation = embedding_conversation(loaded, embedder.media, "x")
    ours = encode_conversation(embedder.processor, conversation, max_length=300, truncation=True, text_budget=300)
    full = encode_conversation(embedder.processor, conversation, max_length=300, truncation=True, text_budget=None)
    assert torch.equal(ours.input_ids, full.input_ids) and len(ours) == 300


@pytest.mark.parametrize(
    "item, field",
    [
        ("\ud800", "text"),
        ({"text": ["fine", "bad \udfff here"]}, "text"),
        ({"text": "ok", "instruction": "broken \ud83d"}, "instruction"),
    ],
)
def test_lone_surrogates_are_a_clear_error_naming_the_item(embedder, item, field):
    with pytest.raises(InputError) as info:
        embedder.embed(["good", item])
    err = info.value
    assert err.index == 1 and err.field == field
    assert "surrogate" in str(err)


def test_lone_surrogate_in_call_instruction_and_rerank(embedder, reranker):
    with pytest.raises(InputError, match="surrogate"):
        embedder.embed(["good"], instruction="bad \ud800")
    with pytest.raises(InputError, match="surrogate") as info:
        reranker.score("query", ["fine", "bad \ud800"])
    assert info.value.index == 1 and info.value.kind == "document"


# ----------------------------------------------------------------------------------------------------------------
# Bounded resources


def test_rerank_query_image_is_encoded_once_and_shared(reranker):
    """An image query with 40 documents kept 40 copies of the query's patches (a full-size image: 44 MB each)."""
    docs = [f"document number {i} about cats" for i in range(40)]
    prepared = reranker.prepare({"image": CHELSEA, "text": "a cat"}, docs)
    shared = {id(p.shared) for p in prepared.pairs}
    assert len(shared) == 1 and prepared.pairs[0].shared is not None
    assert all(p.pixel_values is None for p in prepared.pairs)  # text documents: nothing of their own
    kept = prepared.pairs[0].shared.pixel_values.numel() + sum(
        p.pixel_values.numel() for p in prepared.pairs if p.pixel_values is not None
    )
    assert kept == prepared.pairs[0].shared.pixel_values.numel()
    scores = reranker.score_prepared(prepared)
    alone = [reranker.score({"image": CHELSEA, "text": "a cat"}, [d])[0] for d in docs[:3]]
    assert np.abs(np.asarray(scores[:3]) - np.asarray(alone)).max() < 1e-5


def test_rerank_image_query_with_image_documents_matches_pairs_run_whole(reranker):
    query = {"image": CHELSEA}
    docs = [{"image": str(MEDIA / "coffee.jpg")}, {"image": CHELSEA, "text": "same cat"}, "text only"]
    shared = reranker.score(query, docs)
    reranker.share_prefix = False
    try:
        whole = reranker.score(query, docs)
    finally:
        reranker.share_prefix = True
    alone = [reranker.score(query, [d])[0] for d in docs]
    assert np.abs(np.asarray(shared) - np.asarray(whole)).max() < 1e-5
    assert np.abs(np.asarray(shared) - np.asarray(alone)).max() < 1e-5


def test_images_over_max_length_refused_from_headers_before_decoding(embedder, monkeypatch):
    from retrieval_pipeline import LimitError
    from retrieval_pipeline.media import inputs

    decoded = []
    original = inputs.decode_image
    monkeypatch.setattr(inputs, "decode_image", lambda *a, **k: decoded.append(a[1]) or original(*a, **k))
    small = type(embedder)(embedder.model_name_or_path, max_length=256, max_pixels=65536)
    with pytest.raises(LimitError) as info:
        small.embed(["fine", {"image": [CHELSEA] * 80, "text": "eighty photos"}])
    assert info.value.limit == "max_length" and info.value.index == 1 and info.value.field == "image"
    assert decoded == []


@pytest.mark.parametrize(
    "limits, item, limit",
    [
        ({"max_images_per_item": 2}, {"image": [CHELSEA] * 3}, "max_images_per_item"),
        ({"max_text_chars": 100}, {"text": ["x" * 60, "y" * 60]}, "max_text_chars"),
        ({"max_text_chars": 100}, {"text": "x", "instruction": "i" * 101}, "max_text_chars"),
        ({"max_frames_per_video": 4}, {"video": [CHELSEA] * 5}, "max_frames_per_video"),
        ({"max_videos_per_item": 1}, {"video": [[CHELSEA, CHELSEA], [CHELSEA, CHELSEA]]}, "max_videos_per_item"),
        ({"max_image_pixels": 10_000}, {"image": CHELSEA}, "max_image_pixels"),
        ({"max_request_pixels": 60_000}, {"image": [CHELSEA, CHELSEA]}, "max_request_pixels"),
    ],
)
def test_input_limits_name_the_limit(embedder, limits, item, limit):
    from retrieval_pipeline import LimitError
    from retrieval_pipeline.media import InputLimits

    with pytest.raises(LimitError) as info:
        embedder.prepare(["fine", item], limits=InputLimits(**limits))
    assert info.value.limit == limit and limit in str(info.value)
    embedder.prepare(["fine", item])  # the library's defaults accept it


def test_rerank_cost_limit(reranker):
    from retrieval_pipeline import LimitError
    from retrieval_pipeline.media import InputLimits

    docs = ["a document of some length " * 20] * 160
    with pytest.raises(LimitError) as info:
        reranker.prepare({"image": CHELSEA}, docs, limits=InputLimits(max_rerank_tokens=20_000))
    assert info.value.limit == "max_rerank_tokens" and info.value.kind == "request"
    assert len(reranker.prepare({"image": CHELSEA}, docs[:10], limits=InputLimits(max_rerank_tokens=20_000))) == 10


def test_sixteen_bit_images_convert_without_float64_copies():
    import tracemalloc

    from PIL import Image

    from retrieval_pipeline.media import to_rgb

    ramp = (np.arange(2000 * 3000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 3000)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    tracemalloc.start()
    rgb = to_rgb(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the output alone is 18 MB; whole-image float64 copies were 48 MB each (4 of them at once)
    assert peak < 40 * 1024 * 1024, peak
    expected = np.clip(np.round(ramp.astype(np.float64) / 65535.0 * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(rgb)[:, :, 0], expected)


@pytest.mark.parametrize(
    "query, doc",
    [
        ({"image": CHELSEA, "text": "a cat"}, "plain text document"),
        ({"image": [CHELSEA, str(MEDIA / "rocket.jpg")]}, {"image": str(MEDIA / "coffee.jpg"), "text": "cup"}),
        ({"text": "before", "image": CHELSEA}, {"video": [str(MEDIA / "frame_0.png"), str(MEDIA / "frame_2.png")]}),
    ],
)
def test_query_images_encoded_once_give_exactly_the_pairs_tokens_and_patches(reranker, query, doc):
    """The query's images are processed once and spliced into every pair: the pair's ids, grids and patches are
    exactly what the processor makes of the whole pair (the reference's path)."""
    from retrieval_pipeline.models.encoding import encode_conversation, rerank_conversation

    q = reranker._load_query(parse_input(query), reranker.media)
    assert q.leading is not None
    fast = reranker._encode_document(0, parse_input(doc), q, reranker.default_instruction, reranker.media)
    plain_query = content_items(load_input(parse_input(query)), reranker.media)
    conversation = rerank_conversation(
        plain_query, content_items(load_input(parse_input(doc)), reranker.media), reranker.default_instruction
    )
    whole = encode_conversation(reranker.processor, conversation, max_length=None, truncation=False)
    assert torch.equal(fast.input_ids, whole.input_ids)
    assert torch.equal(fast.image_grid_thw, whole.image_grid_thw)
    assert torch.equal(fast.vision("pixel_values"), whole.pixel_values)
    for name in ("pixel_values_videos", "video_grid_thw"):
        a, b = getattr(fast, name), getattr(whole, name)
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    "item, field",
    [({}, None), ({"instruction": "only an instruction"}, None), ({"image": None}, "image"), ({"text": []}, "text"),
     ({"video": []}, "video"), ({"text": "x", "image": []}, "image")],
)  # fmt: skip
def test_empty_inputs_are_refused_naming_the_item(embedder, reranker, item, field):
    """Nothing to embed is an error naming the item, not a stored "NULL" vector (the reference's process() keeps
    {} as its NULL input: see test_parity)."""
    with pytest.raises(InputError) as info:
        embedder.embed(["fine", item])
    assert info.value.index == 1 and info.value.field == field
    with pytest.raises(InputError) as info:
        reranker.score("a query", ["fine", item])
    assert info.value.index == 1 and info.value.kind == "document"
    with pytest.raises(InputError) as info:
        reranker.score(item, ["fine"])
    assert info.value.kind == "query"


def test_process_keeps_the_reference_null_input_and_refuses_a_field_without_value(embedder, reranker):
    assert embedder.process([{}]).shape == (1, 64)
    assert len(reranker.process({"query": {"text": "q"}, "documents": [{}]})) == 1
    with pytest.raises(InputError) as info:
        embedder.process([{"image": None}])
    assert info.value.field == "image"


def test_empty_items_are_reported_by_the_indexer_and_the_rest_indexed(embedder, tmp_path):
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    store = EdgeStore(tmp_path / "db", "docs")
    report, ids = Indexer(embedder, store).index_items(["a cat", {}, {"text": []}, "a dog"])
    assert report.indexed == 2 and store.count() == 2
    assert [f.source for f in report.failed] == ["item 1", "item 2"] and ids[1:3] == [None, None]
    assert "empty input" in report.failed[0].reason
    store.close()


@pytest.mark.parametrize("dim", [0, -3, 100_000, True])
def test_an_indexer_dimension_outside_the_model_is_refused_before_any_collection(embedder, tmp_path, dim):
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    store = EdgeStore(tmp_path / "db", "docs")
    with pytest.raises(ValueError, match="Matryoshka range"):
        Indexer(embedder, store, dim=dim)
    assert not store.exists()
