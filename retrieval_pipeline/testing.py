"""Random Qwen3-VL checkpoints for offline tests and benchmarks (real architecture, untrained weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


def build_random_checkpoint(
    folder: str | Path,
    *,
    like: str | Path,
    hidden_size: int = 128,
    layers: int = 2,
    intermediate_size: int | None = None,
    vision: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``Qwen3VLForConditionalGeneration`` to ``folder``.

    ``like``: an existing checkpoint folder whose config (token ids, vision layout) and processor files
    (tokenizer, chat template, image/video processors) are reused; only the sizes change. Loads with the same
    ``from_pretrained`` calls as the released models.
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    like, folder = Path(like), Path(folder)
    base = json.loads((like / "config.json").read_text())
    text = dict(base["text_config"])
    heads = max(2, hidden_size // 64)
    text.update(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden_size // heads,
    )
    vision_config = dict(base["vision_config"])
    vision_config.update(vision or {})
    vision_config["out_hidden_size"] = hidden_size
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision_config,
        **{k: base[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")},
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in PROCESSOR_FILES:
        if (like / name).exists():
            shutil.copy(like / name, folder / name)
    return folder
