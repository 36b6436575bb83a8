"""The light layers stay light: the command line's help, errors, the store and the HTTP client do not load torch
(every CLI call, every Ray read task and every thin client would pay seconds for it), and the public API resolves
lazily to the documented names."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import retrieval_pipeline

LIGHT = (
    "retrieval_pipeline.errors",
    "retrieval_pipeline.settings",
    "retrieval_pipeline.ranking",
    "retrieval_pipeline.fingerprint",
)
LIGHT += (
    "retrieval_pipeline.media",
    "retrieval_pipeline.media.fetch",
    "retrieval_pipeline.store",
    "retrieval_pipeline.client",
    "retrieval_pipeline.cli",
)


def heavy_modules_after(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint('HEAVY:', *(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.rsplit("HEAVY:", 1)[1].split()


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_do_not_load_torch(module):
    assert heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["index", "--help"], ["serve", "--bogus"]])
def test_the_command_line_answers_help_version_and_usage_errors_without_torch(args):
    code = f"from retrieval_pipeline.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


def test_the_public_api_is_pinned_and_lazy():
    assert retrieval_pipeline.__all__ == [
        "Answer",
        "CollectionMismatchError",
        "CollectionNotFoundError",
        "Hit",
        "IndexReport",
        "Indexer",
        "IngestOptions",
        "InputError",
        "LimitError",
        "ModelLoadError",
        "ModelSpec",
        "PreparedRerank",
        "Qwen3VLEmbedder",
        "Qwen3VLGenerator",
        "Qwen3VLReranker",
        "RAGError",
        "RAGPipeline",
        "RetrievalSettings",
        "SearchOptions",
        "Staging",
        "StoreError",
        "TwoStageRetriever",
        "VectorLayout",
        "VectorStore",
        "open_store",
        "__version__",
    ]
    assert retrieval_pipeline.__version__ == version("qwen3-vl-rag")
    from retrieval_pipeline.errors import InputError
    from retrieval_pipeline.models.embedder import Qwen3VLEmbedder

    assert retrieval_pipeline.InputError is InputError and retrieval_pipeline.Qwen3VLEmbedder is Qwen3VLEmbedder
    for name in retrieval_pipeline.__all__:  # every documented name resolves
        assert getattr(retrieval_pipeline, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        retrieval_pipeline.Nope  # noqa: B018


def test_serve_options_are_declared_once_by_server_config(monkeypatch):
    from retrieval_pipeline.cli import build_parser
    from retrieval_pipeline.serving.config import MB, ServerConfig

    monkeypatch.delenv("QWEN3VL_RAG_SERVER_TOKEN", raising=False)
    assert ServerConfig.from_cli_args(build_parser().parse_args(["serve"])) == ServerConfig()
    args = ["serve", "--max-queued-mb", "3", "--no-dynamic-batching", "--fetch-allow", "a.example", "--fetch-allow"]
    args += ["b.example", "--limit", "max_text_chars=5", "--fetch-max-mb", "0.5", "--token", "t0k"]
    config = ServerConfig.from_cli_args(build_parser().parse_args(args))
    assert config.max_queued_bytes == 3 * MB and config.fetch_max_bytes == MB // 2 and not config.dynamic_batching
    assert config.fetch_allow == ("a.example", "b.example") and config.limits.max_text_chars == 5
    assert config.api_key == "t0k"
