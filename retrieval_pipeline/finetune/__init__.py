"""Adapt the embedder and the reranker to a corpus: LoRA fine-tuning on judged pairs, measured by ``eval``.

::

    from retrieval_pipeline.finetune import FinetuneConfig, finetune_embedder, load_training_data

    data = load_training_data(beir="my-dataset", eval_split=0.2, seed=0)
    result = finetune_embedder("Qwen/Qwen3-VL-Embedding-2B", data, "my-embedder", FinetuneConfig(dims=(256,)))
    print(result.summary())          # held-out nDCG@10 before and after; result.path loads like any model folder

The command line's ``qwen3vl-rag finetune embedder | reranker`` runs the same. See :mod:`.trainer` for what is
trained and how, :mod:`.data` for the inputs, :mod:`.mining` for hard negatives and :mod:`.losses` for the
objectives.
"""

from __future__ import annotations

from .data import TrainingData, load_pairs, load_training_data, split_dataset
from .losses import info_nce, matryoshka_info_nce, yes_no_bce
from .mining import mine_from_collection, mine_in_memory, random_negatives
from .trainer import (
    FinetuneConfig,
    FinetuneResult,
    finetune_embedder,
    finetune_reranker,
    plot_history,
    save_adapter_folder,
    save_model_folder,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainingData",
    "finetune_embedder",
    "finetune_reranker",
    "info_nce",
    "load_pairs",
    "load_training_data",
    "matryoshka_info_nce",
    "mine_from_collection",
    "mine_in_memory",
    "plot_history",
    "random_negatives",
    "save_adapter_folder",
    "save_model_folder",
    "split_dataset",
    "yes_no_bce",
]
