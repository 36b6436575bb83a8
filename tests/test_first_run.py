"""The first ten minutes, as a user runs the commands (subprocesses): a clean terminal, a fast and helpful failure
when the hub cannot be reached, a cached model that loads offline, a bar whose last counts are the report's."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
from conftest import TINY
from helpers.cli import CORPUS, cli

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

NOISE = ("LOAD REPORT", "UNEXPECTED", "Loading weights", "not ok if you expect identical arch")
HUB_ID = "Qwen/Qwen3-VL-Embedding-2B"


@pytest.fixture
def corpus_with_bad_video(tmp_path):
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS, folder)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 500)
    return folder


def _decoder_lines(stderr: str) -> list[str]:
    """Lines written by the video decoders' C code (ffmpeg's '[mov,mp4,...' prefix, decord's C++ log format)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("[")
        and ("@ 0x" in line or "mov,mp4" in line)
        or line.startswith(("[h264", "[AVIOContext"))
        or ".cc:" in line
        or "ffmpeg" in line.lower()
    ]


def test_default_output_is_the_projects_own(tmp_path, models_env, corpus_with_bad_video):
    db = tmp_path / "db"
    index = cli("index", str(corpus_with_bad_video), env=models_env, db=db)
    assert index.returncode == 0, index.stderr
    assert "broken.mp4" in index.stderr and "skipping" in index.stderr  # the project's own message stays
    search = cli("search", "a cat", env=models_env, db=db)
    ask = cli("ask", "What does the chart show?", "--max-new-tokens", "4", env=models_env, db=db)
    for result in (index, search, ask):
        assert result.returncode == 0, result.stderr
        for noise in NOISE:
            assert noise not in result.stderr, (noise, result.stderr[-2000:])
        assert not _decoder_lines(result.stderr), result.stderr[-2000:]
    verbose = cli("search", "a cat", "--verbose", env=models_env, db=db)
    assert verbose.returncode == 0
    assert "LOAD REPORT" in verbose.stderr or "Loading weights" in verbose.stderr
    assert "embed query:" in verbose.stderr  # this project's info messages: stage timings


def _hub_env(tmp_path, endpoint: str) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}


def _silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


@pytest.mark.parametrize("kind", ["refused", "never-answers"])
def test_unreachable_hub_fails_in_seconds_with_the_local_folder_hint(tmp_path, kind):
    if kind == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: connections are refused
        server = None
    else:
        server, held = _silent_server()
        port = server.getsockname()[1]
    try:
        started = time.monotonic()
        result = cli(
            "index",
            str(CORPUS / "notes.md"),
            "--embedding-model",
            HUB_ID,
            env=_hub_env(tmp_path, f"http://127.0.0.1:{port}"),
            db=tmp_path / "db",
        )
        elapsed = time.monotonic() - started
    finally:
        if server is not None:
            server.close()
            for conn in held:
                conn.close()
    assert result.returncode == 3, result.stderr
    # seconds, not the minutes of retries a default client spends (the CLI itself takes ~4 s to start)
    assert elapsed < 25, elapsed
    assert HUB_ID in result.stderr and "cannot be reached" in result.stderr
    assert "local folders" in result.stderr and "QWEN3VL_RAG_EMBEDDING_MODEL" in result.stderr


def test_offline_switch_fails_at_once_for_a_model_not_in_the_cache(tmp_path):
    env = {**_hub_env(tmp_path, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = cli("index", str(CORPUS / "notes.md"), "--embedding-model", HUB_ID, env=env, db=tmp_path / "db")
    assert result.returncode == 3 and time.monotonic() - started < 15
    assert "not in the local cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def _seed_cache(hf_home, repo_id: str) -> None:
    """Put the tiny checkpoint into a hub cache as a download would (models--org--name/snapshots/<rev>)."""
    revision = "0" * 40
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in TINY.iterdir():
        shutil.copyfile(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_a_cached_hub_model_loads_while_the_hub_is_unreachable(tmp_path, models_env):
    env = {**models_env, **_hub_env(tmp_path, "http://127.0.0.1:9")}
    _seed_cache(tmp_path / "hf-home", HUB_ID)
    env["QWEN3VL_RAG_EMBEDDING_MODEL"] = HUB_ID
    started = time.monotonic()
    result = cli("index", str(CORPUS / "notes.md"), "--json", env=env, db=tmp_path / "db")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    info = cli("info", "--json", db=tmp_path / "db")
    assert HUB_ID in info.stdout
