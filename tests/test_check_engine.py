"""``qwen3vl-rag check-engine`` (issue 30): the probe set against this project's own server (within bounds, drift
~1e-7, in every dialect), against deliberately wrong servers built here (one that shrinks images, one that drops
the instruction: flagged, naming the probes), its JSON for CI, and its errors (unreachable, a probe refused)."""

from __future__ import annotations

import base64
import io
import json
import socket

import pytest
from conftest import TINY, LiveServer
from helpers.cli import main_here

from retrieval_pipeline import drift

pytestmark = [pytest.mark.slow]

LOCAL = ["--embedding-model", str(TINY), "--reranker-model", str(TINY), "--dtype", "float32", "--image-tokens", "64"]
TOKEN = "SECRET"
IMAGE_PROBES = {"q-image", "q-image-text", "d-image", "d-image-text", "d-pdf-page"}  # and d-image@DIM


@pytest.fixture(scope="module")
def own_server(embedder, reranker):
    """This project's server (uvicorn, a token) over the session's tiny models (float32, the parity image budget;
    ``ServeProcess`` would add a process start, 20 s on 2 cores, for the same app)."""
    from retrieval_pipeline.serving import ServerConfig, create_app

    with LiveServer(create_app(embedder=embedder, reranker=reranker, config=ServerConfig(api_key=TOKEN))) as url:
        yield url


