"""Real size on an ordinary machine: the dtype policy, loading without a transient copy, stage-wise residency on the
CPU, the released architectures of the checkpoint builder, ``serve --models``."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch
from conftest import TINY, LiveServer, copy_indexed
from helpers.cli import CORPUS, cli, main_here

from retrieval_pipeline import Qwen3VLEmbedder
from retrieval_pipeline.models import runtime
from retrieval_pipeline.models.runtime import auto_dtype, cpu_has_native_bf16, resolve_dtype
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.store import EdgeStore
from retrieval_pipeline.testing import build_random_checkpoint, checkpoint_config

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"
CPU = torch.device("cpu")


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("QWEN3VL_RAG_CPU_BF16", raising=False)
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) and cpu_has_native_bf16(GRAVITON3)
    assert not cpu_has_native_bf16(SKYLAKE) and not cpu_has_native_bf16(GRAVITON2)
    assert not cpu_has_native_bf16("")


def test_auto_dtype_follows_the_hardware_check_and_the_override(monkeypatch):
    assert auto_dtype(CPU, native_bf16=True) == torch.bfloat16
    assert auto_dtype(CPU, native_bf16=False) == torch.float32
    assert auto_dtype(torch.device("cuda"), native_bf16=False) == torch.bfloat16
    for flag, expected in (("1", torch.bfloat16), ("0", torch.float32)):
        monkeypatch.setenv("QWEN3VL_RAG_CPU_BF16", flag)
        assert resolve_dtype("auto", CPU) == expected
        assert resolve_dtype("float32", CPU) == torch.float32  # an explicit dtype wins
        assert resolve_dtype(None, CPU) == torch.float32  # the Python default: the reference numbers
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("float8", CPU)


def test_embedder_auto_dtype_on_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert Qwen3VLEmbedder(str(TINY), torch_dtype="auto").dtype == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert Qwen3VLEmbedder(str(TINY), torch_dtype="auto").dtype == torch.float32
    assert Qwen3VLEmbedder(str(TINY)).dtype == torch.float32


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A small checkpoint saved in bfloat16, like the released weights."""
    return build_random_checkpoint(tmp_path_factory.mktemp("bf16"), like=TINY, hidden_size=128, dtype="bfloat16")


def test_widening_a_bf16_checkpoint_in_place_equals_loading_it_as_float32(bf16_checkpoint, monkeypatch):
    from transformers import Qwen3VLModel

    direct = Qwen3VLModel.from_pretrained(str(bf16_checkpoint), dtype=torch.float32)
    widened = Qwen3VLEmbedder(str(bf16_checkpoint))  # float32 on the CPU: loaded as stored, then widened
    assert widened.dtype == torch.float32
    mine = widened.model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert mine[name].dtype == torch.float32, name
        assert torch.equal(mine[name], tensor), name
    inputs = ["a cat on a sofa", {"image": str(CORPUS / "chelsea.jpg")}]
    monkeypatch.setattr(runtime, "stored_dtype", lambda *args: None)  # the plain from_pretrained(float32) path
    plain = Qwen3VLEmbedder(str(bf16_checkpoint))
    assert np.array_equal(widened.embed(inputs), plain.embed(inputs))


