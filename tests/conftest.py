"""Shared fixtures: the parity checkpoint, a larger random Qwen3-VL checkpoint, media, a local HTTP server."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# model fingerprints cache weight hashes: the suite's own cache, not the user's (subprocesses inherit it)
os.environ.setdefault(
    "QWEN3VL_RAG_HASH_CACHE", str(Path(tempfile.gettempdir()) / f"qwen3vl-rag-test-hashes-{os.getpid()}.json")
)
# converted office documents and extracted members: the suite's own cache, shared by its workers (writes are atomic)
os.environ.setdefault("QWEN3VL_RAG_CACHE", tempfile.mkdtemp(prefix="qwen3vl-rag-test-cache-"))
PARITY = FIXTURES / "parity"
TINY = PARITY / "tiny-qwen3vl"
MEDIA = PARITY / "media"


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def recordings() -> list[Path]:
    """The parity fixture's recordings: ``public.json`` (the current one) first, then earlier ones."""
    return [PARITY / "public.json", *sorted(PARITY.glob("public-*.json"))]


def load_public() -> dict:
    """The recording of the reference's outputs made with the installed transformers (the preprocessing, hence the
    numbers, follow its version), else ``public.json``."""
    installed = installed_version("transformers")
    for path in recordings():
        public = json.loads(path.read_text())
        if public.get("recorded_with", {}).get("transformers") == installed:
            return public
    return json.loads((PARITY / "public.json").read_text())


def version_differences(public: dict) -> list[str]:
    """The libraries whose installed version is not the one the recording was made with."""
    recorded = {k: v for k, v in public.get("recorded_with", {}).items() if k != "note"}
    return [
        f"{name} {installed_version(name)} installed, fixture recorded with {version}"
        for name, version in sorted(recorded.items())
        if installed_version(name) != version
    ]


def pytest_report_header(config) -> list[str]:
    public = load_public()
    recorded = {k: v for k, v in public.get("recorded_with", {}).items() if k != "note"}
    line = "parity fixture recorded with " + ", ".join(f"{k} {v}" for k, v in sorted(recorded.items()))
    differences = version_differences(public)
    if differences:
        return [line, "parity fixture and environment differ: " + "; ".join(differences)]
    return [line + " (as installed)"]


def make_pdf_with_bad_page(path: Path, pages: list[str], bad: int) -> Path:
    """A PDF whose page ``bad`` (1-based) cannot be rendered (a page 0.001 pt wide); the others are fine."""
    from retrieval_pipeline.testing import make_text_pdf

    data = make_text_pdf(path, pages).read_bytes()
    box = b"/MediaBox [0 0 612 792]"
    at = -1
    for _ in range(bad):
        at = data.index(box, at + 1)
    path.write_bytes(data[:at] + b"/MediaBox [0 0 0.001 792]" + data[at + len(box) :])  # pdfium finds it all the same
    return path


def with_media_paths(obj: dict) -> dict:
    """public.json names media relative to media/: make them paths."""
    out = dict(obj)
    for key in ("image", "video"):
        if key in out:
            value = out[key]
            out[key] = str(MEDIA / value) if isinstance(value, str) else [str(MEDIA / v) for v in value]
    return out


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
    from retrieval_pipeline.testing import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("wide-qwen3vl"), like=TINY, hidden_size=128, seed=1)


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


@pytest.fixture(scope="session")
def generator():
    from retrieval_pipeline.models.generator import Qwen3VLGenerator

    return Qwen3VLGenerator(str(TINY), max_new_tokens=8)


class LiveServer:
    """A real uvicorn server for ``app`` on a free 127.0.0.1 port, in a thread: ``with LiveServer(app) as url``."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


class ServeProcess:
    """``qwen3vl-rag serve`` as a user starts it (a separate process on a free 127.0.0.1 port) for client packages:
    ``with ServeProcess("--models", "embed,rerank", ...) as url``. float32 and the parity fixture's image budget, so
    its numbers are the session fixtures' numbers."""

    def __init__(self, *args: str, db=None):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = [
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--image-tokens",
            "64",
            "--embedding-model",
            str(TINY),
            "--reranker-model",
            str(TINY),
            "--generator-model",
            str(TINY),
            "-q",
            *args,
        ]
        if db is not None:
            self.args += ["--db", str(db)]
        self.proc = None

    def __enter__(self) -> str:
        import os
        import subprocess
        import sys

        import httpx

        cmd = [sys.executable, "-m", "retrieval_pipeline.cli", "serve", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                return url
            except httpx.TransportError:
                if self.proc.poll() is not None or time.time() > deadline:
                    err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                    self.__exit__()
                    raise RuntimeError(f"serve did not start: {err[-2000:]}") from None
                time.sleep(0.2)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()


MODELS_ENV = {
    "QWEN3VL_RAG_EMBEDDING_MODEL": str(TINY),
    "QWEN3VL_RAG_RERANKER_MODEL": str(TINY),
    "QWEN3VL_RAG_GENERATOR_MODEL": str(TINY),
    "QWEN3VL_RAG_DTYPE": "float32",  # the numbers must not depend on the CI machine's CPU (--dtype auto)
}


@pytest.fixture
def models_env():
    """The tiny checkpoint for every role of the command line, in float32."""
    return dict(MODELS_ENV)


@pytest.fixture(scope="session")
def indexed_corpus(tmp_path_factory):
    """The example corpus indexed once per session, as ``qwen3vl-rag index examples/corpus`` does it (the command
    in this process, the tiny checkpoint): collection ``default`` of an embedded store. Tests take a copy
    (:func:`corpus_db`, :func:`copy_indexed`); those whose subject is indexing itself still index."""
    import logging

    from helpers.cli import CORPUS

    from retrieval_pipeline.cli import main

    db = tmp_path_factory.mktemp("indexed-corpus") / "db"
    saved_env = {k: os.environ.get(k) for k in MODELS_ENV}
    logger = logging.getLogger("retrieval_pipeline")
    saved_level = logger.level
    os.environ.update(MODELS_ENV)
    try:
        assert main(["index", str(CORPUS), "--db", str(db), "--quiet"]) == 0
    finally:
        logger.setLevel(saved_level)  # the command sets this project's log level for its terminal
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return db


def copy_indexed(source, dest):
    """A private copy of an indexed store folder (an embedded store serves one process at a time)."""
    import shutil

    shutil.copytree(source, dest)
    return dest


@pytest.fixture
def corpus_db(indexed_corpus, tmp_path):
    """A fresh copy of :func:`indexed_corpus` for this test."""
    return copy_indexed(indexed_corpus, tmp_path / "db")
