"""Reranker behaviour: shared-prefix batches == whole pairs one at a time, ordering, duplicates, errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MEDIA
from PIL import Image

from retrieval_pipeline import InputError, Qwen3VLReranker
from retrieval_pipeline.models.encoding import rerank_conversation

CHELSEA = str(MEDIA / "chelsea.jpg")
COFFEE = str(MEDIA / "coffee.jpg")
ASTRONAUT = str(MEDIA / "astronaut.jpg")
REPORT = str(MEDIA / "report_page.png")
VIDEO = str(MEDIA / "moving_square.mp4")
FRAMES = [str(MEDIA / f"frame_{i}.png") for i in range(4)]

DOCS = [
    "The cat sleeps on the red sofa.",
    "The cat sleeps on the blue sofa, all afternoon long, while rain falls outside. " * 3,
    {"image": CHELSEA},
    {"image": COFFEE},  # same pixel size as chelsea after resizing? either way: distinct pixels
    {"text": "chart", "image": REPORT},
    {"video": VIDEO, "fps": 2.0, "max_frames": 4},
    {"video": FRAMES[:3]},
    "",  # an empty text (an input with nothing at all, {}, is refused outside process())
    "The",
]

QUERIES = [
    "A cat on a sofa",
    {"image": ASTRONAUT},
    {"text": "what is shown?", "image": [CHELSEA, COFFEE]},
    {"video": [FRAMES[0], FRAMES[2]], "text": "moving"},
]


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


@pytest.fixture(scope="module")
def wide_reranker(wide_checkpoint):
    return Qwen3VLReranker(str(wide_checkpoint), max_pixels=65536, total_pixels=1048576)


@pytest.mark.parametrize("query", QUERIES, ids=["text", "image", "text+images", "frames"])
def test_shared_prefix_batches_equal_whole_pairs_one_at_a_time(wide_reranker, query, monkeypatch):
    batched = wide_reranker.score(query, DOCS, batch_size=4)
    monkeypatch.setattr(wide_reranker, "share_prefix", False)
    whole = [wide_reranker.score(query, [d])[0] for d in DOCS]
    whole_batched = wide_reranker.score(query, DOCS, batch_size=3)
    assert close(batched, whole)
    assert close(whole_batched, whole)
    assert all(0.0 < s < 1.0 for s in batched)


def test_documents_with_same_size_images_are_not_shared(wide_reranker, monkeypatch):
    # Two images of one size give identical placeholder tokens; their pixels differ, so they must not be
    # treated as part of the shared prefix.
    base = Image.open(CHELSEA).convert("RGB")
    docs = [{"image": base}, {"image": base.rotate(180)}, {"image": base.convert("L").convert("RGB")}]
    shared = wide_reranker.score("a cat", docs)
    monkeypatch.setattr(wide_reranker, "share_prefix", False)
    assert close(shared, [wide_reranker.score("a cat", [d])[0] for d in docs])
    assert not close(shared[0], shared[1], 1e-6)


def test_prefix_is_computed_once_per_call(wide_reranker, monkeypatch):
    calls = {"prefix": 0, "suffix": []}
    run_prefix, run_suffixes = wide_reranker._run_prefix, wide_reranker._forward_suffixes

    def prefix(*args):
        calls["prefix"] += 1
        return run_prefix(*args)

    def suffixes(items, *args):
        calls["suffix"].append(len(items))
        return run_suffixes(items, *args)

    monkeypatch.setattr(wide_reranker, "_run_prefix", prefix)
    monkeypatch.setattr(wide_reranker, "_forward_suffixes", suffixes)
    monkeypatch.setattr(wide_reranker, "max_padding", 1.0)
    wide_reranker.score("query", [f"document {i} " * (i + 1) for i in range(10)], batch_size=4)
    assert calls["prefix"] == 1
    assert calls["suffix"] == [4, 4, 2]


def test_duplicates_scored_once_and_order_kept(wide_reranker, monkeypatch):
    seen = []
    original = wide_reranker._forward_suffixes

    def counting(items, *args):
        seen.append(len(items))
        return original(items, *args)

    monkeypatch.setattr(wide_reranker, "_forward_suffixes", counting)
    docs = ["b", "a", {"image": CHELSEA}, "a", "b", {"image": CHELSEA}]
    scores = wide_reranker.score("q", docs)
    assert sum(seen) == 3
    assert scores[0] == scores[4] and scores[1] == scores[3] and scores[2] == scores[5]


def test_rerank_best_first_and_top_k(wide_reranker):
    scores = wide_reranker.score("A cat on a sofa", DOCS)
    ranked = wide_reranker.rerank("A cat on a sofa", DOCS)
    assert [i for i, _ in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [s for _, s in ranked] == sorted(scores, reverse=True)
    assert wide_reranker.rerank("A cat on a sofa", DOCS, top_k=3) == ranked[:3]
    with pytest.raises(ValueError, match="top_k"):
        wide_reranker.rerank("q", DOCS, top_k=0)


def test_instruction_changes_scores(wide_reranker):
    default = wide_reranker.score("q", ["doc one", "doc two"])
    custom = wide_reranker.score("q", ["doc one", "doc two"], instruction="Find documents in French.")
    assert not close(default, custom, 1e-4)
    via_process = wide_reranker.process(
        {
            "query": {"text": "q"},
            "documents": [{"text": "doc one"}, {"text": "doc two"}],
            "instruction": "Find documents in French.",
        }
    )
    assert close(custom, via_process)


def test_reference_truncation_keeps_special_and_tail_tokens(wide_checkpoint):
    short = Qwen3VLReranker(str(wide_checkpoint), max_length=40, max_pixels=65536, share_prefix=True)
    docs = ["word " * 200, "another long document " * 50, {"image": CHELSEA, "text": "x " * 300}]
    shared = short.score("query", docs)
    conversation = rerank_conversation(
        [{"type": "text", "text": "query"}], [{"type": "text", "text": "word " * 200}], short.default_instruction
    )
    enc = short._encode_pair(conversation)
    assert len(enc) <= 40 + 5
    short.share_prefix = False
    assert close(shared, [short.score("query", [d])[0] for d in docs])


def test_empty_documents_and_bad_inputs(wide_reranker):
    assert wide_reranker.score("q", []) == []
    assert wide_reranker.process({"query": {"text": "q"}, "documents": []}) == []
    with pytest.raises(InputError, match=r"document 2, field 'image': file not found"):
        wide_reranker.score("q", ["ok", "ok", {"image": "/missing.png"}])
    with pytest.raises(InputError, match=r"^query, field 'image': file not found"):
        wide_reranker.score({"image": "/missing.png"}, ["ok"])
    with pytest.raises(InputError, match="documents must be a list"):
        wide_reranker.score("q", "not a list")
    with pytest.raises(InputError, match="no 'query'"):
        wide_reranker.process({"documents": [{"text": "x"}]})
    with pytest.raises(InputError, match="unknown field"):
        wide_reranker.process({"query": {"text": "q"}, "documents": [], "batch": 3})


def test_score_head_is_yes_minus_no(wide_checkpoint, wide_reranker):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    lm = Qwen3VLForConditionalGeneration.from_pretrained(str(wide_checkpoint))
    vocab = AutoTokenizer.from_pretrained(str(wide_checkpoint)).get_vocab()
    w = lm.lm_head.weight
    assert torch.allclose(wide_reranker._score_weight.cpu(), w[vocab["yes"]] - w[vocab["no"]])
    assert not hasattr(wide_reranker.model, "lm_head")