@pytest.fixture(scope="module")
def tied_bf16_checkpoint(tmp_path_factory):
    """A small bfloat16 checkpoint whose lm_head is tied to the token embeddings, like the released 2B."""
    from safetensors.torch import load_file, save_file

    folder = build_random_checkpoint(tmp_path_factory.mktemp("tied"), like=TINY, hidden_size=128, dtype="bfloat16")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]  # saved once, as the embeddings (a head saved too would not be tied)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _watch_int8_conversion(monkeypatch) -> dict[str, int]:
    """Follow torch.ao's int8 conversion of each linear layer: ``peak`` bytes of float32 linear weights alive at
    once (the one being converted and every earlier one not yet freed), ``total``: all of them, ``largest``: the
    largest one, ``layers``: how many."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    original = DynamicLinear.from_float.__func__
    seen: list[tuple[weakref.ref, int]] = []
    stats = {"peak": 0, "total": 0, "layers": 0, "largest": 0}

    def from_float(cls, mod, *args, **kwargs):
        assert mod.weight.dtype == torch.float32
        seen.append((weakref.ref(mod.weight), mod.weight.nbytes))
        stats["layers"] += 1
        stats["total"] += mod.weight.nbytes
        stats["largest"] = max(stats["largest"], mod.weight.nbytes)
        live = sum(nbytes for ref, nbytes in seen if ref() is not None and ref().dtype == torch.float32)
        stats["peak"] = max(stats["peak"], live)
        return original(cls, mod, *args, **kwargs)

    monkeypatch.setattr(DynamicLinear, "from_float", classmethod(from_float))
    return stats


def test_int8_loading_never_holds_every_float32_layer(bf16_checkpoint, tied_bf16_checkpoint, monkeypatch):
    """int8 is applied while loading: each linear layer is widened to float32 only while its int8 copy is made and
    freed before the next (a loop over the modules once kept them all alive: a 9.5 GB peak at the 2B size for a
    model that ends at 3.7 GB). The embedder and the generator, the generator's lm_head tied to its embeddings."""
    from transformers import Qwen3VLForConditionalGeneration

    from retrieval_pipeline.models.generator import Qwen3VLGenerator

    stats = _watch_int8_conversion(monkeypatch)
    embedder = Qwen3VLEmbedder(str(bf16_checkpoint), torch_dtype="int8")
    assert stats["layers"] > 10 and embedder.precision == "int8"
    # the layer being converted, at most one more (measured: only the one being converted)
    assert stats["peak"] <= 2 * stats["largest"] and stats["peak"] < stats["total"] / 4, stats
    for name, tensor in [*embedder.model.named_parameters(), *embedder.model.named_buffers()]:
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name  # the rest widened

    stats = _watch_int8_conversion(monkeypatch)
    generator = Qwen3VLGenerator(str(tied_bf16_checkpoint), torch_dtype="int8")
    assert stats["peak"] <= 2 * stats["largest"] and stats["peak"] < stats["total"] / 2, stats
    model = generator.model
    assert "quantized" in type(model.lm_head).__module__
    embeddings = model.model.language_model.embed_tokens.weight
    stored = Qwen3VLForConditionalGeneration.from_pretrained(str(tied_bf16_checkpoint), dtype=torch.float32)
    assert stored.lm_head.weight is stored.model.language_model.embed_tokens.weight  # tied
    assert embeddings.dtype == torch.float32
    assert torch.equal(embeddings, stored.model.language_model.embed_tokens.weight)
    # the int8 head is the quantized embeddings
    assert torch.equal(
        model.lm_head.weight().dequantize(),
        torch.ao.nn.quantized.dynamic.Linear.from_float(_with_qconfig(stored.lm_head)).weight().dequantize(),
    )


def _with_qconfig(linear: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig

    linear.qconfig = per_channel_dynamic_qconfig
    return linear


def test_released_architectures_have_the_released_sizes():
    from transformers import Qwen3VLForConditionalGeneration

    counts = {}
    for size in ("2B", "8B"):
        with torch.device("meta"):
            model = Qwen3VLForConditionalGeneration(checkpoint_config(TINY, size=size))
        counts[size] = sum(p.numel() for p in model.parameters())
        assert model.config.text_config.vocab_size == 151936
    assert 2.10e9 < counts["2B"] < 2.15e9  # Qwen3-VL-2B: 2.13 B
    assert 8.70e9 < counts["8B"] < 8.80e9  # Qwen3-VL-8B: 8.77 B
    with pytest.raises(ValueError, match="2B"):
        checkpoint_config(TINY, size="3B")


def test_builder_writes_shards_that_load_without_missing_keys(tmp_path, monkeypatch):
    from transformers import Qwen3VLForConditionalGeneration

    from retrieval_pipeline import testing

    monkeypatch.setattr(testing, "SHARD_BYTES", 64 * 1024)  # several shards and an index, as at real size
    folder = build_random_checkpoint(tmp_path / "ckpt", like=TINY, hidden_size=64, dtype="bfloat16")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16


def _pipeline(store, **kwargs):
    return RAGPipeline(
        store,
        embedding_model=str(TINY),
        reranker_model=str(TINY),
        generator=str(TINY),
        device="cpu",
        torch_dtype="float32",
        generator_options={"max_new_tokens": 6},
        **kwargs,
    )


def test_stagewise_residency_frees_each_model_and_gives_the_same_results(tmp_path, monkeypatch):
    from retrieval_pipeline.models import generator as generator_module
    from retrieval_pipeline.models import reranker as reranker_module

    kept = _pipeline(EdgeStore(tmp_path / "kept", "docs"), offload=False)
    kept.index([CORPUS], show_progress_bar=False)
    expected = kept.ask("What does the revenue chart show?")
    assert kept._embedder is not None and kept._reranker is not None and kept._generator is not None

    alive: dict[str, weakref.ref] = {}
    seen_at_load: dict[str, list[str]] = {}

    def watch(module, cls_name, stage):
        cls = getattr(module, cls_name)

        class Watched(cls):
            def __init__(self, *args, **kwargs):
                gc.collect()
                seen_at_load[stage] = [name for name, ref in alive.items() if ref() is not None]
                super().__init__(*args, **kwargs)
                alive[stage] = weakref.ref(self)

        monkeypatch.setattr(module, cls_name, Watched)

    watch(reranker_module, "Qwen3VLReranker", "reranker")
    watch(generator_module, "Qwen3VLGenerator", "generator")
    from retrieval_pipeline import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "Qwen3VLGenerator", generator_module.Qwen3VLGenerator)
    staged = _pipeline(EdgeStore(tmp_path / "staged", "docs"))  # the CPU default: stage-wise
    staged.index([CORPUS], show_progress_bar=False)
    alive["embedder"] = weakref.ref(staged._embedder)
    answer = staged.ask("What does the revenue chart show?")
    # when the reranker loaded, the embedder was already gone; when the generator loaded, the reranker was
    assert seen_at_load == {"reranker": [], "generator": []}
    assert staged._embedder is None and staged._reranker is None and staged._generator is not None
    assert answer.text == expected.text
    assert [(h.id, h.rerank_score) for h in answer.sources] == [(h.id, h.rerank_score) for h in expected.sources]
    # a second question loads the embedder again and drops the generator
    again = staged.search("a cat on a sofa", top_k=2)
    assert staged._generator is None and staged._embedder is None and staged._reranker is not None
    assert [h.id for h in again] == [h.id for h in kept.search("a cat on a sofa", top_k=2)]
    names = [stage for stage, _, _ in staged.timings]
    for stage in ("load embedding model", "index", "embed query", "vector search", "rerank", "generate"):
        assert stage in names


