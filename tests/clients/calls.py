"""Run by tests/test_client_packages.py with the client environment's Python: each client package calls a running
server (URL in argv[1]) as its documentation says to for a self-hosted endpoint; prints one JSON object of
{call: [[index, relevance_score], ...]} (or {"error": ...}) on stdout."""

from __future__ import annotations

import json
import math
import sys
import traceback

QUERY = "a cat on a sofa"
DOCS = ["a dog in the park", "the cat sleeps on the red sofa", "quarterly revenue table"]


def pairs(results, index="index", score="relevance_score"):
    out = []
    for r in results:
        get = r.get if isinstance(r, dict) else lambda k, r=r: getattr(r, k)
        out.append([int(get(index)), float(get(score))])
    return out


def litellm_rerank(provider: str, api_base: str) -> list:
    import litellm

    resp = litellm.rerank(
        model=f"{provider}/{MODEL}", query=QUERY, documents=DOCS, api_base=api_base, api_key="unused", top_n=3
    )
    return pairs(resp.results)


def langchain_cohere() -> list:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(model=MODEL, cohere_api_key="unused", base_url=URL, top_n=3)
    docs = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    return [[DOCS.index(d.page_content), float(d.metadata["relevance_score"])] for d in docs]


def infinity(prefix: str = "") -> list:
    """Infinity's own client; ``prefix``: the server deployed under a path (``/v1``), where it posts too."""
    from infinity_client import Client
    from infinity_client.api.default import rerank
    from infinity_client.models import RerankInput

    client = Client(base_url=URL + prefix)
    out = rerank.sync(client=client, body=RerankInput(query=QUERY, documents=DOCS, return_documents=True))
    assert all(r.document == DOCS[r.index] for r in out.results), "document is not the string sent"
    raw = rerank.sync(client=client, body=RerankInput(query=QUERY, documents=DOCS, raw_scores=True))
    sigmoid = {r.index: 1 / (1 + math.exp(-r.relevance_score)) for r in raw.results}
    assert all(abs(sigmoid[r.index] - r.relevance_score) < 1e-5 for r in out.results), "raw_scores"
    return [[r.index, r.relevance_score] for r in out.results]


CALL_NAMES = (
    "litellm cohere",
    "litellm jina_ai",
    "litellm infinity",
    "litellm hosted_vllm",
    "langchain-cohere CohereRerank",
    "infinity_client",
    "infinity_client under /v1",
)
URL = sys.argv[1] if __name__ == "__main__" else ""
MODEL = sys.argv[2] if __name__ == "__main__" else ""

CALLS = {
    "litellm cohere": lambda: litellm_rerank("cohere", URL),
    "litellm jina_ai": lambda: litellm_rerank("jina_ai", URL),
    "litellm infinity": lambda: litellm_rerank("infinity", URL + "/infinity"),
    "litellm hosted_vllm": lambda: litellm_rerank("hosted_vllm", URL),
    "langchain-cohere CohereRerank": langchain_cohere,
    "infinity_client": infinity,
    "infinity_client under /v1": lambda: infinity("/v1"),
}


def main() -> None:
    out = {}
    for name in CALL_NAMES:
        try:
            out[name] = CALLS[name]()
        except Exception as exc:  # reported to the test, which fails on it
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    print("\n" + json.dumps(out))  # the last line (the clients may print their own lines before it)


if __name__ == "__main__":
    main()
