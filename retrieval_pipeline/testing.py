"""Random Qwen3-VL checkpoints for offline tests and benchmarks (real architecture, untrained weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "generation_config.json",
)

# The released architectures (from the public config.json of Qwen3-VL-2B/8B-Instruct, which the Embedding and
# Reranker models share). Sizes only: token ids and processor settings come from the ``like`` checkpoint.
_TEXT_COMMON: dict[str, Any] = {
    "head_dim": 128,
    "num_key_value_heads": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}
_VISION_COMMON: dict[str, Any] = {
    "num_heads": 16,
    "num_position_embeddings": 2304,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
REAL_SIZES: dict[str, dict[str, Any]] = {
    "2B": {
        "text": {
            **_TEXT_COMMON,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
        },
        "vision": {
            **_VISION_COMMON,
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "out_hidden_size": 2048,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        "tie_word_embeddings": True,
    },
    "8B": {
        "text": {
            **_TEXT_COMMON,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
        },
        "vision": {
            **_VISION_COMMON,
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "out_hidden_size": 4096,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        "tie_word_embeddings": False,
    },
}
SHARD_BYTES = 2 * 1024**3


def build_random_checkpoint(
    folder: str | Path,
    *,
    like: str | Path,
    size: str | None = None,
    hidden_size: int = 128,
    layers: int = 2,
    intermediate_size: int | None = None,
    vision: dict[str, Any] | None = None,
    dtype: str | None = None,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``Qwen3VLForConditionalGeneration`` to ``folder``.

    ``like``: an existing checkpoint folder whose config (token ids, vision layout) and processor files
    (tokenizer, chat template, image/video processors) are reused; only the sizes change. ``size``: ``"2B"`` or
    ``"8B"`` for the released architecture (every shape of the real model, vocabulary included), written tensor by
    tensor in safetensors shards (bfloat16 by default, like the released weights), so building the 8B one needs
    about one shard's memory; otherwise a small model of ``hidden_size`` / ``layers`` (float32 by default). Loads
    with the same ``from_pretrained`` calls as the released models.
    """
    import torch

    like, folder = Path(like), Path(folder)
    config = checkpoint_config(
        like, size=size, hidden_size=hidden_size, layers=layers, intermediate_size=intermediate_size, vision=vision
    )
    torch_dtype = getattr(torch, dtype or ("bfloat16" if size else "float32"))
    config.dtype = torch_dtype
    folder.mkdir(parents=True, exist_ok=True)
    _write_random_weights(config, folder, torch_dtype, seed)
    config.save_pretrained(folder)
    for name in PROCESSOR_FILES:
        if (like / name).exists():
            shutil.copyfile(like / name, folder / name)
    return folder


