"""`qwen3vl-rag finetune` and `retrieval_pipeline.finetune`: LoRA training of the embedder and the reranker.

On the tiny checkpoint with a synthetic judged dataset that has learnable structure (a category's query word and
document word share no letters: only training can relate them), with training and held-out queries drawn from the
same distribution: the held-out nDCG@10 rises for both models; the saved folder loads in a new process to the same
vectors; an interrupted run resumes to the same weights; the folder is another model to the store."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY
from helpers.cli import main_here

from retrieval_pipeline.errors import CollectionMismatchError, InputError
from retrieval_pipeline.evaluate import evaluate, index_dataset, load_beir
from retrieval_pipeline.finetune import (
    FinetuneConfig,
    finetune_embedder,
    finetune_reranker,
    info_nce,
    load_pairs,
    load_training_data,
    matryoshka_info_nce,
    split_dataset,
    yes_no_bce,
)
from retrieval_pipeline.finetune.data import reranker_examples
from retrieval_pipeline.fingerprint import model_fingerprint
from retrieval_pipeline.testing import write_synthetic_beir

SAMPLES = ["zqxwv apple", {"text": "abcde klmn"}, "hello world"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(
        tmp_path_factory.mktemp("synthetic"),
        categories=4,
        docs_per_category=2,
        train_queries_per_category=4,
        test_queries_per_category=2,
        seed=3,
    )


@pytest.fixture(scope="module")
def data(synthetic):
    return load_training_data(beir=synthetic, split="train", eval_split="test")


def fresh_data(synthetic):
    return load_training_data(beir=synthetic, split="train", eval_split="test")


@pytest.fixture(scope="module")
def embedder_run(synthetic, tmp_path_factory):
    from retrieval_pipeline import Qwen3VLEmbedder

    base = Qwen3VLEmbedder(str(TINY), torch_dtype="float32")
    base_vectors = base.embed(SAMPLES)
    config = FinetuneConfig(
        epochs=3, batch_size=8, learning_rate=3e-3, lora_r=8, dims=(16,), eval_every=4, checkpoint_every=0
    )
    out = tmp_path_factory.mktemp("ft") / "embedder"
    result = finetune_embedder(base, fresh_data(synthetic), out, config, show_progress_bar=False)
    return result, base_vectors


# --- the objectives, against the formulas written out here ------------------------------------------------------


def test_info_nce_is_the_cross_entropy_of_the_positive_among_the_batch():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)
    targets = torch.tensor([0, 1, 3])
    exclude = torch.zeros(3, 4, dtype=torch.bool)
    exclude[0, 2] = True  # another relevant document of query 0: no negative
    exclude[1, 1] = True  # its own positive is never excluded
    got = float(info_nce(q, d, targets, temperature=0.1, exclude=exclude))
    s = (q @ d.T).numpy() / 0.1
    expected = []
    for i, t in enumerate(targets.tolist()):
        cols = [j for j in range(4) if not (i == 0 and j == 2)]
        expected.append(-s[i, t] + math.log(sum(math.exp(s[i, j]) for j in cols)))
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_matryoshka_loss_averages_the_full_and_each_truncated_then_normalised_prefix():
    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(2, 8, generator=g), torch.randn(3, 8, generator=g)
    targets = torch.tensor([2, 0])

    def at(dim):
        n = torch.nn.functional.normalize
        return float(info_nce(n(q[:, :dim], dim=-1), n(d[:, :dim], dim=-1), targets, temperature=0.05))

    got = float(matryoshka_info_nce(q, d, targets, dims=[2, 4, 8, 99], temperature=0.05))
    assert got == pytest.approx((at(2) + at(4) + at(8)) / 3, rel=1e-5)


def test_reranker_loss_is_binary_cross_entropy_on_the_logit():
    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    p = 1 / (1 + np.exp(-logits.numpy()))
    expected = -np.mean(labels.numpy() * np.log(p) + (1 - labels.numpy()) * np.log(1 - p))
    assert float(yes_no_bce(logits, labels)) == pytest.approx(float(expected), rel=1e-5)


# --- data ---------------------------------------------------------------------------------------------------------


def test_pairs_file_merges_queries_and_documents_and_resolves_media(tmp_path):
    (tmp_path / "img").mkdir()
    rows = [
        {"query": "red car", "positive": {"image": "img/car.png", "text": "a car"}, "negatives": ["a boat"]},
        {"query": "red car", "positives": ["a red car"], "negatives": ["a red car", "a bike"]},
        {"query_id": "q2", "query": {"text": "boat"}, "positive": "a boat"},
    ]
    file = tmp_path / "pairs.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset, negatives = load_pairs(file)
    assert len(dataset.queries) == 2 and "q2" in dataset.queries
    (red,) = [q for q in dataset.queries if q != "q2"]
    assert len(dataset.qrels[red]) == 2
    image_doc = next(v for v in dataset.corpus.values() if isinstance(v, dict))
    assert image_doc["image"] == str(tmp_path / "img" / "car.png")
    boat = next(d for d, v in dataset.corpus.items() if v == "a boat")
    # a document judged relevant for the query is never its negative; "a boat" is one doc for both rows
    assert [dataset.corpus[d] for d in negatives[red]] == ["a boat", "a bike"]
    assert dataset.qrels["q2"] == {boat: 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "x"}) + "\n")
    with pytest.raises(InputError, match="no 'positive'"):
        load_pairs(bad)


def test_split_is_deterministic_disjoint_and_keeps_the_corpus(synthetic):
    dataset = load_beir(synthetic, "train")
    train, held = split_dataset(dataset, 0.25, seed=7)
    again, _ = split_dataset(dataset, 0.25, seed=7)
    other, _ = split_dataset(dataset, 0.25, seed=8)
    assert set(train.qrels) == set(again.qrels) and set(train.qrels) != set(other.qrels)
    assert not set(train.qrels) & set(held.qrels) and len(held.qrels) == 4
    assert train.corpus is dataset.corpus and held.corpus is dataset.corpus
    named = load_training_data(beir=synthetic, split="train", eval_split="test")
    assert all(q.startswith("test-") for q in named.held_out.qrels)
    assert all(q.startswith("train-") for q in named.train.qrels)
    with pytest.raises(InputError, match="qrels/nope.tsv"):
        load_training_data(beir=synthetic, eval_split="nope")


def test_reranker_examples_label_judged_pairs_and_negatives(data):
    qid = sorted(data.train.qrels)[0]
    negatives = {qid: [d for d in data.corpus if d not in data.train.qrels[qid]][:2]}
    examples = [e for e in reranker_examples(data.train, negatives) if e[0] == qid]
    assert sorted(label for _, _, label in examples) == [0.0, 0.0, 1.0, 1.0]


# --- the embedder -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedder_held_out_ndcg_rises_and_eval_measures_the_same(embedder_run, synthetic, tmp_path):
    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.retriever import TwoStageRetriever
    from retrieval_pipeline.store import EdgeStore

    result, _ = embedder_run
    assert result.metric == "nDCG@10"
    assert result.after["nDCG@10"] > result.before["nDCG@10"] + 0.05, result.summary()
    assert result.after["nDCG@10 (64-d)"] > result.before["nDCG@10 (64-d)"], result.summary()
    assert [e["step"] for e in result.history["eval"]] == [0, 4, 8, result.steps]
    assert len(result.history["loss"]) == result.steps == 3 * math.ceil(32 / 8)
    assert result.plot is not None and result.plot.stat().st_size > 0

    # the eval machinery on collections indexed with each model gives the trainer's held-out numbers
    held = load_beir(synthetic, "test")
    measured = {}
    for name, model in (("base", Qwen3VLEmbedder(str(TINY), torch_dtype="float32")), ("tuned", result.model)):
        store = EdgeStore(tmp_path / "db", name)
        index_dataset(Indexer(model, store), held, show_progress_bar=False)
        report = evaluate(TwoStageRetriever(model, store), held, k=10, dims=[16], show_progress_bar=False)
        measured[name] = {r["config"]: r["nDCG@10"] for r in report.rows}
        store.close()
    assert measured["base"]["exact 16-d"] == pytest.approx(result.before["nDCG@10"], abs=1e-6)
    assert measured["tuned"]["exact 16-d"] == pytest.approx(result.after["nDCG@10"], abs=1e-6)
    assert measured["tuned"]["exact 64-d"] == pytest.approx(result.after["nDCG@10 (64-d)"], abs=1e-6)

    # a collection built with the base model refuses the fine-tuned one's vectors, and says to re-index
    store = EdgeStore(tmp_path / "db", "base")
    with pytest.raises(CollectionMismatchError, match="re-index into a new collection"):
        index_dataset(Indexer(result.model, store), held, show_progress_bar=False)
    store.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_saved_folder_loads_in_a_new_process_to_the_same_vectors(embedder_run):
    result, base_vectors = embedder_run
    config = json.loads((result.path / "config.json").read_text())
    assert config["qwen3vl_rag_finetune"]["base_fingerprint"] == model_fingerprint(str(TINY))
    assert model_fingerprint(str(result.path)) == result.fingerprint != result.base_fingerprint
    assert result.base_fingerprint == model_fingerprint(str(TINY))
    assert not (result.path / ".finetune-state").exists()
    code = (
        "import json, sys; from retrieval_pipeline import Qwen3VLEmbedder; "
        f"e = Qwen3VLEmbedder({str(result.path)!r}, torch_dtype='float32'); "
        f"print(json.dumps(e.embed({SAMPLES!r}).tolist()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    in_memory = result.model.embed(SAMPLES)
    np.testing.assert_allclose(loaded, in_memory, atol=1e-5)
    assert np.abs(in_memory - base_vectors).max() > 1e-2  # training moved the vectors


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(synthetic, tmp_path):
    from retrieval_pipeline import Qwen3VLEmbedder

    config = FinetuneConfig(
        batch_size=8,
        learning_rate=3e-3,
        lora_r=4,
        lora_dropout=0.1,  # random masks: the generators must be restored too
        hard_negatives=1,
        dims=(16,),
        max_steps=4,
        eval_every=2,
        checkpoint_every=2,
        seed=5,
    )
    model = Qwen3VLEmbedder(str(TINY), torch_dtype="float32")
    base_vectors = model.embed(SAMPLES)
    whole = finetune_embedder(model, fresh_data(synthetic), tmp_path / "whole", config, show_progress_bar=False)
    reference = whole.model.embed(SAMPLES)

    def interrupt(step, info):
        if step == 3:
            raise KeyboardInterrupt

    model = Qwen3VLEmbedder(str(TINY), torch_dtype="float32")
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        finetune_embedder(model, fresh_data(synthetic), out, config, show_progress_bar=False, callback=interrupt)
    assert sorted(p.name for p in (out / ".finetune-state").glob("step-*")) == ["step-0000002"]
    np.testing.assert_allclose(model.embed(SAMPLES), base_vectors, atol=1e-6)  # the model is given back as it was

    changed = FinetuneConfig(**{**config.__dict__, "seed": 6})
    with pytest.raises(ValueError, match="other data or settings"):
        finetune_embedder(model, fresh_data(synthetic), out, changed, show_progress_bar=False)

    resumed = finetune_embedder(model, fresh_data(synthetic), out, config, show_progress_bar=False)
    assert resumed.resumed_from == 2 and resumed.steps == whole.steps == 4
    np.testing.assert_allclose(resumed.model.embed(SAMPLES), reference, atol=1e-6)
    assert resumed.history["loss"] == whole.history["loss"]
    assert resumed.history["eval"] == whole.history["eval"]
    assert resumed.fingerprint == whole.fingerprint  # the same weights, the same model


# --- the reranker -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reranker_held_out_ndcg_rises_with_mined_negatives(synthetic, tmp_path):
    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker

    miner = Qwen3VLEmbedder(str(TINY), torch_dtype="float32")
    config = FinetuneConfig(epochs=2, batch_size=8, learning_rate=3e-3, lora_r=8, negatives=2, eval_every=0)
    result = finetune_reranker(
        str(TINY),
        fresh_data(synthetic),
        tmp_path / "reranker",
        config,
        miner=miner,
        torch_dtype="float32",
        show_progress_bar=False,
    )
    assert result.after["nDCG@10"] > result.before["nDCG@10"] + 0.05, result.summary()
    assert result.fingerprint != result.base_fingerprint
    loaded = Qwen3VLReranker(str(result.path), torch_dtype="float32")
    query, docs = "zqxwv", ["abcde", "hello there", {"text": "klmno"}]
    np.testing.assert_allclose(loaded.score(query, docs), result.model.score(query, docs), atol=1e-5)


@pytest.mark.slow
def test_kept_adapters_load_like_a_model_folder(synthetic, tmp_path):
    from retrieval_pipeline import Qwen3VLReranker

    config = FinetuneConfig(
        batch_size=8,
        learning_rate=5e-3,
        lora_r=4,
        negatives=1,
        random_negatives=True,
        max_steps=2,
        eval_every=0,
        keep_adapters=True,
    )
    base = Qwen3VLReranker(str(TINY), torch_dtype="float32")
    query, docs = "zqxwv", ["abcde", "hello there"]
    before = base.score(query, docs)
    result = finetune_reranker(base, fresh_data(synthetic), tmp_path / "adapters", config, show_progress_bar=False)
    assert (result.path / "adapter_config.json").exists() and not (result.path / "config.json").exists()
    loaded = Qwen3VLReranker(str(result.path), torch_dtype="float32")
    np.testing.assert_allclose(loaded.score(query, docs), result.model.score(query, docs), atol=1e-5)
    assert np.abs(np.array(loaded.score(query, docs)) - before).max() > 1e-4
    fingerprint = model_fingerprint(str(result.path))
    assert fingerprint.startswith("local:weights:") and fingerprint != model_fingerprint(str(TINY))


# --- the command line: eval -> finetune -> index into a new collection -> eval --------------------------------------


def test_finetune_command_needs_a_dataset(tmp_path, capsys, monkeypatch):
    code, _, err = main_here(capsys, monkeypatch, "finetune", "embedder", "--out", str(tmp_path / "m"))
    assert code == 2 and "--beir DIR, --vidore DIR or --pairs FILE" in err
    code, _, err = main_here(capsys, monkeypatch, "finetune", "--out", str(tmp_path / "m"))
    assert code == 2 and "embedder" in err


@pytest.mark.slow
def test_four_commands_from_eval_to_a_fine_tuned_collection(synthetic, tmp_path, models_env, monkeypatch, capsys):
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    beir, out = str(synthetic), str(tmp_path / "tuned")

    def cli(*args):
        return main_here(capsys, monkeypatch, *args, db=tmp_path / "db")

    assert cli("index", "--beir", beir, "--collection", "base", "-q")[0] == 0
    code, text, _ = cli("eval", "--beir", beir, "--collection", "base", "--no-rerank", "--json")
    assert code == 0
    before = json.loads(text)
    code, text, err = cli(
        "finetune", "embedder", "--beir", beir, "--split", "train", "--eval-split", "test", "--out", out,
        "--collection", "base", "--epochs", "2", "--lr", "3e-3", "--lora-r", "8", "--json",
    )  # fmt: skip
    assert code == 0, err
    tuned = json.loads(text)
    assert tuned["after"]["nDCG@10"] > tuned["before"]["nDCG@10"]
    assert (tmp_path / "tuned" / "training.png").exists()
    # the base model's collection refuses the new model (exit 5) and says to re-index into a new collection
    code, _, err = cli("index", "--beir", beir, "--collection", "base", "--embedding-model", out)
    assert code == 5 and "re-index into a new collection" in err
    assert cli("index", "--beir", beir, "--collection", "tuned", "--embedding-model", out, "-q")[0] == 0
    # eval measures a collection with its own model: the base model's queries are refused
    code, _, err = cli("eval", "--beir", beir, "--collection", "tuned", "--no-rerank")
    assert code == 5 and "re-index into a new collection" in err
    code, text, _ = cli(
        "eval", "--beir", beir, "--collection", "tuned", "--embedding-model", out, "--no-rerank", "--json"
    )
    assert code == 0
    after = json.loads(text)
    assert after["collection"]["points"] == before["collection"]["points"] == 8
    exact = {r["config"]: r["nDCG@10"] for r in after["rows"]}
    assert exact["exact 64-d"] == pytest.approx(tuned["after"]["nDCG@10"], abs=1e-6)


@pytest.mark.slow
def test_finetune_reranker_command_mines_with_the_embedding_model(synthetic, tmp_path, models_env, monkeypatch, capsys):
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "reranker"
    code, text, err = main_here(
        capsys, monkeypatch, "finetune", "reranker", "--beir", str(synthetic), "--split", "train",
        "--eval-split", "0.25", "--out", str(out), "--negatives", "1", "--max-steps", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(text)
    assert result["kind"] == "reranker" and result["steps"] == 2 and set(result["before"]) == set(result["after"])
    assert json.loads((out / "config.json").read_text())["qwen3vl_rag_finetune"]["kind"] == "reranker"
    code, _, err = main_here(
        capsys, monkeypatch, "finetune", "reranker", "--beir", str(synthetic), "--out", str(out), "--max-steps", "1"
    )
    assert code == 1 and "already holds a model" in err
