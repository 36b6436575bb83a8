"""Real-size speed on a GPU: a random-weight Qwen3-VL-2B checkpoint built on the machine itself (what travels with a
device run is limited to tens of MiB), in bfloat16, against the official reference implementation on the same card.

    python benchmarks/bench_gpu_realsize.py [--size 2B] [--device cuda] [--reference DIR] [--json-out FILE]
    python benchmarks/bench_gpu_realsize.py --device cpu --size tiny --quick [--dtype float32] [--reference DIR]

One checkpoint plays all three roles; one model is resident at a time. Prints:

- embedding throughput (items/s, tokens/s, model TFLOP/s, MFU) at batch sizes 1-64 for 128-token texts (exactly 128
  tokens of text by the checkpoint's tokenizer, plus the prompt's own tokens), 1024x768 photos and PDF pages
  (examples/corpus/annual_report.pdf page 1, rendered as ingestion renders it). Inputs are prepared once (CPU:
  check, decode, tokenise; its items/s is printed too), then run with ``embed_prepared`` at each batch size, the
  token budget lifted so that a batch holds that many items (model time only); then ``embed`` end to end at the
  library's defaults (preparation included: what a caller sees). Tokens are the encoded items' lengths: the
  language model's sequence, an image's tokens after the vision tower's 2x2 merge included;
- rerank latency, p50 of 10 calls, for 20 / 50 / 100 text candidates (128 tokens each) and 20 page-image candidates;
- generation: 128 new tokens after a 300-word prompt, tokens/s (and MFU, small: decoding is bandwidth-bound);
- peak memory per model: the CUDA allocator's peak (``max_memory_allocated``, reset before the model loads, so
  weights included); on a CPU the process's peak RSS instead;
- with ``--reference DIR`` (a checkout of the official Qwen3-VL-Embedding repository; its ``src/models`` is imported
  from there, never copied here): its embedder one by one (a ``process()`` call per item) and in one call with all
  items, for the same texts and photos, and its reranker (one ``process()`` call: the official one runs one pair per
  forward) for the same candidates; items/s side by side with ours, ours / reference one-by-one, and the max |diff|
  of embeddings and scores between the two. A reference that fails to import or load is reported and skipped.

Model FLOPs (the MFU numerator; MFU = model FLOPs per second / the card's dense bfloat16 peak). Per sequence of L
tokens through the language model: ``2 * P_lm * L + 4 * layers * L^2 * d_attn`` with ``P_lm`` the decoder's
parameters (layers and final norm: the token-embedding lookup is no matmul; no lm_head for the embedder) and
``d_attn = heads * head_dim`` (the full score matrix is counted, also where causal kernels skip half of it: small for
128-token texts). Per image of grid (t, h, w), patches p = t*h*w before the 2x2 merge, through the vision tower:
``2 * P_patch * p + 2 * P_merge * p / 4 + 4 * depth * t * (h*w)^2 * d_vis``, with ``P_patch`` the patch embedding and
the vision blocks' parameters, ``P_merge`` the merger's and the deepstack mergers' (they run on merged tokens) and
``d_vis`` the tower's width (its attention is full, per frame). Generation adds ``2 * vocab * hidden`` per new token
(lm_head) and attends over the cache: ``4 * layers * context * d_attn`` per new token. The peak comes from
:data:`PEAK_TFLOPS` by ``torch.cuda.get_device_name()``, or ``--peak-tflops``; on a CPU MFU is n/a.

Targets (PASS / MISS at the end): embedding >= 5x the reference one by one (end to end, texts and photos), >= 40 %
MFU on batched text, 100-candidate rerank under 1 s. ``--quick`` (the CPU smoke test): batch sizes 1-2, 2 items per
modality, 2 page candidates, one rerank call per case. The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import random
import re
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_realsize import QUERIES, reset_peak, texts  # noqa: E402
from common import MEDIA, ROOT, TINY, WORDS, peak_mib  # noqa: E402

TEXT_TOKENS = 128
PHOTO_SIZE = (1024, 768)
PDF = ROOT / "examples" / "corpus" / "annual_report.pdf"
RERANK_TEXTS = (20, 50, 100)
NEW_TOKENS = 128
# Dense (no sparsity) bfloat16 tensor-core peak in TFLOPS, by device name: the first pattern that matches wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),  # SXM
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"RTX 4090", 165.0),
)
TARGET_EMBED_VS_REFERENCE = 5.0
TARGET_TEXT_MFU = 0.40
TARGET_RERANK_100_S = 1.0


@dataclass(frozen=True)
class Plan:
    """How much is run: the full plan on a GPU (estimated 5-6 minutes on an H100 with the reference, the 2B
    checkpoint's build included), a quick one on a CPU (the smoke test: about a minute on the tiny checkpoint)."""

    batch_sizes: tuple[int, ...]
    items: int  # items per modality in each timed run (at least the largest batch size)
    reps: int  # timed runs per batch size, the best kept
    rerank_runs: int  # rerank latency is the median of this many calls
    page_candidates: int
    ref_items: int  # items per modality for the reference (one by one and in one call)
    ref_runs: int  # reference rerank calls (median)


FULL = Plan(
    batch_sizes=(1, 2, 4, 8, 16, 32, 64), items=64, reps=2, rerank_runs=10, page_candidates=20, ref_items=64, ref_runs=3
)
QUICK = Plan(batch_sizes=(1, 2), items=2, reps=1, rerank_runs=1, page_candidates=2, ref_items=2, ref_runs=1)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def exact_texts(tokenizer: Any, n: int, tokens: int, seed: int) -> list[str]:
    """``n`` distinct texts of random words, each exactly ``tokens`` tokens by ``tokenizer`` (re-tokenised to check:
    cutting at a token boundary can merge differently once decoded)."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(100 * n):
        words = " ".join(rng.choice(WORDS) for _ in range(tokens * 2))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"][:tokens]
        text = tokenizer.decode(ids).strip()
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == tokens and text not in out:
            out.append(text)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not make {n} texts of exactly {tokens} tokens")


def distinct_images(image: Any, n: int) -> list[Any]:
    """``n`` copies of ``image``, each with one pixel changed: the same cost, distinct inputs (identical inputs in a
    call run once)."""
    out = []
    for i in range(n):
        copy = image.copy()
        copy.putpixel((i % copy.width, (i // copy.width) % copy.height), ((37 * i) % 256, (91 * i) % 256, 255))
        out.append(copy)
    return out


def pdf_page() -> Any:
    from retrieval_pipeline.ingest import render_pdf
    from retrieval_pipeline.models.encoding import MAX_PIXELS

    pages = render_pdf(PDF, max_pixels=MAX_PIXELS)
    _, page, _ = next(pages)
    pages.close()
    return page


# ----------------------------------------------------------------------------------------------------------------
# Measuring


class Device:
    """Synchronised timing and per-model peak memory on ``device`` (CUDA allocator, or the process's RSS)."""

    def __init__(self, device: str, peak_tflops: float | None) -> None:
        import torch

        self.torch = torch
        self.name = device
        self.cuda = device.startswith("cuda")
        if self.cuda and not torch.cuda.is_available():
            sys.exit("--device cuda but torch sees no CUDA device (use --device cpu for the smoke test)")
        self.card = torch.cuda.get_device_name(torch.device(device)) if self.cuda else "cpu"
        self.peak_tflops = peak_tflops if peak_tflops else card_peak(self.card) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def best(self, fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
        """The fastest of ``runs`` calls, and the last call's result."""
        times, results = zip(*(self.time(fn) for _ in range(runs)))
        return min(times), results[-1]

    def median(self, fn: Callable[[], Any], runs: int) -> float:
        return statistics.median(self.time(fn)[0] for _ in range(runs))

    def reset_memory(self) -> None:
        from retrieval_pipeline.models.runtime import release_memory

        gc.collect()
        release_memory()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak()

    def peak_gib(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**30
        return peak_mib() / 1024

    @property
    def memory_label(self) -> str:
        return "peak GPU memory (allocated)" if self.cuda else "peak RSS (process)"

    def mfu(self, flops_per_s: float) -> float | None:
        return flops_per_s / (self.peak_tflops * 1e12) if self.peak_tflops else None


def card_peak(name: str) -> float | None:
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return tflops
    return None


@dataclass(frozen=True)
class Flops:
    """Model FLOPs of one item (see the module docstring for the formula)."""

    lm_params: int
    lm_layers: int
    lm_width: int
    patch_params: int
    merge_params: int
    vis_depth: int
    vis_width: int
    merge: int
    head_params: int

    @classmethod
    def of(cls, model: Any) -> Flops:
        """From a loaded ``Qwen3VLModel`` (or ``...ForConditionalGeneration``) and its config."""
        lm = patch = merge = 0
        for name, p in model.named_parameters():
            if "language_model." in name:
                lm += 0 if "embed_tokens" in name else p.numel()
            elif "visual." in name:
                if "merger" in name:  # merger and deepstack_merger_list: on merged tokens
                    merge += p.numel()
                elif "pos_embed" not in name:  # patch_embed and the blocks: on every patch
                    patch += p.numel()
        text, vision = model.config.text_config, model.config.vision_config
        return cls(
            lm_params=lm,
            lm_layers=text.num_hidden_layers,
            lm_width=text.num_attention_heads * text.head_dim,
            patch_params=patch,
            merge_params=merge,
            vis_depth=vision.depth,
            vis_width=vision.hidden_size,
            merge=vision.spatial_merge_size**2,
            head_params=text.vocab_size * text.hidden_size,
        )

    def sequence(self, tokens: int) -> float:
        return 2.0 * self.lm_params * tokens + 4.0 * self.lm_layers * tokens**2 * self.lm_width

    def vision(self, grids: Any) -> float:
        total = 0.0
        for t, h, w in [] if grids is None else grids.tolist():
            patches = t * h * w
            total += 2.0 * self.patch_params * patches + 2.0 * self.merge_params * patches / self.merge
            total += 4.0 * self.vis_depth * t * (h * w) ** 2 * self.vis_width
        return total

    def item(self, enc: Any) -> float:
        return self.sequence(len(enc)) + self.vision(enc.image_grid_thw) + self.vision(enc.video_grid_thw)

    def generation(self, prompt: int, new: int) -> float:
        """Prefill of ``prompt`` tokens, then ``new`` tokens one at a time over the growing cache (lm_head each)."""
        decode = sum(
            2.0 * (self.lm_params + self.head_params) + 4.0 * self.lm_layers * (prompt + k) * self.lm_width
            for k in range(new - 1)
        )
        return self.sequence(prompt) + 2.0 * self.head_params + decode


def fmt(value: float | None, spec: str = ".2f", na: str = "n/a") -> str:
    return na if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def rounded(obj: Any) -> Any:
    """Floats to 4 significant digits, for the JSON line."""
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------------
# The official implementation: every difference of its API is handled in this class.


class Reference:
    """The official Qwen3-VL-Embedding implementation from a checkout (``DIR/src/models``), behind the three calls
    this benchmark makes: :meth:`load`, :meth:`embed` (a list of ``{"text"|"image": ...}`` dicts, one ``process()``
    call) and :meth:`score` (one ``process()`` call). Its modules are imported under private names, from there."""

    EMBEDDER = ("qwen3_vl_embedding.py", "Qwen3VLEmbedder")
    RERANKER = ("qwen3_vl_reranker.py", "Qwen3VLReranker")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        models = self.root / "src" / "models"
        if not (models / self.EMBEDDER[0]).exists():
            raise FileNotFoundError(f"{models / self.EMBEDDER[0]} not found (is {self.root} a checkout?)")
        self.commit = self._commit()
        self.notes: list[str] = []
        self.fixed: set[str] = set()
        self.classes = {
            kind: self._import(models / file, cls)
            for kind, (file, cls) in (("embedder", self.EMBEDDER), ("reranker", self.RERANKER))
        }

    def _commit(self) -> str:
        """The checkout's commit (``git rev-parse HEAD``; else a ``COMMIT`` file's first line), or "unknown"."""
        try:
            out = subprocess.run(["git", "-C", str(self.root), "rev-parse", "HEAD"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
        marker = self.root / "COMMIT"
        return marker.read_text().split("\n")[0].strip() if marker.exists() else "unknown"

    def _import(self, path: Path, cls: str) -> Any:
        """``cls`` from ``path``. The reranker imports ``scipy.special`` without using it: where scipy is missing
        (the GPU image), an empty stand-in is put in place for the import only."""
        stub = "scipy" in path.read_text() and importlib.util.find_spec("scipy") is None
        if stub:
            sys.modules["scipy"] = types.ModuleType("scipy")
            sys.modules["scipy.special"] = sys.modules["scipy"].special = types.ModuleType("scipy.special")  # type: ignore[attr-defined]
            self.notes.append(f"{path.name}: scipy is missing here, an empty stand-in was imported (unused)")
        try:
            spec = importlib.util.spec_from_file_location(f"_reference_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        finally:
            if stub:
                sys.modules.pop("scipy.special", None)
                sys.modules.pop("scipy", None)
        return getattr(module, cls)

    def load(self, kind: str, model: str, device: str, dtype: str) -> Any:
        """The reference ``kind`` ("embedder" / "reranker") on ``model`` in ``dtype``, on ``device``. The official
        classes pick CUDA when there is one (forks take ``use_cpu`` / ``device_id``): moved where asked if not."""
        import torch

        cls = self.classes[kind]
        params = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}  # to from_pretrained (transformers >= 5 name)
        target = torch.device(device)
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        if "use_cpu" in params:
            kwargs["use_cpu"] = target.type == "cpu"
        if "device_id" in params and target.type == "cuda":
            kwargs["device_id"] = target.index or 0
        obj = cls(model, **kwargs)
        if next(obj.model.parameters()).device != target:
            obj.model.to(target)
            if hasattr(obj, "score_linear"):
                obj.score_linear.to(target)
            if hasattr(obj, "device"):
                obj.device = target
        if kind == "reranker" and hasattr(obj, "tokenize"):
            self._typed_tokens(obj)
        return obj

    def _typed_tokens(self, reranker: Any) -> None:
        """The reranker's ``tokenize()`` re-pads ``input_ids`` but leaves the processor's ``mm_token_type_ids`` (which
        transformers 5 requires with images: 0 text, 1 image, 2 video token) a Python list, so any image document
        fails in the model. Where it comes back a list, it is rebuilt as a tensor from the final ``input_ids``
        (what the processor computes), aligned with their padding; a reference that returns a tensor is untouched."""
        import torch

        original = reranker.tokenize
        image_id, video_id = reranker.processor.image_token_id, reranker.processor.video_token_id

        def tokenize(pairs: Any, **kwargs: Any) -> Any:
            inputs = original(pairs, **kwargs)
            types = inputs.get("mm_token_type_ids")
            if types is not None and not isinstance(types, torch.Tensor):
                ids = inputs["input_ids"]
                inputs["mm_token_type_ids"] = (ids == image_id).long() + 2 * (ids == video_id).long()
                if "mm_token_type_ids" not in self.fixed:
                    self.fixed.add("mm_token_type_ids")
                    self.notes.append("reranker tokenize() left mm_token_type_ids a list: rebuilt as a tensor")
            return inputs

        reranker.tokenize = tokenize

    @staticmethod
    def embed(embedder: Any, items: list[dict[str, Any]]) -> np.ndarray:
        return embedder.process(items).float().cpu().numpy()

    @staticmethod
    def score(reranker: Any, query: Any, documents: list[Any]) -> list[float]:
        def as_dict(x: Any) -> dict[str, Any]:
            return x if isinstance(x, dict) else {"text": x} if isinstance(x, str) else {"image": x}

        return list(reranker.process({"query": as_dict(query), "documents": [as_dict(d) for d in documents]}))


# ----------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        import transformers

        self.args = args
        self.plan = QUICK if args.quick else FULL
        self.dev = Device(args.device, args.peak_tflops)
        self.kw = {"device": args.device, "torch_dtype": args.dtype}
        self.t0 = time.perf_counter()
        self.model = str(self.checkpoint())
        self.results: dict[str, Any] = {
            "card": self.dev.card,
            "size": args.size,
            "dtype": args.dtype,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "peak_tflops": self.dev.peak_tflops,
            "plan": asdict(self.plan),
        }
        self.ours: dict[str, Any] = {}  # our vectors and scores, for the reference's max |diff|
        self.reference: Reference | None = None
        if args.reference:
            try:
                self.reference = Reference(args.reference)
                self.results["reference"] = {"dir": str(args.reference), "commit": self.reference.commit}
                for note in self.reference.notes:
                    print("reference:", note)
            except Exception as exc:  # an import error, a missing folder: the rest still runs
                print(f"reference: cannot import from {args.reference}: {type(exc).__name__}: {exc}")
                self.results["reference"] = {"error": f"{type(exc).__name__}: {exc}"}

    def checkpoint(self) -> Path:
        from retrieval_pipeline.testing import build_random_checkpoint

        model = TINY if self.args.size == "tiny" else Path(self.args.cache) / self.args.size
        if not (Path(model) / "config.json").exists():
            print(f"building the random {self.args.size} checkpoint in {model} ...", flush=True)
            build_random_checkpoint(model, like=TINY, size=self.args.size)
            print(f"built the random {self.args.size} checkpoint in {time.perf_counter() - self.t0:.0f} s", flush=True)
        return Path(model)

    def phase(self, title: str) -> None:
        print(f"\n[{time.perf_counter() - self.t0:6.0f} s] {title}", flush=True)

    def save(self) -> None:
        if self.args.json_out:
            Path(self.args.json_out).write_text(json.dumps(rounded(self.results), indent=1))

    def inputs(self, processor: Any) -> None:
        from PIL import Image

        n = max(self.plan.items, max(self.plan.batch_sizes))
        self.texts = exact_texts(processor.tokenizer, max(n, max(RERANK_TEXTS)), TEXT_TOKENS, seed=1)
        photo = Image.open(MEDIA / "chelsea.jpg").convert("RGB").resize(PHOTO_SIZE)
        page = pdf_page()
        self.raw = {
            "texts": [{"text": t} for t in self.texts[:n]],
            "photos": [{"image": im} for im in distinct_images(photo, n)],
            "pages": [{"image": im} for im in distinct_images(page, n)],
        }
        self.page_docs = [{"image": im} for im in distinct_images(page, self.plan.page_candidates)]
        print(f"inputs: {n} per modality; photo {photo.width}x{photo.height}, PDF page {page.width}x{page.height}")

    # ------------------------------------------------------------------------------------------------------------
    def embedder(self) -> None:
        from retrieval_pipeline import Qwen3VLEmbedder

        self.phase("embedder (ours)")
        self.dev.reset_memory()
        load_s, emb = self.dev.time(lambda: Qwen3VLEmbedder(self.model, **self.kw))
        self.flops = Flops.of(emb.model)
        self.inputs(emb.processor)
        res: dict[str, Any] = {
            "load_s": load_s,
            "params_lm": self.flops.lm_params,
            "params_vision": self.flops.patch_params + self.flops.merge_params,
        }
        default_tokens = emb.max_batch_tokens
        overhead = len(emb.prepare([self.texts[0]])[0]) - TEXT_TOKENS
        print(f"  {emb.precision} on {self.dev.card}; texts: {TEXT_TOKENS} text tokens + {overhead} prompt tokens")
        print(f"  {'':8} {'batch':>5} {'items/s':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
        for modality, raw in self.raw.items():
            prep_s, prepared = self.dev.time(lambda raw=raw: emb.prepare(raw))
            longest = max(len(e) for e in prepared)
            tokens = [len(e) for e in prepared]
            flops = [self.flops.item(e) for e in prepared]
            rows = []
            for b in self.plan.batch_sizes:
                n = max(b, self.plan.items)
                emb.max_batch_tokens = b * longest  # the batch holds b items
                emb.embed_prepared(prepared[:b], batch_size=b)  # warm-up of the shapes
                s, _ = self.dev.best(
                    lambda b=b, n=n, p=prepared: emb.embed_prepared(p[:n], batch_size=b), self.plan.reps
                )
                row = {
                    "batch": b,
                    "items_s": n / s,
                    "tokens_s": sum(tokens[:n]) / s,
                    "tflops": sum(flops[:n]) / s / 1e12,
                }
                row["mfu"] = self.dev.mfu(sum(flops[:n]) / s)
                rows.append(row)
                print(
                    f"  {modality:8} {b:5d} {row['items_s']:9.2f} {row['tokens_s']:10.0f} {row['tflops']:8.2f} "
                    f"{pct(row['mfu']):>6}"
                )
            emb.max_batch_tokens = default_tokens
            e2e_s, vectors = self.dev.time(lambda raw=raw: emb.embed(raw, show_progress_bar=False))
            self.ours[modality] = vectors
            res[modality] = {
                "tokens_per_item": sum(tokens) / len(tokens),
                "prepare_items_s": len(raw) / prep_s,
                "model": rows,
                "end_to_end_items_s": len(raw) / e2e_s,
            }
            print(
                f"  {modality:8} prepare (CPU) {len(raw) / prep_s:.2f} items/s; end to end at the defaults "
                f"(batch {emb.batch_size}, budget {default_tokens} tokens) {len(raw) / e2e_s:.2f} items/s; "
                f"{sum(tokens) / len(tokens):.0f} tokens/item"
            )
        res["peak_gib"] = self.dev.peak_gib()
        print(f"  {self.dev.memory_label}: {res['peak_gib']:.2f} GiB")
        self.results["embedder"] = res
        self.save()

    def reference_embedder(self) -> None:
        if self.reference is None:
            return
        self.phase(f"embedder (reference, commit {self.reference.commit[:12]})")
        out: dict[str, Any] = {}
        try:
            self.dev.reset_memory()
            load_s, ref = self.dev.time(
                lambda: self.reference.load("embedder", self.model, self.args.device, self.args.dtype)
            )
            out["load_s"] = load_s
            n = self.plan.ref_items
            for modality in ("texts", "photos"):
                raw = self.raw[modality][:n]
                Reference.embed(ref, raw[:1])  # warm-up
                one_s, one = self.dev.time(lambda raw=raw: np.concatenate([Reference.embed(ref, [x]) for x in raw]))
                call_s, call = self.dev.best(lambda raw=raw: Reference.embed(ref, raw), self.plan.reps)
                ours = self.results["embedder"][modality]
                e2e = ours["end_to_end_items_s"]
                best = max(r["items_s"] for r in ours["model"])
                row = {
                    "items": n,
                    "one_by_one_items_s": n / one_s,
                    "one_call_items_s": n / call_s,
                    "ours_end_to_end_vs_one_by_one": e2e / (n / one_s),
                    "ours_best_model_vs_one_by_one": best / (n / one_s),
                    "max_abs_diff_one_by_one": float(np.abs(self.ours[modality][:n] - one).max()),
                    "max_abs_diff_one_call": float(np.abs(self.ours[modality][:n] - call).max()),
                }
                out[modality] = row
                print(
                    f"  {modality:7} reference one by one {row['one_by_one_items_s']:8.2f} items/s, one call "
                    f"{row['one_call_items_s']:8.2f} items/s | ours end to end {e2e:8.2f} "
                    f"({row['ours_end_to_end_vs_one_by_one']:.1f}x one by one), ours best batch {best:8.2f} "
                    f"({row['ours_best_model_vs_one_by_one']:.1f}x) | max |diff| {row['max_abs_diff_one_by_one']:.2e} "
                    f"(one call {row['max_abs_diff_one_call']:.2e})"
                )
            out["peak_gib"] = self.dev.peak_gib()
            print(f"  {self.dev.memory_label}: {out['peak_gib']:.2f} GiB")
        except Exception as exc:
            print(f"  reference embedder failed: {type(exc).__name__}: {exc}")
            out["error"] = f"{type(exc).__name__}: {exc}"
        self.results.setdefault("reference", {})["embedder"] = out
        self.save()

    # ------------------------------------------------------------------------------------------------------------
    def cases(self) -> list[tuple[str, list[Any]]]:
        return [(f"{k} texts", [{"text": t} for t in self.texts[:k]]) for k in RERANK_TEXTS] + [
            (f"{len(self.page_docs)} pages", self.page_docs)
        ]

    def reranker(self) -> None:
        from retrieval_pipeline import Qwen3VLReranker

        self.phase(f"reranker (ours): latency, p50 of {self.plan.rerank_runs} calls")
        self.dev.reset_memory()
        load_s, rr = self.dev.time(lambda: Qwen3VLReranker(self.model, **self.kw))
        res: dict[str, Any] = {"load_s": load_s}
        query = QUERIES[0]
        for label, docs in self.cases():
            self.ours[label] = rr.score(query, docs, show_progress_bar=False)  # warm-up
            s = self.dev.median(lambda docs=docs: rr.score(query, docs, show_progress_bar=False), self.plan.rerank_runs)
            prep_s, _ = self.dev.time(lambda docs=docs: rr.prepare(query, docs))
            key = label.replace(" ", "_")
            res[key + "_p50_s"] = s
            res[key + "_prepare_s"] = prep_s
            print(f"  {label:10} {s:8.3f} s   {len(docs) / s:8.1f} candidates/s   (preparing, CPU: {prep_s:.3f} s)")
        res["peak_gib"] = self.dev.peak_gib()
        print(f"  {self.dev.memory_label}: {res['peak_gib']:.2f} GiB")
        self.results["reranker"] = res
        self.save()

    def reference_reranker(self) -> None:
        if self.reference is None:
            return
        self.phase(f"reranker (reference): one process() call, p50 of {self.plan.ref_runs}")
        out: dict[str, Any] = {}
        try:
            self.dev.reset_memory()
            load_s, ref = self.dev.time(
                lambda: self.reference.load("reranker", self.model, self.args.device, self.args.dtype)
            )
            out["load_s"] = load_s
            query = QUERIES[0]
            Reference.score(ref, query, self.cases()[0][1][:2])  # warm-up
            for label, docs in self.cases():
                times, scores = zip(
                    *(
                        self.dev.time(lambda docs=docs: Reference.score(ref, query, docs))
                        for _ in range(self.plan.ref_runs)
                    )
                )
                s = statistics.median(times)
                ours = self.results["reranker"][label.replace(" ", "_") + "_p50_s"]
                diff = float(np.abs(np.array(scores[-1]) - np.array(self.ours[label])).max())
                key = label.replace(" ", "_")
                out[key] = {"p50_s": s, "reference_over_ours": s / ours, "max_abs_diff": diff}
                print(
                    f"  {label:10} reference {s:8.3f} s | ours {ours:8.3f} s | reference / ours {s / ours:6.1f}x | "
                    f"max |score diff| {diff:.2e}"
                )
            out["peak_gib"] = self.dev.peak_gib()
            print(f"  {self.dev.memory_label}: {out['peak_gib']:.2f} GiB")
            for note in self.reference.notes:
                print("  note:", note)
            out["notes"] = list(self.reference.notes)
        except Exception as exc:
            print(f"  reference reranker failed: {type(exc).__name__}: {exc}")
            out["error"] = f"{type(exc).__name__}: {exc}"
        self.results.setdefault("reference", {})["reranker"] = out
        self.save()

    # ------------------------------------------------------------------------------------------------------------
    def generator(self) -> None:
        import torch

        from retrieval_pipeline.models.generator import Qwen3VLGenerator

        self.phase(f"generator (ours): {NEW_TOKENS} new tokens, greedy")
        self.dev.reset_memory()
        load_s, gen = self.dev.time(lambda: Qwen3VLGenerator(self.model, **self.kw))
        prompt = gen.processor.tokenizer(" ".join(texts(1, 300, seed=4)), return_tensors="pt").to(gen.device)
        options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}
        with torch.inference_mode():
            gen.model.generate(**prompt, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
            s, output = self.dev.time(lambda: gen.model.generate(**prompt, **options))
        n_prompt = int(prompt["input_ids"].shape[1])
        new = int(output.shape[1]) - n_prompt
        flops = self.flops.generation(n_prompt, new)
        res = {
            "load_s": load_s,
            "prompt_tokens": n_prompt,
            "new_tokens": new,
            "tokens_s": new / s,
            "seconds": s,
            "mfu": self.dev.mfu(flops / s),
            "peak_gib": self.dev.peak_gib(),
        }
        print(
            f"  {new} tokens after a {n_prompt}-token prompt in {s:.2f} s: {new / s:.1f} tokens/s, "
            f"MFU {pct(res['mfu'])}"
        )
        print(f"  {self.dev.memory_label}: {res['peak_gib']:.2f} GiB")
        self.results["generator"] = res
        self.save()

    # ------------------------------------------------------------------------------------------------------------
    def targets(self) -> None:
        self.phase("targets")
        checks: dict[str, Any] = {}
        ref = self.results.get("reference", {}).get("embedder", {})
        if "texts" in ref:
            ratio = min(ref[m]["ours_end_to_end_vs_one_by_one"] for m in ("texts", "photos"))
            checks["embedding_vs_reference_one_by_one"] = (ratio, ratio >= TARGET_EMBED_VS_REFERENCE)
        else:
            checks["embedding_vs_reference_one_by_one"] = (None, None)
        mfu = [r["mfu"] for r in self.results["embedder"]["texts"]["model"] if r["mfu"] is not None]
        best = max(mfu) if mfu else None
        checks["text_mfu"] = (best, None if best is None else best >= TARGET_TEXT_MFU)
        rerank = self.results["reranker"]["100_texts_p50_s"]
        checks["rerank_100_s"] = (rerank, rerank < TARGET_RERANK_100_S)
        labels = {
            "embedding_vs_reference_one_by_one": (
                f">= {TARGET_EMBED_VS_REFERENCE:.0f}x reference one by one (end to end, worse of texts / photos)",
                ".1f",
                "x",
            ),
            "text_mfu": (f">= {TARGET_TEXT_MFU:.0%} MFU on batched text (best batch size)", ".1%", ""),
            "rerank_100_s": (f"100-candidate rerank < {TARGET_RERANK_100_S:.0f} s (p50)", ".3f", " s"),
        }
        judged = self.dev.cuda and self.args.size != "tiny"
        if not judged:  # the targets are for a GPU at the released size: a CPU or tiny run checks the script
            checks = {k: (v, None) for k, (v, _) in checks.items()}
            print("  (not judged: the targets are for a GPU at the released size; this run checks the script)")
        for key, (value, ok) in checks.items():
            label, spec, unit = labels[key]
            verdict = "n/a " if ok is None else "PASS" if ok else "MISS"
            print(f"  {verdict}  {label:62} {fmt(value, spec)}{unit if value is not None else ''}")
        self.results["targets"] = {k: {"value": v, "pass": ok} for k, (v, ok) in checks.items()}


def quiet() -> None:
    """No per-load reports and progress bars from transformers, no deprecation notes from the reference's calls."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated")
    warnings.filterwarnings("ignore", message=".*max_length.* is ignored when .*padding")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2B", choices=["2B", "8B", "tiny"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize")
    ap.add_argument("--quick", action="store_true", help="few items and repetitions (the CPU smoke test)")
    ap.add_argument("--reference", metavar="DIR", help="a checkout of the official Qwen3-VL-Embedding repository")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bfloat16 peak (default: by its name)")
    ap.add_argument("--json-out", metavar="FILE", help="also write the numbers there (after each phase)")
    args = ap.parse_args()
    quiet()
    bench = Bench(args)
    print(
        f"{args.size} checkpoint {bench.model}; {bench.dev.card}, {args.dtype}, torch {bench.results['torch']}, "
        f"transformers {bench.results['transformers']}, bf16 peak {fmt(bench.dev.peak_tflops, '.0f')} TFLOPS; "
        f"plan {'quick' if args.quick else 'full'}"
    )
    bench.embedder()
    bench.reference_embedder()
    bench.reranker()
    bench.reference_reranker()
    bench.generator()
    bench.targets()
    bench.results["seconds"] = time.perf_counter() - bench.t0
    bench.save()
    print(f"\ndone in {bench.results['seconds']:.0f} s; all numbers:")
    print(json.dumps(rounded(bench.results), separators=(",", ":")))


if __name__ == "__main__":
    main()
