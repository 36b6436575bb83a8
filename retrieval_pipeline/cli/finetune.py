"""``finetune embedder | reranker``: LoRA fine-tuning on judged data, measured on a held-out split; the output is a
model folder every command loads (``--embedding-model DIR`` / ``--reranker-model DIR``)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, UsageError
from ..serving.config import at_least
from . import common

NAME = "finetune"
HELP = "fine-tune the embedder or the reranker on judged data (LoRA), measured by eval"
NEEDS_STORE = False  # the collection (hard-negative mining) is opened only when --collection is given


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP, description=HELP)
    targets = p.add_subparsers(dest="target", required=True, metavar="{embedder,reranker}")
    # the common options, as every command has them, except that --collection (the collection to mine negatives
    # from) means none unless given: a parser of their own (``parents`` shares its actions, defaults included)
    own = common.common_parser()
    own.set_defaults(collection=None)
    for target, text in (
        ("embedder", "InfoNCE over in-batch and hard negatives, Matryoshka over --dims"),
        ("reranker", "binary cross-entropy on the yes-minus-no logit of judged pairs and mined negatives"),
    ):
        t = targets.add_parser(target, parents=[own], help=text, description=f"fine-tune the {target}: {text}")
        _options(t, target)
    return p


def _options(p: argparse.ArgumentParser, target: str) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--beir", default=None, metavar="DIR", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    d.add_argument("--vidore", default=None, metavar="DIR", help="a ViDoRe / MTEB folder: corpus, queries, qrels")
    d.add_argument("--pairs", default=None, metavar="FILE", help="JSON lines: query, positive(s), negatives")
    d.add_argument("--split", default=None, help="the BEIR qrels split to train on (default train, else the only one)")
    d.add_argument(
        "--eval-split",
        default="0.2",
        help="held out for evaluation: a fraction of the judged queries (default 0.2) or a BEIR qrels split name",
    )
    d.add_argument("--root", default=None, help="folder that relative file ids in the judgements start from")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="DIR", help="the new model folder")
    o.add_argument("--keep-adapters", action="store_true", help="save the LoRA adapters alone (default: merged)")
    o.add_argument("--plot", default=None, metavar="PNG", help="loss / metric plot (default OUT/training.png)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=at_least(1), default=1, help="passes over the training pairs (default 1)")
    t.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same model (default 0)")
    t.add_argument(
        "--batch-size",
        type=at_least(1),
        default=8,
        help=f"{'queries' if target == 'embedder' else 'pairs'} per forward pass (default 8)",
    )
    t.add_argument("--grad-accum", type=at_least(1), default=1, help="forward passes per optimizer step (default 1)")
    t.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    t.add_argument("--max-steps", type=at_least(1), default=None, help="stop after this many optimizer steps")
    t.add_argument("--lora-r", type=at_least(1), default=16, help="LoRA rank (default 16)")
    t.add_argument("--lora-alpha", type=at_least(1), default=32, help="LoRA alpha (default 32)")
    t.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    t.add_argument("--lora-vision", action="store_true", help="adapters on the vision tower too")
    t.add_argument(
        "--no-gradient-checkpointing",
        action="store_true",
        help="faster, more memory (default: recompute activations in the backward pass)",
    )
    t.add_argument("--eval-every", type=at_least(0), default=50, help="evaluate every N steps (default 50; 0: never)")
    t.add_argument("--k", type=at_least(1), default=10, help="cut-off of the held-out nDCG@k (default 10)")
    t.add_argument(
        "--checkpoint-every",
        type=at_least(0),
        default=50,
        help="save a resumable checkpoint every N steps (default 50)",
    )
    t.add_argument("--no-resume", action="store_true", help="start over even when OUT holds an interrupted run")
    if target == "embedder":
        t.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (default 0.05)")
        t.add_argument("--dims", default=None, help="Matryoshka dimensions you search at, e.g. 256,512 (in the loss)")
        t.add_argument(
            "--hard-negatives",
            type=at_least(0),
            default=None,
            help="mined negatives per query (default 1 with --collection, else 0: in-batch negatives only); mined "
            "from --collection, else in memory over the corpus",
        )
    else:
        t.add_argument("--negatives", type=at_least(1), default=3, help="mined negatives per query (default 3)")
        t.add_argument(
            "--random-negatives",
            action="store_true",
            help="draw negatives at random instead of mining them with the embedding model",
        )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = [o for o, v in (("--beir", args.beir), ("--vidore", args.vidore), ("--pairs", args.pairs)) if v]
    if len(given) != 1:
        parser.error(f"finetune {args.target} needs one of --beir DIR, --vidore DIR or --pairs FILE")


def config_of(args: argparse.Namespace) -> Any:
    """The training settings the options give."""
    from ..finetune import FinetuneConfig

    hard = getattr(args, "hard_negatives", None)
    return FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_vision=args.lora_vision,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        eval_every=args.eval_every,
        eval_k=args.k,
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        seed=args.seed,
        keep_adapters=args.keep_adapters,
        temperature=getattr(args, "temperature", 0.05),
        dims=tuple(common.ints(getattr(args, "dims", None), "--dims")),
        hard_negatives=(1 if args.collection else 0) if hard is None else hard,
        negatives=getattr(args, "negatives", 3),
        random_negatives=getattr(args, "random_negatives", False),
    )


def run(args: argparse.Namespace, store: Any) -> int:
    from ..finetune import finetune_embedder, finetune_reranker, load_training_data

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    if not out.parent.exists():
        raise UsageError(f"--out: the folder of {args.out} does not exist")
    data = load_training_data(
        beir=args.beir,
        vidore=args.vidore,
        pairs=args.pairs,
        split=args.split,
        eval_split=args.eval_split,
        seed=args.seed,
    )
    embedder_target = args.target == "embedder"
    config = config_of(args)
    quiet = args.quiet or args.json
    common.announce(args)
    model_kwargs = {**common.media_options(args), "device": args.device, "torch_dtype": args.dtype}
    store = common.open_store_for(args) if args.collection else None
    try:
        if embedder_target:
            embedder = _load("embedding", args.embedding_model, model_kwargs)
            _check_dims(embedder, config.dims)
            if store is not None:
                _check_collection(store, embedder.model_name_or_path)
            result = finetune_embedder(
                embedder, data, out, config, store=store, root=args.root, show_progress_bar=not quiet
            )
        else:
            miner = None
            if not config.random_negatives:
                name = args.embedding_model
                if store is not None and name is None:
                    name = store.open(create=False).model  # the collection's own model searches it
                if store is not None:
                    _check_collection(store, name or "")
                miner = functools.partial(_load, "embedding", name, model_kwargs)  # loaded to mine, then dropped
            reranker = _load("reranker", args.reranker_model, model_kwargs)
            result = finetune_reranker(
                reranker, data, out, config, miner=miner, store=store, root=args.root, show_progress_bar=not quiet
            )
    finally:
        if store is not None:
            store.close()
    if args.plot and result.plot is not None:
        import shutil

        shutil.copyfile(result.plot, Path(args.plot).expanduser())
    option = "--embedding-model" if embedder_target else "--reranker-model"
    hint = (
        f"next: qwen3vl-rag index ... --collection NEW --embedding-model {out}  (a new collection: the base model's "
        f"vectors are not comparable), then qwen3vl-rag eval ... --collection NEW"
        if embedder_target
        else f"next: qwen3vl-rag eval ... {option} {out}"
    )
    common.output(args, result.to_dict(), result.summary() + "\n" + hint)
    return 0


def _load(kind: str, name: str | None, kwargs: dict[str, Any]) -> Any:
    from ..models.embedder import Qwen3VLEmbedder
    from ..models.reranker import Qwen3VLReranker
    from ..settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL

    cls = Qwen3VLEmbedder if kind == "embedding" else Qwen3VLReranker
    name = name or (DEFAULT_EMBEDDING_MODEL if kind == "embedding" else DEFAULT_RERANKER_MODEL)
    try:
        return cls(name, **{k: v for k, v in kwargs.items() if v is not None})
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the {kind} model {name!r}: {exc}") from None


def _check_dims(embedder: Any, dims: tuple[int, ...]) -> None:
    for d in dims:
        if not 1 <= d <= embedder.hidden_size:
            raise UsageError(f"--dims {d}: a Matryoshka dimension is from 1 to the model's {embedder.hidden_size}")


def _check_collection(store: Any, model: str) -> None:
    """Mining searches the collection with query vectors of ``model``: it must be the collection's model."""
    from ..errors import CollectionMismatchError
    from ..store import model_fingerprint

    spec = store.open(create=False)
    if spec.model_id and spec.model_id != model_fingerprint(model) and spec.model != model:
        raise CollectionMismatchError(
            f"collection {store.collection!r} was built with {spec.model!r}, not {model!r}: mine negatives from a "
            "collection of the model being searched with (or leave --collection out)"
        )
    if store.count() == 0:
        print(f"warning: collection {store.collection!r} is empty: no negatives to mine", file=sys.stderr)
