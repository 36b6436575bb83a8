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


def make_text_pdf(path: str | Path, pages: list[str], *, bars: bool = True) -> Path:
    """Write a small, valid PDF: one page per string (Helvetica text, wrapped lines), and optionally a bar chart
    drawn with vector graphics. Test and example data for PDF ingestion (text layer + something to see)."""
    import textwrap

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        lines = [wrapped for para in text.split("\n") for wrapped in (textwrap.wrap(para, 70) or [""])]
        ops = ["BT /F1 14 Tf 16 TL 56 740 Td"] + [f"({escape(line)}) Tj T*" for line in lines] + ["ET"]
        if bars:
            for k, height in enumerate((60, 110, 90, 150)):
                shade = 0.2 + 0.15 * k
                ops.append(f"{shade:.2f} {0.4:.2f} {1 - shade:.2f} rg {90 + 70 * k} 120 50 {height + 10 * i} re f")
        stream = "\n".join(ops).encode("latin-1", "replace")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path = Path(path)
    path.write_bytes(bytes(out))
    return path
