"""Every notebook runs top to bottom on the tiny checkpoint (nbclient), and none is committed with outputs."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest
from conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_six_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_visual_document_rag.ipynb",
        "03_llama_index.ipynb",
        "04_langchain.ipynb",
        "05_evaluation.ipynb",
        "06_finetune.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear outputs before commit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    for name in ("EMBEDDING", "RERANKER", "GENERATOR"):
        monkeypatch.setenv(f"QWEN3VL_RAG_{name}_MODEL", str(TINY))
    monkeypatch.setenv("QWEN3VL_RAG_MAX_NEW_TOKENS", "8")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.stem in ("01_quickstart", "02_visual_document_rag", "05_evaluation", "06_finetune"):
        assert any("image/png" in o.get("data", {}) for o in outputs), "the figures were not rendered"
