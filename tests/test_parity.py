"""The reference implementation's outputs on the parity checkpoint (public.json), to 1e-4, batched or not.

The numbers depend on the preprocessing libraries' versions (the recording's ``recorded_with``): a mismatch says
whether the installed versions are the recorded ones, so that a library that moved is not mistaken for a bug."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, version_differences, with_media_paths

TOL = 1e-4


def assert_reference(got, expected, public: dict, what: str) -> None:
    """``got`` equals the recorded reference output to TOL; on a mismatch, say which library versions differ."""
    diff = float(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).max())
    if diff < TOL:
        return
    differences = version_differences(public)
    if differences:
        pytest.fail(
            f"{what}: max |diff| {diff:.3g} > {TOL}, and the fixture and the environment disagree: "
            + "; ".join(differences)
            + ". Install the tested versions (pip install -c requirements-lock.txt -e '.[dev]'), or re-record "
            "tests/fixtures/parity with the reference under the new versions and refresh the lock (.ci/lock).",
            pytrace=False,
        )
    pytest.fail(f"{what}: max |diff| {diff:.3g} > {TOL} with the versions the fixture was recorded with", pytrace=False)


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
    assert_reference(out, public["expected_embeddings"], public, "process(), batched")


@pytest.mark.parametrize("index", range(8))
def test_process_matches_reference_one_at_a_time(embedder, public, index):
    item = with_media_paths(public["embed_inputs"][index])
    out = embedder.process([item])[0]
    assert_reference(out, public["expected_embeddings"][index], public, f"process() of embed_inputs[{index}]")


def _with_content(public):
    """The fixture's inputs that have something to embed (embed() and prepare() refuse {}; process() keeps it as
    the reference's NULL input), with their indices."""
    return [(i, with_media_paths(e)) for i, e in enumerate(public["embed_inputs"]) if e.keys() - {"instruction"}]


def test_embed_matches_reference(embedder, public):
    kept = _with_content(public)
    assert len(kept) == len(public["embed_inputs"]) - 1  # all but the NULL input
    out = embedder.embed([e for _, e in kept], batch_size=3)
    assert out.dtype == np.float32
    assert_reference(out, [public["expected_embeddings"][i] for i, _ in kept], public, "embed()")


def test_embed_plain_str_equals_text_object(embedder, public):
    text = public["embed_inputs"][1]["text"]
    out = embedder.embed([text])
    assert_reference(out[0], public["expected_embeddings"][1], public, "embed() of a plain str")


def test_embed_plain_pil_equals_image_object(embedder, public):
    from PIL import Image

    item = with_media_paths(public["embed_inputs"][2])
    out = embedder.embed([Image.open(item["image"])])
    assert_reference(out[0], public["expected_embeddings"][2], public, "embed() of a PIL image")


def test_reranker_process_matches_reference(reranker, public):
    for i, (request, expected) in enumerate(_requests(public)):
        assert_reference(reranker.process(request), expected, public, f"reranker process() of rerank_requests[{i}]")


@pytest.mark.parametrize("share_prefix", [True, False])
def test_reranker_score_matches_reference(public, share_prefix):
    from retrieval_pipeline import Qwen3VLReranker

    settings = {k: v for k, v in public["settings"].items() if k != "max_length"}
    for i, (request, expected) in enumerate(_requests(public)):
        settings.update(fps=request["fps"], max_frames=request["max_frames"])
        reranker = Qwen3VLReranker(str(TINY), share_prefix=share_prefix, **settings)
        scores = reranker.score(request["query"], request["documents"], instruction=request["instruction"])
        assert_reference(scores, expected, public, f"score() of rerank_requests[{i}]")
        one_by_one = [
            reranker.score(request["query"], [d], instruction=request["instruction"])[0] for d in request["documents"]
        ]
        assert_reference(one_by_one, expected, public, f"score() of rerank_requests[{i}], one document at a time")


def test_prepare_then_embed_prepared_matches_reference(embedder, public):
    """The CPU-only preparation step and the model step, run apart, give the reference's numbers."""
    kept = _with_content(public)
    prepared = embedder.prepare([e for _, e in kept])
    assert len(prepared) == len(kept)
    out = embedder.embed_prepared(prepared, batch_size=3)
    expected = [public["expected_embeddings"][i] for i, _ in kept]
    assert_reference(out, expected, public, "prepare() then embed_prepared()")
    # any selection and order of prepared items
    again = embedder.embed_prepared([prepared[5], prepared[0]])
    assert np.abs(again - out[[5, 0]]).max() < 1e-5


