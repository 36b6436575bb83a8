"""Shared fixtures: the parity checkpoint, a larger random Qwen3-VL checkpoint, media, a local HTTP server."""

from __future__ import annotations

import http.server
import json
import shutil
import socketserver
import threading
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"
TINY = PARITY / "tiny-qwen3vl"
MEDIA = PARITY / "media"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


def load_public() -> dict:
    return json.loads((PARITY / "public.json").read_text())


def with_media_paths(obj: dict) -> dict:
    """public.json names media relative to media/: make them paths."""
    out = dict(obj)
    for key in ("image", "video"):
        if key in out:
            value = out[key]
            out[key] = str(MEDIA / value) if isinstance(value, str) else [str(MEDIA / v) for v in value]
    return out


def build_random_checkpoint(folder: Path, *, hidden_size: int = 128, layers: int = 2, seed: int = 1) -> Path:
    """A random Qwen3-VL checkpoint built with transformers' own config classes; processor from the fixture."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    base = json.loads((TINY / "config.json").read_text())
    text = dict(base["text_config"])
    text.update(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 64),
        head_dim=16,
    )
    vision = dict(base["vision_config"])
    vision.update(out_hidden_size=hidden_size)
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=base["image_token_id"],
        video_token_id=base["video_token_id"],
        vision_start_token_id=base["vision_start_token_id"],
        vision_end_token_id=base["vision_end_token_id"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.save_pretrained(folder)
    for name in PROCESSOR_FILES:
        shutil.copy(TINY / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def public() -> dict:
    return load_public()


@pytest.fixture(scope="session")
def embedder(public):
    from retrieval_pipeline import Qwen3VLEmbedder

    return Qwen3VLEmbedder(str(TINY), **public["settings"])


@pytest.fixture(scope="session")
def reranker(public):
    from retrieval_pipeline import Qwen3VLReranker

    settings = {k: v for k, v in public["settings"].items() if k != "max_length"}
    return Qwen3VLReranker(str(TINY), **settings)


@pytest.fixture(scope="session")
def wide_checkpoint(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("wide-qwen3vl"), hidden_size=128)


@pytest.fixture(scope="session")
def wide_embedder(wide_checkpoint):
    from retrieval_pipeline import Qwen3VLEmbedder

    return Qwen3VLEmbedder(str(wide_checkpoint), max_pixels=65536, total_pixels=1048576)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(MEDIA), **kwargs)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/slow/"):
            time.sleep(3)
            self.path = self.path[len("/slow") :]
        return super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def media_server():
    """Serves tests/fixtures/parity/media over HTTP on 127.0.0.1 (``/slow/...`` answers after 3 s)."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
