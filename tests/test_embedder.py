"""Embedder behaviour: batching == one at a time, order and duplicates, Matryoshka, instructions, device/dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MEDIA, TINY

from retrieval_pipeline import Qwen3VLEmbedder
from retrieval_pipeline.models.batching import plan_batches
from retrieval_pipeline.models.runtime import resolve_device, resolve_dtype

CHELSEA = str(MEDIA / "chelsea.jpg")
COFFEE = str(MEDIA / "coffee.jpg")
REPORT = str(MEDIA / "report_page.png")
VIDEO = str(MEDIA / "moving_square.mp4")

MIXED = [
    "short",
    "a much longer text " * 40,
    {"image": CHELSEA},
    {"image": REPORT, "text": "the quarterly report"},
    {"video": VIDEO, "fps": 2.0, "max_frames": 4},
    "medium length text about a cat on a sofa",
    {"image": [COFFEE, str(MEDIA / "rocket.jpg")]},
    "",  # an empty text (an input with nothing at all, {}, is refused outside process())
    {"text": "query", "instruction": "Retrieve images relevant to the query"},
    {"video": [str(MEDIA / "frame_0.png"), str(MEDIA / "frame_2.png")]},
]


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


@pytest.fixture
def forward_calls(wide_embedder, monkeypatch):
    calls = []
    original = wide_embedder._forward

    def counting(items):
        calls.append(len(items))
        return original(items)

    monkeypatch.setattr(wide_embedder, "_forward", counting)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize("batch_size,budget", [(8, 16384), (3, 16384), (16, 600), (4, 1)])
def test_batched_equals_one_at_a_time(wide_embedder, batch_size, budget, monkeypatch):
    one = np.stack([wide_embedder.embed([x])[0] for x in MIXED])
    monkeypatch.setattr(wide_embedder, "max_batch_tokens", budget)
    batched = wide_embedder.embed(MIXED, batch_size=batch_size)
    assert close(batched, one)


def test_batches_respect_size_and_token_budget(wide_embedder, forward_calls, monkeypatch):
    monkeypatch.setattr(wide_embedder, "max_batch_tokens", 400)
    wide_embedder.embed(MIXED * 2, batch_size=3)
    assert sum(forward_calls) == len(MIXED)  # duplicates of the second copy run once
    assert max(forward_calls) <= 3


def test_plan_batches_covers_every_index_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=300).tolist()
    batches = plan_batches(lengths, batch_size=7, max_batch_tokens=1000)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        assert len(b) <= 7
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
    # sorted by length: padding waste stays small
    for b in batches:
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) < 100
    with pytest.raises(ValueError):
        plan_batches([1], batch_size=0, max_batch_tokens=10)


def test_plan_batches_caps_padding():
    lengths = [100, 98, 97, 60, 59, 10]
    batches = plan_batches(lengths, batch_size=8, max_batch_tokens=10_000, max_padding=0.05)
    assert batches == [[0, 1, 2], [3, 4], [5]]
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded - sum(lengths[i] for i in b) <= 0.05 * padded
    assert plan_batches(lengths, batch_size=8, max_batch_tokens=10_000) == [[0, 1, 2, 3, 4, 5]]


def test_order_preserved_with_duplicates(wide_embedder, forward_calls):
    items = ["b text", "a", {"image": CHELSEA}, "a", "b text", {"image": CHELSEA}, "c"]
    out = wide_embedder.embed(items)
    assert sum(forward_calls) == 4  # four distinct inputs
    singles = {repr(x): wide_embedder.embed([x])[0] for x in items}
    for item, vec in zip(items, out):
        assert close(vec, singles[repr(item)])
    assert close(out[1], out[3]) and close(out[0], out[4]) and not close(out[0], out[1], 1e-3)


def test_many_inputs_cross_windows(wide_embedder, monkeypatch):
    import retrieval_pipeline.models.batching as module

    monkeypatch.setattr(module, "WINDOW_ITEMS", 4)
    texts = [f"document number {i} " * (1 + i % 5) for i in range(11)]
    out = wide_embedder.embed(texts + texts[:3], batch_size=3)
    one = np.stack([wide_embedder.embed([t])[0] for t in texts + texts[:3]])
    assert close(out, one)


def test_windows_are_bounded_by_bytes_of_patches(wide_embedder, monkeypatch):
    """32 page images were all encoded (44 MB of patches each at full size) before the first forward pass."""
    import retrieval_pipeline.models.batching as module

    held = []
    original = wide_embedder._run
    monkeypatch.setattr(wide_embedder, "_run", lambda enc, *a: held.append(len(enc)) or original(enc, *a))
    monkeypatch.setattr(module, "WINDOW_BYTES", 200_000)
    items = [{"image": CHELSEA}, "text", {"image": REPORT}, {"image": COFFEE}, "more text", {"image": CHELSEA}]
    out = wide_embedder.embed(items)
    assert len(held) > 1 and max(held) < len(items)
    one = np.stack([wide_embedder.embed([i])[0] for i in items])
    assert close(out, one)


def test_progress_bar(wide_embedder, capsys):
    wide_embedder.embed(["x", "y"], show_progress_bar=True)
    assert "embedding" in capsys.readouterr().err
    wide_embedder.embed(["x", "y"])
    assert "embedding" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Matryoshka, normalisation


def test_matryoshka_truncates_then_normalises(wide_embedder):
    assert wide_embedder.hidden_size == 128
    raw = wide_embedder.embed(MIXED[:4], normalize=False)
    assert not close(np.linalg.norm(raw, axis=1), np.ones(4), 1e-3)
    for dim in (1, 32, 64, 128):
        out = wide_embedder.embed(MIXED[:4], dim=dim)
        assert out.shape == (4, dim) and out.dtype == np.float32
        expected = raw[:, :dim] / np.linalg.norm(raw[:, :dim], axis=1, keepdims=True)
        assert close(out, expected)
    unnormalised = wide_embedder.embed(MIXED[:4], dim=32, normalize=False)
    assert close(unnormalised, raw[:, :32])


@pytest.mark.parametrize("dim", [0, -5, 129, 4096, 3.5, "64", True])
def test_matryoshka_dim_outside_range_is_an_error(wide_embedder, dim):
    with pytest.raises(ValueError, match="Matryoshka range: pass an int from 1 to 128"):
        wide_embedder.embed(["x"], dim=dim)


def test_process_unnormalised(wide_embedder):
    out = wide_embedder.process([{"text": "x"}], normalize=False)
    assert isinstance(out, torch.Tensor)
    assert close(out.numpy(), wide_embedder.embed(["x"], normalize=False))


# ---------------------------------------------------------------------------------------------------------------
# Instructions


def test_instruction_per_item_per_call_and_default(wide_embedder):
    task = "Retrieve images that match the caption"
    default, per_call, per_item, both = wide_embedder.embed(["a cat"])[0], None, None, None
    per_call = wide_embedder.embed(["a cat"], instruction=task)[0]
    per_item = wide_embedder.embed([{"text": "a cat", "instruction": task}])[0]
    both = wide_embedder.embed([{"text": "a cat", "instruction": task}], instruction="Something else")[0]
    assert close(per_call, per_item) and close(per_item, both)
    assert not close(default, per_call, 1e-3)
    # the reference ends instructions with punctuation
    assert close(per_call, wide_embedder.embed(["a cat"], instruction=task + ".")[0])
    explicit_default = wide_embedder.embed(["a cat"], instruction="Represent the user's input.")[0]
    assert close(default, explicit_default)


def test_queries_and_documents_use_different_instructions_in_one_call(wide_embedder):
    q_instr = "Find the document that answers the question"
    mixed = wide_embedder.embed([{"text": "what is it?", "instruction": q_instr}, "it is a cat"])
    assert close(mixed[0], wide_embedder.embed_queries(["what is it?"], instruction=q_instr)[0])
    assert close(mixed[1], wide_embedder.embed(["it is a cat"])[0])


def test_instruction_type_checked(wide_embedder):
    with pytest.raises(ValueError, match="instruction must be a str"):
        wide_embedder.embed(["x"], instruction=3)


# ---------------------------------------------------------------------------------------------------------------
# Device and dtype


def test_device_and_dtype_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("torch.float16", torch.device("cpu")) == torch.float16
    assert resolve_dtype(torch.float32, torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_cpu_defaults_and_bfloat16_override(public, embedder):
    assert embedder.device.type == "cpu" or torch.cuda.is_available()
    assert next(embedder.model.parameters()).dtype == embedder.dtype
    bf16 = Qwen3VLEmbedder(str(TINY), dtype="bfloat16", device="cpu", **public["settings"])
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    a = bf16.embed(["a cat on a sofa", {"image": CHELSEA}])
    b = embedder.embed(["a cat on a sofa", {"image": CHELSEA}])
    assert a.dtype == np.float32
    assert (a * b).sum(axis=1).min() > 0.95  # same direction within bfloat16 precision
    with pytest.raises(ValueError, match="disagree"):
        Qwen3VLEmbedder(str(TINY), torch_dtype="float32", dtype="bfloat16")


def test_no_gradients(wide_embedder):
    assert not any(p.requires_grad for p in wide_embedder.model.parameters())
    assert not wide_embedder.model.training


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises((OSError, ValueError)):
        Qwen3VLEmbedder(str(tmp_path / "nope"))
