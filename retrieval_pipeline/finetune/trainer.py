"""Fine-tuning loops: LoRA adapters (peft) on the embedder's and the reranker's backbone, trained through the exact
inference path.

The training forward is the inference forward: inputs are encoded by the model's own ``prepare`` (instructions,
chat template, images, videos and pages through the same preprocessing), batched by its ``_collate`` and run by
:func:`~retrieval_pipeline.models.batching.last_token_states` -- only without ``inference_mode``. The embedder's
loss is InfoNCE (with Matryoshka prefixes) on the last-token states; the reranker's is binary cross-entropy on
``h_last . (W[yes] - W[no])``, the logit its score is the sigmoid of.

Practicalities: gradient checkpointing and gradient accumulation (the 2B model in bfloat16 trains within a 24 GB
GPU, and slowly on a CPU), the held-out split scored by the ``eval`` machinery (exact search at the Matryoshka
dimensions and ``ir_measures``; reranking of each held-out query's candidates) before training, every
``eval_every`` steps and at the end; a checkpoint of the adapters, the optimizer, the schedule and every random
generator every ``checkpoint_every`` steps under ``<out>/.finetune-state`` (a second run with the same settings
resumes from the last one and ends with the same weights as an uninterrupted run); a progress bar with the loss
and the metric; a plot of both; ``seed`` makes the run deterministic.

The result is a model folder (:func:`save_model_folder`): by default the adapters merged into the weights, saved
in the base checkpoint's own layout and dtype, with its processor files; ``keep_adapters`` saves the adapters
alone (transformers loads them on the base model they name). Its fingerprint is not the base's, so collections
built with the base model refuse its vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluate import Dataset, _Collection, _exact, score
from ..fingerprint import model_fingerprint
from ..models.batching import last_token_states
from ..models.encoding import Encoded
from ..models.runtime import release_memory
from ..retriever import QUERY_INSTRUCTION
from .data import TrainingData, embedder_examples, reranker_examples
from .losses import matryoshka_info_nce, yes_no_bce
from .mining import mine_from_collection, mine_in_memory, random_negatives

logger = logging.getLogger(__name__)

STATE_DIR = ".finetune-state"
KEEP_CHECKPOINTS = 2
# Bytes of encoded inputs (token ids and pixel patches) kept between steps; past it the cache starts over.
ENCODING_CACHE_BYTES = 1024**3
# Most corpus items scored by the embedder's held-out evaluation (the judged ones always among them).
MAX_EVAL_CORPUS = 20_000
LANGUAGE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_MODULES = ("qkv", "proj", "linear_fc1", "linear_fc2")


@dataclass
class FinetuneConfig:
    """How to train. ``batch_size``: queries (embedder) or pairs (reranker) per forward; ``grad_accum`` forwards
    per optimizer step. ``dims``: the Matryoshka dimensions the loss covers besides the full one (the embedder's
    held-out metric is read at the first of them). ``hard_negatives``: mined negatives per query for the embedder;
    ``negatives``: per judged query for the reranker. ``eval_split``: the held-out fraction when the caller gives a
    dataset rather than :class:`TrainingData`."""

    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # default: 5% of the steps
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_vision: bool = False
    temperature: float = 0.05
    dims: tuple[int, ...] = ()
    hard_negatives: int = 0
    negatives: int = 3
    random_negatives: bool = False
    eval_every: int = 50
    checkpoint_every: int = 50
    eval_k: int = 10
    seed: int = 0
    gradient_checkpointing: bool = True
    max_steps: int | None = None
    keep_adapters: bool = False
    resume: bool = True
    query_instruction: str = QUERY_INSTRUCTION
    document_instruction: str | None = None
    rerank_instruction: str | None = None
    eval_split: float = 0.2

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        for name in ("epochs", "batch_size", "grad_accum", "lora_r", "eval_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "hard_negatives", "negatives"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def training_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one (not the schedule of evaluations,
        checkpoints or the output format)."""
        skip = {"eval_every", "checkpoint_every", "keep_adapters", "resume", "eval_k"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class FinetuneResult:
    """What a fine-tuning run made: the model folder (``path``), the trained model in memory (``model``: the
    embedder or reranker, its weights the folder's), the metric before and after, the history of the loss and
    of every evaluation, and the fingerprints of the folder and of the base."""

    kind: str
    path: Path
    model: Any
    base_model: str
    metric: str
    before: dict[str, float]
    after: dict[str, float]
    history: dict[str, list[Any]]
    steps: int
    seconds: float
    fingerprint: str
    base_fingerprint: str
    plot: Path | None = None
    resumed_from: int | None = None

    @property
    def steps_per_second(self) -> float:
        trained = self.steps - (self.resumed_from or 0)
        return trained / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "base_model": self.base_model,
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps_per_second, 4),
            "resumed_from": self.resumed_from,
            "fingerprint": self.fingerprint,
            "base_fingerprint": self.base_fingerprint,
            "plot": str(self.plot) if self.plot else None,
            "history": self.history,
        }

    def summary(self) -> str:
        lines = [f"fine-tuned {self.kind} {self.base_model} -> {self.path} ({self.steps} steps)"]
        if self.before or self.after:
            names = sorted(set(self.before) | set(self.after), key=lambda n: (n != self.metric, n))
            lines.append("| held-out | before | after |")
            lines.append("|---|---|---|")
            for name in names:
                b, a = self.before.get(name), self.after.get(name)
                lines.append(f"| {name} | {_fmt(b)} | {_fmt(a)} |")
        lines.append(f"fingerprint {self.fingerprint} (base {self.base_fingerprint})")
        if self.plot:
            lines.append(f"plot: {self.plot}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------------------------------------------
# public entry points


def finetune_embedder(
    embedder: Any,
    data: TrainingData | Dataset,
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    store: Any = None,
    root: str | Path | None = None,
    show_progress_bar: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    **model_kwargs: Any,
) -> FinetuneResult:
    """Train LoRA adapters on ``embedder`` (a :class:`~retrieval_pipeline.Qwen3VLEmbedder`, or a model name loaded
    with ``model_kwargs``) with InfoNCE over in-batch and hard negatives (mined from ``store``, an indexed
    collection of the same model, when ``config.hard_negatives`` > 0; else in memory), Matryoshka over
    ``config.dims``; save the model folder to ``out``. ``callback(step, info)`` runs after every optimizer step."""
    from ..models.embedder import Qwen3VLEmbedder

    config = config or FinetuneConfig()
    model = Qwen3VLEmbedder(str(embedder), **model_kwargs) if isinstance(embedder, (str, Path)) else embedder
    data = _as_training_data(data, config)
    return _EmbedderTrainer(model, data, Path(out), config, store, root, show_progress_bar, callback).run()


def finetune_reranker(
    reranker: Any,
    data: TrainingData | Dataset,
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    miner: Any = None,
    store: Any = None,
    root: str | Path | None = None,
    show_progress_bar: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    **model_kwargs: Any,
) -> FinetuneResult:
    """Train LoRA adapters on ``reranker`` (a :class:`~retrieval_pipeline.Qwen3VLReranker` or a model name) with
    binary cross-entropy on the yes-minus-no logit of judged pairs and ``config.negatives`` negatives per query:
    mined by ``miner`` (an embedder, or a function that loads one: it is dropped after mining; from ``store`` when
    given, else in memory over the corpus), else drawn at random. The held-out metric reranks each held-out
    query's judged documents and negatives."""
    from ..models.reranker import Qwen3VLReranker

    config = config or FinetuneConfig()
    model = Qwen3VLReranker(str(reranker), **model_kwargs) if isinstance(reranker, (str, Path)) else reranker
    data = _as_training_data(data, config)
    trainer = _RerankerTrainer(model, data, Path(out), config, store, root, show_progress_bar, callback)
    trainer.miner = miner
    return trainer.run()


def _as_training_data(data: TrainingData | Dataset, config: FinetuneConfig) -> TrainingData:
    if isinstance(data, TrainingData):
        return TrainingData(data.train, data.held_out, {q: list(d) for q, d in data.negatives.items()})
    from .data import split_dataset

    train, held = split_dataset(data, config.eval_split, seed=config.seed)
    return TrainingData(train, held, {})


# ----------------------------------------------------------------------------------------------------------------
# the loop


class _Trainer:
    kind = "model"

    def __init__(
        self,
        model: Any,
        data: TrainingData,
        out: Path,
        config: FinetuneConfig,
        store: Any,
        root: str | Path | None,
        show_progress_bar: bool,
        callback: Callable[[int, dict[str, Any]], None] | None,
    ) -> None:
        self.model = model
        self.data = data
        self.out = out
        self.config = config
        self.store = store
        self.root = root
        self.show_progress_bar = show_progress_bar
        self.callback = callback
        name = Path(str(model.model_name_or_path)).expanduser()
        self.base_name = str(name.resolve()) if name.is_dir() else str(model.model_name_or_path)
        self.base_fingerprint = model_fingerprint(self.base_name, _revision(model))
        self.metric = f"nDCG@{config.eval_k}"
        self._cache: dict[tuple[str, ...], Encoded] = {}
        self._cache_bytes = 0
        self.peft_model: Any = None

    # --- hooks ----------------------------------------------------------------------------------------------
    def mine(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def examples(self) -> list[Any]:
        raise NotImplementedError

    def micro_loss(self, batch: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def held_out_metrics(self) -> dict[str, float]:
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------------------------
    def _cached(self, key: tuple[str, ...], encode: Callable[[], Encoded]) -> Encoded:
        enc = self._cache.get(key)
        if enc is None:
            enc = encode()
            if self._cache_bytes + enc.nbytes > ENCODING_CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            self._cache[key] = enc
            self._cache_bytes += enc.nbytes
        return enc

    def _states(self, items: list[Encoded]) -> torch.Tensor:
        """Last-token states of ``items`` with gradients: the inference forward (same collate, same pooling)."""
        m = self.model
        return last_token_states(self.peft_model, m._collate(items), m.device, m.dtype)

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR

    def _run_key(self, negatives: Mapping[str, Sequence[str]]) -> str:
        data = {
            "kind": self.kind,
            "base": self.base_fingerprint,
            "config": self.config.training_key(),
            "train": {q: self.data.train.qrels[q] for q in sorted(self.data.train.qrels)},
            "held_out": sorted(self.data.held_out.qrels),
            "corpus": sorted(self.data.corpus),
            "negatives": {q: list(v) for q, v in sorted(negatives.items())},
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]

    # --- the run --------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        from peft import LoraConfig, get_peft_model

        config = self.config
        if getattr(self.model, "quantization", None):
            raise ValueError(f"an {self.model.quantization} model cannot be fine-tuned: load it in float32 or bfloat16")
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / "config.json").exists() or (self.out / "adapter_config.json").exists():
            if not self.state_dir.exists():
                raise ValueError(f"{self.out} already holds a model; give another --out (or delete it)")
        _seed_everything(config.seed)
        saved_negatives = self._saved_negatives() if config.resume else None
        mined = saved_negatives if saved_negatives is not None else self.mine()
        negatives = {q: list(v) for q, v in self.data.negatives.items()}
        for q, docs in mined.items():
            negatives[q] = list(dict.fromkeys([*negatives.get(q, []), *docs]))
        self.data.negatives = negatives
        run_key = self._run_key(negatives)
        self.examples_list = self.examples()
        if not self.examples_list:
            raise ValueError("no training examples: no judged relevant document of a training query is in the corpus")
        n_micro = math.ceil(len(self.examples_list) / config.batch_size)
        steps_per_epoch = math.ceil(n_micro / config.grad_accum)
        total = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)

        torch.manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=_target_regex(config.lora_vision),
        )
        backbone = self.model.model
        self.peft_model = get_peft_model(backbone, lora)
        base = self.peft_model.get_base_model()
        if config.gradient_checkpointing:
            _checkpointing(base, True)
        self.model.model = self.peft_model
        trainable = [p for p in self.peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        warmup = config.warmup_steps if config.warmup_steps is not None else max(0, round(0.05 * total))

        def schedule(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        history: dict[str, list[Any]] = {"loss": [], "eval": []}
        start = 0
        finished = False
        try:
            resumed = self._load_state(run_key, optimizer, scheduler) if config.resume else None
            if resumed is not None:
                start, history = resumed
                logger.info("resuming %s fine-tuning from step %d", self.kind, start)
            else:
                shutil.rmtree(self.state_dir, ignore_errors=True)
                self._write_negatives(negatives)
            if not history["eval"] and self.data.held_out.qrels:
                history["eval"].append({"step": 0, **self._evaluate()})
            seconds = self._train(start, total, steps_per_epoch, n_micro, optimizer, scheduler, history, run_key)
            result = self._finish(history, total, seconds, start or None)
            finished = True
            return result
        finally:
            if not finished:
                self._unload()

    def _train(
        self,
        start: int,
        total: int,
        steps_per_epoch: int,
        n_micro: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        history: dict[str, list[Any]],
        run_key: str,
    ) -> float:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(
            total=total,
            initial=start,
            desc=f"fine-tuning the {self.kind}",
            unit="step",
            disable=not self.show_progress_bar,
        )
        postfix: dict[str, str] = {}
        if history["eval"]:
            postfix[self.metric] = f"{history['eval'][-1][self.metric]:.3f}"
        seconds = 0.0
        self.peft_model.train()
        trainable = [p for p in self.peft_model.parameters() if p.requires_grad]
        with bar:
            for step in range(start, total):
                t0 = time.perf_counter()
                epoch, in_epoch = divmod(step, steps_per_epoch)
                order = _epoch_order(len(self.examples_list), config.seed, epoch)
                first = in_epoch * config.grad_accum
                micro = range(first, min(first + config.grad_accum, n_micro))
                optimizer.zero_grad(set_to_none=True)
                loss_value = 0.0
                for m in micro:
                    batch = [self.examples_list[i] for i in order[m * config.batch_size : (m + 1) * config.batch_size]]
                    loss = self.micro_loss(batch) / len(micro)
                    loss.backward()
                    loss_value += float(loss.detach())
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                seconds += time.perf_counter() - t0
                done = step + 1
                history["loss"].append({"step": done, "loss": loss_value, "lr": scheduler.get_last_lr()[0]})
                postfix["loss"] = f"{loss_value:.4f}"
                if config.eval_every and done % config.eval_every == 0 and done < total and self.data.held_out.qrels:
                    history["eval"].append({"step": done, **self._evaluate()})
                    postfix[self.metric] = f"{history['eval'][-1][self.metric]:.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < total:
                    self._save_state(done, run_key, optimizer, scheduler, history)
                if self.callback is not None:
                    self.callback(done, {"loss": loss_value, "eval": history["eval"][-1] if history["eval"] else None})
        return seconds

    def _evaluate(self, training: bool = True) -> dict[str, float]:
        self.model.model.eval()
        try:
            with torch.inference_mode():
                return self.held_out_metrics()
        finally:
            if training:
                self.model.model.train()

    # --- the state of an interrupted run --------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        if not self.state_dir.is_dir():
            return []
        found = [p for p in self.state_dir.glob("step-*") if (p / "state.json").exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def _saved_negatives(self) -> dict[str, list[str]] | None:
        file = self.state_dir / "negatives.json"
        if not self._checkpoints() or not file.exists():
            return None
        saved = json.loads(file.read_text())
        self.data.corpus.update(saved.get("corpus", {}))
        return {q: list(v) for q, v in saved["negatives"].items()}

    def _write_negatives(self, negatives: Mapping[str, Sequence[str]]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        added = {d: self.data.corpus[d] for docs in negatives.values() for d in docs if d in self.data.corpus}
        payload = {"negatives": negatives, "corpus": added}
        (self.state_dir / "negatives.json").write_text(json.dumps(payload, default=str))

    def _save_state(
        self, step: int, run_key: str, optimizer: torch.optim.Optimizer, scheduler: Any, history: dict[str, Any]
    ) -> None:
        from peft import get_peft_model_state_dict

        target = self.state_dir / f"step-{step:07d}"
        partial = self.state_dir / f".partial-{step:07d}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        adapters = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.peft_model).items()}
        torch.save(adapters, partial / "adapters.ckpt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, partial / "optim.ckpt")
        torch.save(_rng_state(), partial / "rng.ckpt")
        state = {"step": step, "run_key": run_key, "history": history}
        (partial / "state.json").write_text(json.dumps(state))  # last: a folder without it is incomplete
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        for old in self._checkpoints()[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_state(
        self, run_key: str, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> tuple[int, dict[str, list[Any]]] | None:
        from peft import set_peft_model_state_dict

        checkpoints = self._checkpoints()
        if not checkpoints:
            return None
        last = checkpoints[-1]
        state = json.loads((last / "state.json").read_text())
        if state.get("run_key") != run_key:
            raise ValueError(
                f"{self.out} holds the checkpoints of a fine-tuning run with other data or settings; resume it with "
                "those, or start over (--no-resume, or another --out)"
            )
        adapters = torch.load(last / "adapters.ckpt", map_location=self.model.device)
        set_peft_model_state_dict(self.peft_model, adapters)
        optim = torch.load(last / "optim.ckpt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        _set_rng_state(torch.load(last / "rng.ckpt", weights_only=False))
        return int(state["step"]), state["history"]

    # --- the end --------------------------------------------------------------------------------------------
    def _finish(self, history: dict[str, list[Any]], total: int, seconds: float, resumed: int | None) -> FinetuneResult:
        base = self.peft_model.get_base_model()
        if self.config.gradient_checkpointing:
            _checkpointing(base, False)
        self.peft_model.eval()
        provenance = {
            "kind": self.kind,
            "base_model": self.base_name,
            "base_fingerprint": self.base_fingerprint,
            "steps": total,
            "seed": self.config.seed,
            "adapters": "kept" if self.config.keep_adapters else "merged",
        }
        if self.config.keep_adapters:
            backbone = base
            save_adapter_folder(self.peft_model, self.model, self.out, provenance)
        else:
            backbone = self.peft_model.merge_and_unload()
            save_model_folder(backbone, self.model, self.out, provenance)
        backbone.eval()
        backbone.requires_grad_(False)
        self.model.model = backbone
        self.model.model_name_or_path = str(self.out.resolve())
        self._after_save()
        if self.data.held_out.qrels:  # the saved model itself (merged weights round differently from adapters)
            history["eval"].append({"step": total, **self._evaluate(training=False)})
        evals = history["eval"]
        before = _metrics_only(evals[0]) if evals else {}
        after = _metrics_only(evals[-1]) if evals else {}
        fingerprint = model_fingerprint(str(self.out))
        plot = plot_history(history, self.out / "training.png", self.metric) if history["loss"] else None
        result = FinetuneResult(
            kind=self.kind,
            path=self.out,
            model=self.model,
            base_model=self.base_name,
            metric=self.metric,
            before=before,
            after=after,
            history=history,
            steps=total,
            seconds=seconds,
            fingerprint=fingerprint,
            base_fingerprint=self.base_fingerprint,
            plot=plot,
            resumed_from=resumed,
        )
        info = {**result.to_dict(), "config": asdict(self.config)}
        (self.out / "finetune.json").write_text(json.dumps(info, indent=2, default=str))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        release_memory()
        return result

    def _after_save(self) -> None:
        """Drop what described the base model's identity on the loaded object (caches keyed by it)."""
        for attr in ("_fingerprint", "model_id", "revision"):
            if attr in vars(self.model):
                delattr(self.model, attr)

    def _unload(self) -> None:
        """After a failure or an interruption: the model without adapters, as it was given."""
        if self.peft_model is None:
            return
        base = self.peft_model.get_base_model()
        if self.config.gradient_checkpointing:
            _checkpointing(base, False)
        restored = self.peft_model.unload()
        restored.eval()
        restored.requires_grad_(False)
        self.model.model = restored

    def _mine_with(self, miner: Any, every: Dataset, n: int) -> dict[str, list[str]]:
        """``n`` hard negatives per query of ``every``, mined with ``miner``: from the collection when training
        has one, else in memory over the corpus (judged positives excluded either way)."""
        if self.store is not None:
            return mine_from_collection(
                miner,
                self.store,
                every.queries,
                every.qrels,
                per_query=n,
                corpus=self.data.corpus,
                query_instruction=self.config.query_instruction,
                root=self.root,
            )
        return mine_in_memory(
            miner,
            every,
            per_query=n,
            query_instruction=self.config.query_instruction,
            document_instruction=self.config.document_instruction,
        )


class _EmbedderTrainer(_Trainer):
    kind = "embedder"

    def mine(self) -> dict[str, list[str]]:
        n = self.config.hard_negatives
        if n <= 0:
            return {}
        return self._mine_with(self.model, self.data.train, n)

    def examples(self) -> list[tuple[str, str]]:
        return embedder_examples(self.data.train)

    def _encode(self, role: str, item_id: str) -> Encoded:
        instruction: str | None
        if role == "query":
            value, instruction = self.data.train.queries[item_id], self.config.query_instruction
        else:
            value, instruction = self.data.corpus[item_id], self.config.document_instruction
        return self._cached((role, item_id), lambda: self.model.prepare([value], instruction=instruction)[0])

    def micro_loss(self, batch: list[tuple[str, str]]) -> torch.Tensor:
        train = self.data.train
        docs: list[str] = [pos for _, pos in batch]
        for qid, _ in batch:
            docs.extend(self.data.negatives.get(qid, [])[: self.config.hard_negatives])
        docs = list(dict.fromkeys(docs))
        column = {d: j for j, d in enumerate(docs)}
        targets = torch.tensor([column[pos] for _, pos in batch])
        exclude = torch.tensor([[train.qrels[qid].get(d, 0) > 0 for d in docs] for qid, _ in batch], dtype=torch.bool)
        q = self._states([self._encode("query", qid) for qid, _ in batch])
        d = self._states([self._encode("document", did) for did in docs])
        device = q.device
        return matryoshka_info_nce(
            q.float(),
            d.float(),
            targets.to(device),
            dims=self.config.dims,
            temperature=self.config.temperature,
            exclude=exclude.to(device),
        )

    def held_out_metrics(self) -> dict[str, float]:
        held = self.data.held_out
        judged = [d for docs in held.qrels.values() for d in docs if d in self.data.corpus]
        ids = list(dict.fromkeys([*judged, *sorted(self.data.corpus)]))[:MAX_EVAL_CORPUS]
        matrix = self.model.embed([self.data.corpus[i] for i in ids], instruction=self.config.document_instruction)
        qids = sorted(held.qrels)
        vectors = self.model.embed([held.queries[q] for q in qids], instruction=self.config.query_instruction)
        collection = _Collection(ids, {i: i for i in ids}, matrix, [])
        dims = [*self.config.dims] or [int(matrix.shape[1])]
        k = self.config.eval_k
        depth = max(k, 100)
        out: dict[str, float] = {}
        for n, dim in enumerate(dict.fromkeys([*dims, int(matrix.shape[1])])):
            rankings = {q: [ids[i] for i in _exact(collection, v, dim, depth)] for q, v in zip(qids, vectors)}
            aggregate, _ = score({q: held.qrels[q] for q in qids}, rankings, k)
            if n == 0:
                out.update(aggregate)
            else:
                out[f"{self.metric} ({dim}-d)"] = aggregate[self.metric]
        return out


class _RerankerTrainer(_Trainer):
    kind = "reranker"
    miner: Any = None

    def mine(self) -> dict[str, list[str]]:
        n = self.config.negatives
        if n <= 0:
            return {}
        every = Dataset(
            {**self.data.train.queries, **self.data.held_out.queries},
            {**self.data.train.qrels, **self.data.held_out.qrels},
            self.data.corpus,
        )
        if self.config.random_negatives or self.miner is None:
            return random_negatives(every, per_query=n, seed=self.config.seed)
        miner = self.miner() if callable(self.miner) and not hasattr(self.miner, "embed") else self.miner
        self.miner = None  # a miner loaded here is dropped once the negatives are mined
        try:
            return self._mine_with(miner, every, n)
        finally:
            del miner
            release_memory()

    def examples(self) -> list[tuple[str, str, float]]:
        return reranker_examples(self.data.train, self.data.negatives)

    def _pair(self, qid: str, did: str) -> Encoded:
        queries = self.data.train.queries
        query = queries[qid] if qid in queries else self.data.held_out.queries[qid]

        def encode() -> Encoded:
            prepared = self.model.prepare(query, [self.data.corpus[did]], instruction=self.config.rerank_instruction)
            return prepared.pairs[0]

        return self._cached(("pair", qid, did), encode)

    def micro_loss(self, batch: list[tuple[str, str, float]]) -> torch.Tensor:
        states = self._states([self._pair(q, d) for q, d, _ in batch])
        logits = states.float() @ self.model._score_weight
        labels = torch.tensor([label for _, _, label in batch], device=logits.device)
        return yes_no_bce(logits, labels)

    def held_out_metrics(self) -> dict[str, float]:
        held = self.data.held_out
        rankings = {}
        for qid in sorted(held.qrels):
            candidates = [d for d in held.qrels[qid] if d in self.data.corpus]
            candidates += [d for d in self.data.negatives.get(qid, []) if d not in candidates]
            scores = self.model.score(
                held.queries[qid],
                [self.data.corpus[d] for d in candidates],
                instruction=self.config.rerank_instruction,
            )
            order = sorted(range(len(candidates)), key=lambda i: -scores[i])
            rankings[qid] = [candidates[i] for i in order]
        aggregate, _ = score({q: held.qrels[q] for q in rankings}, rankings, self.config.eval_k)
        return aggregate


# ----------------------------------------------------------------------------------------------------------------
# saving a model folder


def _target_regex(vision: bool) -> str:
    language = rf"language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(LANGUAGE_MODULES)})"
    if not vision:
        return rf".*{language}"
    return rf".*({language}|visual\.blocks\.\d+\.(attn|mlp)\.({'|'.join(VISION_MODULES)}))"


def _checkpointing(model: Any, on: bool) -> None:
    """Activation (gradient) checkpointing on or off: recompute each layer's activations in the backward pass."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.25 renamed gradient_checkpointing_*
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _revision(model: Any) -> str | None:
    revision = getattr(model, "init_kwargs", {}).get("revision")
    return revision if isinstance(revision, str) else None


def local_checkpoint(name: str, revision: str | None = None) -> Path:
    """The local folder of a checkpoint: the folder itself, or a hub model's cached snapshot."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, revision=revision, local_files_only=True))


def _copy_support_files(base: Path, out: Path) -> None:
    """The processor's files (tokenizer, chat template, processor and generation configs) and any other
    non-weight file of the base, beside the new weights."""
    for file in base.iterdir():
        name = file.name
        weights = file.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf") or name.endswith(".index.json")
        if file.is_file() and not weights and not name.startswith(".") and name != "config.json":
            shutil.copyfile(file, out / name)


def save_model_folder(backbone: torch.nn.Module, model: Any, out: Path, provenance: dict[str, Any]) -> Path:
    """Save ``backbone`` (the merged language model and vision tower) as a full checkpoint in ``out``: the base
    checkpoint's weight files with every backbone tensor replaced (same names, shards and dtypes; its ``lm_head``
    kept), its config with ``qwen3vl_rag_finetune`` added (what it was made from), and its processor files. The
    in-memory weights are rounded to the saved dtype, so the folder loads to exactly the model in memory."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    base = local_checkpoint(str(provenance["base_model"]), _revision(model))
    files = sorted(base.glob("*.safetensors"))
    state = backbone.state_dict()
    params = dict(backbone.named_parameters())
    written: set[str] = set()
    out.mkdir(parents=True, exist_ok=True)
    for file in files:
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():
                name = next((n for n in (key, key.removeprefix("model.")) if n in state), None)
                if name is not None:
                    written.add(name)
    if not files or set(state) - written:
        return _save_with_transformers(backbone, model, out, provenance)
    for file in files:
        with safe_open(str(file), "pt") as fh:
            keys = list(fh.keys())
            metadata = fh.metadata() or {}
            tensors: dict[str, torch.Tensor] = {}
            for key in keys:
                name = next((n for n in (key, key.removeprefix("model.")) if n in state), None)
                if name is None:
                    tensors[key] = fh.get_tensor(key)
                    continue
                stored = fh.get_slice(key).get_dtype()
                dtype = _SAFETENSORS_DTYPES.get(stored, state[name].dtype)
                tensors[key] = state[name].detach().to("cpu", dtype).contiguous()
                if name in params and params[name].dtype != dtype and params[name].is_floating_point():
                    with torch.no_grad():  # round the live weights the way the file holds them
                        params[name].data = params[name].data.to(dtype).to(params[name].dtype)
        save_file(tensors, str(out / file.name), metadata={**metadata, "format": "pt"})
        del tensors
    for index in base.glob("*.safetensors.index.json"):
        shutil.copyfile(index, out / index.name)
    _copy_support_files(base, out)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["qwen3vl_rag_finetune"] = provenance
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
}


def _save_with_transformers(backbone: torch.nn.Module, model: Any, out: Path, provenance: dict[str, Any]) -> Path:
    """A base whose weight files do not name the backbone's tensors: load the full base model and save it with
    the merged backbone through transformers (the slower way, one more copy of the weights in memory)."""
    from transformers import Qwen3VLForConditionalGeneration

    name = str(provenance["base_model"])
    base = local_checkpoint(name, _revision(model))
    full = Qwen3VLForConditionalGeneration.from_pretrained(str(base), dtype="auto")
    dtype = next(full.model.parameters()).dtype
    full.model.load_state_dict({k: v.to(dtype) for k, v in backbone.state_dict().items()})
    with torch.no_grad():
        for p in backbone.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype).to(p.dtype)
    full.config.qwen3vl_rag_finetune = provenance
    full.save_pretrained(str(out))
    del full
    _copy_support_files(base, out)
    return out


def save_adapter_folder(peft_model: Any, model: Any, out: Path, provenance: dict[str, Any]) -> Path:
    """Save the LoRA adapters alone (``adapter_config.json`` naming the base, ``adapter_model.safetensors``) with
    the processor files: transformers loads such a folder as the base model with the adapters on top."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name = str(provenance["base_model"])
    base_path = Path(name).expanduser()
    base_ref = str(base_path.resolve()) if base_path.is_dir() else name
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base_ref
    revision = _revision(model)
    if revision:
        config.revision = revision
    config.save_pretrained(str(out))
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    _copy_support_files(local_checkpoint(name, revision), out)
    (out / "qwen3vl_rag_finetune.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------------------------------
# plots, randomness


def plot_history(history: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, metric: str) -> Path:
    """The training loss by step (and its running mean) and the held-out metric at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["step"] for h in history["loss"]]
    losses = [h["loss"] for h in history["loss"]]
    axes[0].plot(steps, losses, alpha=0.4, label="loss")
    if len(losses) >= 5:
        window = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes[0].plot(steps[window - 1 :], smooth, label=f"mean of {window}")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].legend()
    evals = history.get("eval", [])
    if evals:
        axes[1].plot([e["step"] for e in evals], [e[metric] for e in evals], marker="o")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"held-out {metric}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metrics_only(entry: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items() if k != "step"}


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