def checkpoint_config(
    like: str | Path,
    *,
    size: str | None = None,
    hidden_size: int = 128,
    layers: int = 2,
    intermediate_size: int | None = None,
    vision: dict[str, Any] | None = None,
) -> Any:
    """The ``Qwen3VLConfig`` :func:`build_random_checkpoint` writes: ``like``'s token ids and layout with the
    sizes of ``size`` (``"2B"``, ``"8B"``) or of ``hidden_size`` / ``layers``."""
    from transformers import Qwen3VLConfig

    base = json.loads((Path(like) / "config.json").read_text())
    text = dict(base["text_config"])
    vision_config = dict(base["vision_config"])
    if size is not None:
        if size not in REAL_SIZES:
            raise ValueError(f"size must be one of {sorted(REAL_SIZES)}, got {size!r}")
        preset = REAL_SIZES[size]
        text.pop("rope_scaling", None)
        text.update(preset["text"])
        vision_config.update(preset["vision"])
        tie = preset["tie_word_embeddings"]
    else:
        heads = max(2, hidden_size // 64)
        text.update(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            head_dim=hidden_size // heads,
        )
        vision_config["out_hidden_size"] = hidden_size
        tie = False
    vision_config.update(vision or {})
    text["tie_word_embeddings"] = tie
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision_config,
        **{k: base[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")},
        tie_word_embeddings=tie,
    )


def _write_random_weights(config: Any, folder: Path, dtype: Any, seed: int) -> None:
    """The model's tensors, one at a time, into safetensors shards: matrices N(0, 0.02) (the config's
    ``initializer_range``), norm weights one, biases zero; tied weights once. Never holds the whole model."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        skeleton = Qwen3VLForConditionalGeneration(config)
    seen: set[int] = set()
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for name, tensor in skeleton.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # tied (lm_head = embed_tokens): saved once, like save_pretrained
            continue
        seen.add(id(tensor))
        shapes.append((name, tuple(tensor.shape)))
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict[str, Any]] = [{}]
    shard_bytes = 0
    for name, shape in shapes:
        if name.endswith("bias"):
            value = torch.zeros(shape, dtype=dtype)
        elif len(shape) == 1:
            value = torch.ones(shape, dtype=dtype)
        else:
            value = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        nbytes = value.numel() * value.element_size()
        if shard_bytes and shard_bytes + nbytes > SHARD_BYTES:
            _flush(shards, folder, save_file)
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = value
        shard_bytes += nbytes
    _flush(shards, folder, save_file, last=True)


def _flush(shards: list[dict[str, Any]], folder: Path, save_file: Any, *, last: bool = False) -> None:
    """Write the newest shard (its tensors are dropped from memory); on ``last``, name the shards and the index."""
    number = len(shards)
    tensors = shards[-1]
    path = folder / f"shard-{number:05d}.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    shards[-1] = {name: None for name in tensors}
    if not last:
        return
    if number == 1:
        path.rename(folder / "model.safetensors")
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{number:05d}.safetensors"
        (folder / f"shard-{i:05d}.safetensors").rename(folder / final)
        total += (folder / final).stat().st_size
        weight_map.update(dict.fromkeys(shard, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


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


def write_docx(path: str | Path, pages: list[str], *, headings: bool = False) -> Path:
    """A Word document (python-docx), one page per string (page breaks between), each under a heading when asked:
    test and benchmark data for office ingestion."""
    import docx

    document = docx.Document()
    for n, text in enumerate(pages):
        if n:
            document.add_page_break()
        if headings:
            document.add_heading(f"Section {n + 1}", level=1)
        document.add_paragraph(text)
    document.save(str(path))
    return Path(path)


def write_pptx(path: str | Path, slides: list[tuple[str, str]]) -> Path:
    """A PowerPoint deck (python-pptx): one title-and-content slide per (title, body)."""
    import pptx

    deck = pptx.Presentation()
    for title, body in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(str(path))
    return Path(path)


def write_xlsx(path: str | Path, sheets: dict[str, list[list[Any]]]) -> Path:
    """An Excel workbook (openpyxl): one sheet per name, with its rows."""
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(str(path))
    return Path(path)


def write_synthetic_beir(
    folder: str | Path,
    *,
    categories: int = 6,
    docs_per_category: int = 3,
    train_queries_per_category: int = 4,
    test_queries_per_category: int = 2,
    seed: int = 0,
) -> Path:
    """A small judged BEIR dataset with learnable structure, for fine-tuning tests and demos: each category has a
    document word and a different query word (a model must learn which goes with which: they share no letters),
    documents and queries add random filler words; a query's relevant documents are its category's. Training
    (``qrels/train.tsv``) and test (``qrels/test.tsv``) queries are drawn from the same distribution."""
    import random

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word(pool: str, n: int) -> str:
        return "".join(rng.choice(pool) for _ in range(n))

    doc_words = [word(letters[:13], 5) for _ in range(categories)]
    query_words = [word(letters[13:], 5) for _ in range(categories)]
    filler = [word(letters, 4) for _ in range(30)]
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries = [], []
    qrels: dict[str, list[str]] = {"train": [], "test": []}
    for c in range(categories):
        for k in range(docs_per_category):
            text = " ".join([doc_words[c], *rng.sample(filler, 2)])
            corpus.append({"_id": f"c{c}d{k}", "title": "", "text": text})
        for split, n in (("train", train_queries_per_category), ("test", test_queries_per_category)):
            for k in range(n):
                qid = f"{split}-c{c}q{k}"
                queries.append({"_id": qid, "text": " ".join([query_words[c], *rng.sample(filler, 2)])})
                qrels[split] += [f"{qid}\tc{c}d{d}\t1" for d in range(docs_per_category)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return folder