def wrong_app(embedder, *, shrink=False, drop_instruction=False, refuse_video=False, ignore_dimensions=False):
    """OpenAI's embeddings dialect (this project's multimodal objects) through the real tiny embedder, done wrong:
    ``shrink``: every image resized to 64 x 64 first; ``drop_instruction``: the instruction ignored;
    ``refuse_video``: a video is a 400; ``ignore_dimensions``: full vectors whatever ``dimensions`` asks. No rerank
    route."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from PIL import Image

    app = FastAPI()

    def small(uri: str) -> str:
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB").resize((64, 64))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if refuse_video and any(isinstance(i, dict) and "video" in i for i in items):
            return JSONResponse({"error": {"message": "videos are not supported here"}}, status_code=400)
        if shrink:
            items = [dict(i, image=small(i["image"])) if isinstance(i, dict) and "image" in i else i for i in items]
        instruction = None if drop_instruction else body.get("instruction")
        dim = None if ignore_dimensions else body.get("dimensions")
        vectors = embedder.embed(items, instruction=instruction, dim=dim)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return {"object": "list", "model": "wrong", "data": data}

    return app


def test_the_project_server_is_within_bounds(own_server, capsys, monkeypatch):
    """The command as a user runs it, its local models loaded from the same checkpoint."""
    code, out, err = main_here(capsys, monkeypatch, "check-engine", own_server, *LOCAL)
    assert code == 3 and "answered POST /v1/embeddings with 401" in err  # the key is asked for, and said so
    code, out, err = main_here(capsys, monkeypatch, "check-engine", own_server + "/v1", *LOCAL, "--api-key", TOKEN)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[-1] == "ok: 26 probes within bounds"
    assert "(embed openai, rerank openai); max drift: embed" in lines[-2]
    embed, rerank = (float(x.split()[-1]) for x in lines[-2].split("max drift: ")[1].split(", "))
    assert embed < 1e-5 and rerank < 1e-5  # measured: about 1e-7 (the summation order of other batches)
    for name in ("q-text-zh", "q-text-ar", "d-video", "d-pdf-page", "d-image@32", "rr-text-video", "rr-image-image"):
        assert any(line.startswith(name + " ") and line.rstrip().endswith(" ok") for line in lines), name


@pytest.mark.parametrize("dialect", ["vllm", "cohere"])
def test_every_dialect_of_the_project_server_is_within_bounds(own_server, embedder, reranker, dialect):
    """vLLM's messages (the instruction as the system message; /rerank) and Cohere's /v2/embed, /v2/rerank."""
    report = drift.check_engine(own_server, embedder=embedder, reranker=reranker, dialect=dialect, api_key=TOKEN)
    assert report.ok, report.table()
    assert report.dialects == {"embed": dialect, "rerank": dialect} and len(report.results) == 26
    assert report.max_drift("embed") < 1e-5 and report.max_drift("rerank") < 1e-5


def test_a_server_that_resizes_images_is_flagged_on_the_image_probes(embedder, capsys, monkeypatch):
    with LiveServer(wrong_app(embedder, shrink=True)) as url:
        code, out, err = main_here(capsys, monkeypatch, "check-engine", url, *LOCAL, "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["ok"] is False and report["verdict"].startswith("drift: 6 of 18 probes out of bounds: q-image")
    assert set(report["failing"]) == IMAGE_PROBES | {"d-image@32"}  # the texts and the video are right
    assert report["dialects"] == {"embed": "openai"}  # no rerank route: that side is skipped, and said so
    assert report["skipped"] == [{"name": "rerank probes", "reason": drift_reason("rerank")}]
    worst = min(p["value"] for p in report["probes"] if not p["ok"])
    assert worst < 0.9  # far outside the bound (1 - cosine <= 1e-4), not at its edge
    assert report["bounds"] == {"cosine_distance": 1e-4, "score": 1e-3}


def drift_reason(kind: str) -> str:
    return f"the engine serves no {kind} route (404 on each dialect's)"


def test_a_server_that_drops_the_instruction_is_flagged_on_the_query_probes(embedder, capsys, monkeypatch):
    with LiveServer(wrong_app(embedder, drop_instruction=True)) as url:
        code, out, err = main_here(capsys, monkeypatch, "check-engine", url, *LOCAL, "--only", "embed")
    assert code == 1, out + err
    failing = out.splitlines()[-1].split("out of bounds: ")[1].split(", ")
    assert set(failing) == {f"q-text-{lang}" for lang in drift.QUERY_TEXTS} | {
        "q-image",
        "q-image-text",
        "q-text-en@32",
    }
    assert all(not name.startswith("d-") for name in failing)  # documents keep the default instruction


def test_a_probe_the_server_refuses_is_an_error_naming_it(embedder):
    with LiveServer(wrong_app(embedder, refuse_video=True)) as url:
        with pytest.raises(drift.EngineError, match="probe d-video: .* answered POST /v1/embeddings with 400: videos"):
            drift.check_engine(url, embedder=embedder)
        report = drift.check_engine(url, embedder=embedder, skip=["d-video"])  # --skip leaves it out
    assert report.ok and ("d-video", "--skip") in report.skipped


def test_a_server_that_ignores_dimensions_is_flagged_on_the_truncated_probes(embedder):
    with LiveServer(wrong_app(embedder, ignore_dimensions=True)) as url:
        report = drift.check_engine(url, embedder=embedder)
    assert report.failing == ["q-text-en@32", "d-image@32"]
    probe = report.to_dict()["probes"][-1]
    assert probe["note"] == "the engine gave 64 dimensions, the local model 32" and probe["drift"] is None
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON for CI


def test_an_unreachable_server_is_a_clear_error(capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, out, err = main_here(capsys, monkeypatch, "check-engine", f"http://127.0.0.1:{port}", *LOCAL)
    assert code == 3 and out == ""
    assert f"error: probe embed dialect: the server http://127.0.0.1:{port} cannot be reached" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["localhost:8000"], "URL must be an http:// or https:// address"),
        (["http://localhost:8000", "--tolerance", "loose"], "--tolerance takes float32 or bfloat16"),
        (["http://localhost:8000", "--max-score-diff", "-1"], "--max-score-diff must be >= 0"),
    ],
)
def test_usage_errors(args, message, capsys, monkeypatch):
    code, _, err = main_here(capsys, monkeypatch, "check-engine", *args)
    assert code == 2 and message in err


def test_the_bounds():
    assert drift.tolerance("float32") == drift.FLOAT32 == drift.Bounds(1e-4, 1e-3)
    assert drift.tolerance("bfloat16") == drift.BFLOAT16
    assert drift.tolerance("10") == drift.Bounds(1e-3, 1e-2)
