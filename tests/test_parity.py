"""The reference implementation's outputs on the parity checkpoint (public.json), to 1e-4, batched or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, with_media_paths

TOL = 1e-4


def _requests(public):
    for request, expected in zip(public["rerank_requests"], public["expected_scores"]):
        request = dict(request)
        request["query"] = with_media_paths(request["query"])
        request["documents"] = [with_media_paths(d) for d in request["documents"]]
        yield request, np.asarray(expected)


def test_process_matches_reference_batched(embedder, public):
    inputs = [with_media_paths(e) for e in public["embed_inputs"]]
    out = embedder.process(inputs)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (len(inputs), 64)
    expected = torch.tensor(public["expected_embeddings"])
    assert (out - expected).abs().max().item() < TOL


@pytest.mark.parametrize("index", range(8))
def test_process_matches_reference_one_at_a_time(embedder, public, index):
    item = with_media_paths(public["embed_inputs"][index])
    out = embedder.process([item])[0]
    expected = torch.tensor(public["expected_embeddings"][index])
    assert (out - expected).abs().max().item() < TOL


def test_embed_matches_reference(embedder, public):
    inputs = [with_media_paths(e) for e in public["embed_inputs"]]
    out = embedder.embed(inputs, batch_size=3)
    assert out.dtype == np.float32
    assert np.abs(out - np.asarray(public["expected_embeddings"])).max() < TOL


def test_embed_plain_str_equals_text_object(embedder, public):
    text = public["embed_inputs"][1]["text"]
    out = embedder.embed([text])
    assert np.abs(out[0] - np.asarray(public["expected_embeddings"][1])).max() < TOL


def test_embed_plain_pil_equals_image_object(embedder, public):
    from PIL import Image

    item = with_media_paths(public["embed_inputs"][2])
    out = embedder.embed([Image.open(item["image"])])
    assert np.abs(out[0] - np.asarray(public["expected_embeddings"][2])).max() < TOL


def test_reranker_process_matches_reference(reranker, public):
    for request, expected in _requests(public):
        assert np.abs(np.asarray(reranker.process(request)) - expected).max() < TOL


@pytest.mark.parametrize("share_prefix", [True, False])
def test_reranker_score_matches_reference(public, share_prefix):
    from retrieval_pipeline import Qwen3VLReranker

    settings = {k: v for k, v in public["settings"].items() if k != "max_length"}
    for request, expected in _requests(public):
        settings.update(fps=request["fps"], max_frames=request["max_frames"])
        reranker = Qwen3VLReranker(str(TINY), share_prefix=share_prefix, **settings)
        scores = reranker.score(request["query"], request["documents"], instruction=request["instruction"])
        assert np.abs(np.asarray(scores) - expected).max() < TOL
        one_by_one = [
            reranker.score(request["query"], [d], instruction=request["instruction"])[0] for d in request["documents"]
        ]
        assert np.abs(np.asarray(one_by_one) - expected).max() < TOL


def test_prepare_then_embed_prepared_matches_reference(embedder, public):
    """The CPU-only preparation step and the model step, run apart, give the reference's numbers."""
    inputs = [with_media_paths(e) for e in public["embed_inputs"]]
    prepared = embedder.prepare(inputs)
    assert len(prepared) == len(inputs)
    out = embedder.embed_prepared(prepared, batch_size=3)
    assert np.abs(out - np.asarray(public["expected_embeddings"])).max() < TOL
    # any selection and order of prepared items
    again = embedder.embed_prepared([prepared[5], prepared[0]])
    assert np.abs(again - out[[5, 0]]).max() < 1e-5


def test_reranker_prepare_then_score_prepared_matches_reference(public):
    from retrieval_pipeline import Qwen3VLReranker

    settings = {k: v for k, v in public["settings"].items() if k != "max_length"}
    for request, expected in _requests(public):
        settings.update(fps=request["fps"], max_frames=request["max_frames"])
        reranker = Qwen3VLReranker(str(TINY), **settings)
        prepared = reranker.prepare(request["query"], request["documents"], instruction=request["instruction"])
        assert len(prepared) == len(request["documents"])
        assert np.abs(np.asarray(reranker.score_prepared(prepared)) - expected).max() < TOL
