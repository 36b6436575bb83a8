"""The import layers hold: a lower layer never imports a higher one, so the light parts stay light and the model
code and the store stay apart. Read from the source (every import, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retrieval_pipeline"

# module (or package prefix) -> what it must never import, directly or inside a function
RULES = {
    # L0: configuration, errors, checks; nothing of the project above them
    "retrieval_pipeline.errors": ["retrieval_pipeline.*"],
    "retrieval_pipeline.settings": ["retrieval_pipeline.*"],
    "retrieval_pipeline.ranking": ["retrieval_pipeline.*"],
    "retrieval_pipeline.layout": ["retrieval_pipeline.*"],
    "retrieval_pipeline.fingerprint": ["retrieval_pipeline.*"],
    "retrieval_pipeline.protocols": ["retrieval_pipeline.*"],
    # L1: media (inputs, images, video, downloads, fetch) knows nothing of models, storage or anything above
    "retrieval_pipeline.media": [
        "retrieval_pipeline.models",
        "retrieval_pipeline.store",
        "retrieval_pipeline.records",
        "retrieval_pipeline.ingest",
        "retrieval_pipeline.distributed",
        "retrieval_pipeline.retriever",
        "retrieval_pipeline.pipeline",
        "retrieval_pipeline.evaluate",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.cli",
        "retrieval_pipeline.client",
    ],
    # L2: the models and the store never import each other, nor anything above them
    "retrieval_pipeline.models": [
        "retrieval_pipeline.store",
        "retrieval_pipeline.ingest",
        "retrieval_pipeline.distributed",
        "retrieval_pipeline.retriever",
        "retrieval_pipeline.pipeline",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.cli",
        "retrieval_pipeline.client",
        "qdrant_client",
        "qdrant_edge",
        "fastapi",
    ],
    "retrieval_pipeline.store": [
        "retrieval_pipeline.models",
        "retrieval_pipeline.ingest",
        "retrieval_pipeline.pipeline",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.cli",
    ],
    # inside the store: the shared parts never reach for a backend at import, the backends not for each other
    "retrieval_pipeline.store.filters": ["retrieval_pipeline.store.*"],
    "retrieval_pipeline.store.edge": ["retrieval_pipeline.store.server"],
    "retrieval_pipeline.store.server": ["retrieval_pipeline.store.edge"],
    "retrieval_pipeline.store.base": ["retrieval_pipeline.store.edge", "retrieval_pipeline.store.server"],
    # L3: ingestion is used by the pipeline, the server and the CLI, never the other way round
    "retrieval_pipeline.ingest": [
        "retrieval_pipeline.pipeline",
        "retrieval_pipeline.evaluate",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.cli",
        "retrieval_pipeline.client",
    ],
    # L3: fine-tuning trains the models and reads datasets and collections; nothing above it uses its insides
    "retrieval_pipeline.finetune": [
        "retrieval_pipeline.pipeline",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.cli",
        "retrieval_pipeline.client",
        "retrieval_pipeline.ingest",
    ],
    # the server's routes are thin and independent: what two of them share lives beside them (state, generation)
    "retrieval_pipeline.serving.routes": ["retrieval_pipeline.serving.routes.*"],
    # L4: the HTTP client is thin: no model code
    "retrieval_pipeline.client": ["retrieval_pipeline.models", "retrieval_pipeline.pipeline"],
    # the core never imports the framework adapters (nor the frameworks)
    "retrieval_pipeline": ["integrations", "retrieval_pipeline.integrations", "llama_index", "langchain"],
    # the adapters use the public L3 API and the settings: not the command line, the server or the store's insides
    "retrieval_pipeline.integrations": [
        "retrieval_pipeline.cli",
        "retrieval_pipeline.serving",
        "retrieval_pipeline.store.edge",
        "retrieval_pipeline.store.server",
        "retrieval_pipeline.ingest.distributed",
    ],
}
# modules a rule does not apply to, though their name matches its owner
EXEMPT = {
    "retrieval_pipeline": ["retrieval_pipeline.integrations"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def matches(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "integrations").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_import_points_up(path):
    name = module_name(path)
    wrong = []
    for owner, forbidden in RULES.items():
        if not matches(name, owner) or any(matches(name, e) for e in EXEMPT.get(owner, [])):
            continue
        for target in imports_of(path):
            for pattern in forbidden:
                if matches(target, pattern) and not matches(target, name) and target != owner:
                    wrong.append(f"{target} (rule: {owner} never imports {pattern})")
    assert not wrong, f"{name} imports " + "; ".join(sorted(set(wrong)))


def test_the_checker_reads_relative_and_function_level_imports():
    assert "retrieval_pipeline.ranking" in imports_of(PACKAGE / "models" / "embedder.py")  # from ..ranking import
    assert "retrieval_pipeline.models.embedder" in imports_of(PACKAGE / "ingest" / "distributed.py")  # in a function
    assert "retrieval_pipeline.models.generator" in imports_of(PACKAGE / "pipeline.py")
    assert matches("retrieval_pipeline.models.embedder", "retrieval_pipeline.models")
    assert not matches("retrieval_pipeline.modelsx", "retrieval_pipeline.models")


def test_the_old_adapter_path_gives_the_same_objects():
    """``integrations.*`` (version 0.2's path) re-exports ``retrieval_pipeline.integrations.*``: the same classes."""
    import importlib

    for framework in ("llama_index", "langchain"):
        old = importlib.import_module(f"integrations.{framework}")
        new = importlib.import_module(f"retrieval_pipeline.integrations.{framework}")
        assert old.__all__ == new.__all__
        assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