def test_reranker_prepare_then_score_prepared_matches_reference(public):
    from retrieval_pipeline import Qwen3VLReranker

    settings = {k: v for k, v in public["settings"].items() if k != "max_length"}
    for i, (request, expected) in enumerate(_requests(public)):
        settings.update(fps=request["fps"], max_frames=request["max_frames"])
        reranker = Qwen3VLReranker(str(TINY), **settings)
        prepared = reranker.prepare(request["query"], request["documents"], instruction=request["instruction"])
        assert len(prepared) == len(request["documents"])
        scores = reranker.score_prepared(prepared)
        assert_reference(scores, expected, public, f"prepare() then score_prepared() of rerank_requests[{i}]")


def test_a_recording_from_other_versions_is_named_as_such(embedder):
    """A mismatch against a recording made with another transformers names both versions (here: the recording that
    does not match the installed transformers; its video entry differs, every other entry is the same)."""
    from conftest import PARITY, installed_version

    installed = installed_version("transformers")
    # 5.25 dropped the outer vision start/end around a video's frames: the two recordings differ in their videos
    name = "public.json" if installed == "5.17.0" else "public-transformers-5.17.json"
    public = json.loads((PARITY / name).read_text())
    videos = [i for i, e in enumerate(public["embed_inputs"]) if "video" in e]
    got = embedder.process([with_media_paths(public["embed_inputs"][i]) for i in videos])
    expected = np.asarray([public["expected_embeddings"][i] for i in videos])
    if np.abs(got.numpy() - expected).max() < TOL:  # e.g. transformers 5.24, whose videos are 5.17's
        pytest.skip(f"transformers {installed} reproduces the recording made with {name}")
    with pytest.raises(pytest.fail.Exception) as info:
        assert_reference(got, [public["expected_embeddings"][i] for i in videos], public, "video entries")
    message = str(info.value)
    assert f"transformers {installed} installed" in message
    assert f"recorded with {public['recorded_with']['transformers']}" in message
    assert "requirements-lock.txt" in message
    others = [i for i, e in enumerate(public["embed_inputs"]) if "video" not in e]
    got = embedder.process([with_media_paths(public["embed_inputs"][i]) for i in others])
    assert_reference(got, [public["expected_embeddings"][i] for i in others], public, "entries without video")


def test_int8_stays_within_its_documented_bound(public):
    """``torch_dtype="int8"`` (quantized linear layers, CPU) against the reference: every embedding's cosine at
    least INT8_MIN_COSINE, every rerank score within INT8_MAX_SCORE_DIFF, no document ranked differently -- batched
    and one at a time."""
    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.models.runtime import INT8_MAX_SCORE_DIFF, INT8_MIN_COSINE

    settings = dict(public["settings"])
    embedder = Qwen3VLEmbedder(str(TINY), torch_dtype="int8", **settings)
    assert embedder.precision == "int8" and embedder.dtype == torch.float32
    inputs = [with_media_paths(e) for e in public["embed_inputs"]]
    expected = np.asarray(public["expected_embeddings"])
    for got in (embedder.process(inputs).numpy(), np.stack([embedder.process([i])[0].numpy() for i in inputs])):
        cosines = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosines.min() >= INT8_MIN_COSINE, cosines
    del settings["max_length"]
    for request, expected_scores in _requests(public):
        settings.update(fps=request["fps"], max_frames=request["max_frames"])
        reranker = Qwen3VLReranker(str(TINY), torch_dtype="int8", **settings)
        scores = np.asarray(reranker.score(request["query"], request["documents"], instruction=request["instruction"]))
        assert np.abs(scores - expected_scores).max() <= INT8_MAX_SCORE_DIFF
        assert list(np.argsort(-scores)) == list(np.argsort(-expected_scores))


def test_int8_is_for_the_cpu_and_recorded_as_such(tmp_path):
    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.models.runtime import resolve_dtype
    from retrieval_pipeline.store import EdgeStore

    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_dtype("int8", torch.device("cuda"))
    embedder = Qwen3VLEmbedder(str(TINY), torch_dtype="int8")
    assert type(embedder.model.language_model.layers[0].mlp.up_proj).__name__ == "Linear"  # torch.ao's dynamic one
    assert "quantized" in type(embedder.model.language_model.layers[0].mlp.up_proj).__module__
    (tmp_path / "a.txt").write_text("int8 vectors")
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store).index_paths([tmp_path / "a.txt"], show_progress_bar=False)
    assert store.open(create=False).dtype == "int8"  # the collection says how its vectors were computed
    store.close()