def test_models_given_as_objects_are_never_dropped(embedder, reranker, tmp_path):
    store = EdgeStore(tmp_path / "db", "docs")
    rag = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=lambda q, hits: "ok", device="cpu")
    rag.index([CORPUS / "notes.md"], show_progress_bar=False)
    assert rag.ask("what is in the notes?").text == "ok"
    assert rag._embedder is embedder and rag._reranker is reranker


def test_collection_records_the_dtype_of_its_vectors(tmp_path, models_env):
    db = tmp_path / "db"
    env = {**models_env, "QWEN3VL_RAG_DTYPE": "auto", "QWEN3VL_RAG_CPU_BF16": "1"}
    run = cli("index", str(CORPUS / "notes.md"), env=env, db=db)
    assert run.returncode == 0, run.stderr
    assert "models: cpu, bfloat16 (native on this CPU" in run.stderr
    info = json.loads(cli("info", "--json", db=db).stdout)
    assert info["spec"]["dtype"] == "bfloat16"
    env["QWEN3VL_RAG_CPU_BF16"] = "0"
    run = cli("index", str(CORPUS / "rocket.jpg"), env=env, db=db)
    assert run.returncode == 0, run.stderr
    assert "models: cpu, float32 (this CPU has no native bfloat16; --dtype int8 runs" in run.stderr
    assert "holds bfloat16 vectors; these are computed in float32" in run.stderr


def test_serve_models_choice(tmp_path, models_env, monkeypatch):
    import httpx

    from retrieval_pipeline import cli as cli_module

    db = tmp_path / "db"
    apps = []
    monkeypatch.setattr("retrieval_pipeline.serving.serve", lambda app, host, port: apps.append(app))
    for key, value in {**models_env, "QWEN3VL_RAG_DB": str(db)}.items():
        monkeypatch.setenv(key, value)
    assert cli_module.main(["index", str(CORPUS / "notes.md"), "-q"]) == 0
    assert cli_module.main(["serve", "--models", "embed,rerank", "-q"]) == 0
    assert cli_module.main(["serve", "--models", "rerank", "-q"]) == 0
    assert cli_module.main(["serve", "--models", "rerank,generate", "-q"]) == 2  # a usage error
    assert cli_module.main(["serve", "--models", "embed,nonsense", "-q"]) == 2
    no_generator, rerank_only = apps
    assert no_generator.state.serving.pipeline._generator is None
    with LiveServer(no_generator) as url:
        assert httpx.post(f"{url}/v1/search", json={"query": "cat", "top_k": 1}).status_code == 200
        asked = httpx.post(f"{url}/v1/ask", json={"question": "what?"})
        assert asked.status_code == 404 and "generator" in asked.text
    with LiveServer(rerank_only) as url:
        ranked = httpx.post(f"{url}/v1/rerank", json={"query": "cat", "documents": ["a cat", "a car"]})
        assert ranked.status_code == 200
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "cat"}).status_code == 404
        assert httpx.post(f"{url}/v1/search", json={"query": "cat"}).status_code == 404


