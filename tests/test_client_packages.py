"""The rerank client packages whose pins clash with the project's (LiteLLM's cohere / jina_ai / infinity /
hosted_vllm providers, langchain-cohere's CohereRerank, Infinity's client), run from their own virtual environment
(tests/clients) against a real server on 127.0.0.1: each gets the library's own scores to 1e-5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ServeProcess

CLIENTS = Path(__file__).with_name("clients")
sys.path.insert(0, str(CLIENTS))
from build import build  # noqa: E402
from calls import CALL_NAMES, DOCS, QUERY  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def client_results(reranker):
    client_python = build()
    with ServeProcess("--models", "rerank") as url:  # a real `qwen3vl-rag serve` process
        done = subprocess.run(
            [str(client_python), str(CLIENTS / "calls.py"), url, "tiny-qwen3vl"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CALL_NAMES)
def test_client_package_gets_the_librarys_scores(client_results, reranker, name):
    got = client_results[name]
    assert not isinstance(got, dict), got
    expected = reranker.score(QUERY, DOCS)
    assert sorted(i for i, _ in got) == [0, 1, 2]
    assert [i for i, _ in got] == sorted(range(3), key=lambda i: -expected[i])  # best first
    for index, score in got:
        assert abs(score - expected[index]) < 1e-5, (name, index)