def test_rerank_budget_reranks_the_best_candidates_and_always_the_top_k(embedder, reranker, tmp_path):
    from retrieval_pipeline.retriever import TwoStageRetriever, rerank_cost

    store = EdgeStore(tmp_path / "db", "docs")
    RAGPipeline(store, embedder=embedder).index([CORPUS], show_progress_bar=False)
    unlimited = TwoStageRetriever(embedder, store, reranker, candidates=7)
    everything = unlimited.retrieve("revenue chart", top_k=7)
    assert all(h.rerank_score is not None for h in everything)
    tight = TwoStageRetriever(embedder, store, reranker, candidates=7, rerank_budget=1)
    hits = tight.retrieve("revenue chart", top_k=2)
    assert len(hits) == 2 and all(h.rerank_score is not None for h in hits)  # the top_k are always reranked
    candidates = tight.retrieve("revenue chart", top_k=7, rerank=False)
    costs = [rerank_cost(h.item, reranker.media) for h in candidates]
    assert max(costs) > 3 * 1000  # a page or photo: its vision tokens count three times
    budget = sum(costs[:3])
    fresh = tight.retrieve("revenue chart", top_k=7, rerank=False)
    some = TwoStageRetriever(embedder, store, reranker, rerank_budget=budget).rerank_hits("revenue chart", fresh)
    assert len(some) == 7
    assert {h.id for h in some[:3]} == {h.id for h in candidates[:3]}  # the best three by vector score, reranked
    assert all(h.rerank_score is not None for h in some[:3]) and all(h.rerank_score is None for h in some[3:])
    assert [h.id for h in some[3:]] == [h.id for h in candidates[3:]]  # the rest in vector order, after them


def test_cpu_defaults_and_speed_knobs(tmp_path):
    store = EdgeStore(tmp_path / "db", "docs")
    cpu = RAGPipeline(store, device="cpu", embedding_model=str(TINY), media_options={"max_pixels": 64 * 1024})
    assert cpu.candidates == 20 and cpu.rerank_budget == 6000 and cpu.staging == "free"
    assert cpu.embedder.media.max_pixels == 64 * 1024
    kept = RAGPipeline(store, device="cpu", offload=False, candidates=7, rerank_budget=None)
    assert kept.candidates == 7 and kept.rerank_budget is None and kept.staging == "keep"


def test_index_bar_ends_with_the_real_counts(tmp_path, models_env, capsys, monkeypatch):
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    args = ("index", str(CORPUS), "--image-tokens", "64", "--video-frames", "4")
    code, out, err = main_here(capsys, monkeypatch, *args, db=tmp_path / "db")
    assert code == 0, err
    summary = out.strip().splitlines()[0]
    indexed = int(summary.split(": ")[1].split()[0])  # "6 files: 7 items indexed, ..."
    last_bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("indexing")][-1]
    assert f"6/6 files, {indexed} indexed, 0 present, 0 failed" in last_bar, (last_bar, summary)
    assert "100%" in last_bar and " left, " in last_bar


def test_a_cli_indexed_corpus_gets_its_vector_index(tmp_path, models_env, indexed_corpus, capsys, monkeypatch, caplog):
    """Qdrant Edge has no background optimizer: `index` builds the HNSW index when the unindexed vectors pass the
    indexing threshold (lowered here so the small corpus crosses it); `info` reports it; `optimize` runs it on
    demand (a segment under the threshold, set when the collection was created, stays a scan)."""
    db = tmp_path / "db"
    for key, value in {**models_env, "QWEN3VL_RAG_INDEXING_THRESHOLD_KB": "1"}.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("WARNING", logger="retrieval_pipeline"):
        code, _, err = main_here(capsys, monkeypatch, "index", str(CORPUS), db=db)
    assert code == 0, err
    assert "building the search index" in caplog.text
    info = json.loads(main_here(capsys, monkeypatch, "info", "--json", db=db)[1])
    vectors = info["index"]["vectors"]  # per named vector: the engine's total counts each of them
    assert vectors["dense"]["indexed"] == vectors["dense"]["held"] == info["points"] > 0
    assert vectors["bm25"]["indexed"] == vectors["bm25"]["held"] > 0  # the corpus's text chunks and PDF pages
    assert info["index"]["indexed_vectors"] == info["points"] + vectors["bm25"]["held"]
    plain = copy_indexed(indexed_corpus, tmp_path / "plain")  # indexed with the default threshold: a scan
    unindexed = json.loads(main_here(capsys, monkeypatch, "info", "--json", db=plain)[1])
    assert unindexed["index"]["vectors"]["dense"]["indexed"] == 0  # (a BM25 index exists from the first write)
    optimized = json.loads(main_here(capsys, monkeypatch, "optimize", "--json", db=plain)[1])
    assert optimized["points"] == unindexed["points"] and optimized["vectors"]["dense"]["indexed"] == 0
