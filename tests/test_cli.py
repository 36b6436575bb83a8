"""The ``qwen3vl-rag`` command through a subprocess, on tiny checkpoints, as a user runs it."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY
from helpers.cli import CORPUS, ROOT, cli, main_here


@pytest.mark.slow
@pytest.mark.subprocess
def test_main_job_then_a_search(tmp_path, models_env):
    """The main job as a user runs it: real processes."""
    db = tmp_path / "db"
    run = cli(
        "run",
        str(CORPUS),
        "What does the revenue chart show?",
        "--max-new-tokens",
        "8",
        "--json",
        env=models_env,
        db=db,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["index"]["indexed"] >= 7 and data["index"]["failed"] == []
    assert isinstance(data["answer"], str) and len(data["sources"]) == 3
    assert all(s["rerank_score"] is not None for s in data["sources"])

    search = cli("search", "a cat on a sofa", "--top-k", "2", "--json", env=models_env, db=db)
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert [h["rank"] for h in hits] == [1, 2]


@pytest.mark.slow
def test_the_indexed_corpus_through_every_command(corpus_db, models_env, capsys, monkeypatch):
    """The example corpus as `qwen3vl-rag index` left it, through the other commands (in this process)."""
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    db = corpus_db
    points = json.loads(main_here(capsys, monkeypatch, "info", "--json", db=db)[1])["points"]
    code, out, err = main_here(capsys, monkeypatch, "index", str(CORPUS), "--json", db=db)
    assert code == 0, err
    report = json.loads(out)
    assert report["indexed"] == 0 and report["present"] == points >= 7  # indexing again embeds nothing

    args = ("search", "photo", "--image", str(CORPUS / "chelsea.jpg"), "--no-rerank", "--filter", "modality=image")
    code, out, err = main_here(capsys, monkeypatch, *args, "--json", db=db)
    assert code == 0, err
    hits = json.loads(out)
    assert hits and all(h["modality"] == "image" and h["rerank_score"] is None for h in hits)
    # --min-score: without reranking, a cut on the cosine (issue 29)
    cut = (hits[0]["score"] + hits[1]["score"]) / 2
    code, out, err = main_here(capsys, monkeypatch, *args, "--json", "--min-score", str(cut), db=db)
    assert code == 0, err
    assert [h["id"] for h in json.loads(out)] == [hits[0]["id"]]
    code, out, err = main_here(capsys, monkeypatch, *args, "--min-score", "2", db=db)
    assert code == 2 and "min_score must be between -1 and 1" in err

    # search without --embedding-model uses the model the collection records
    monkeypatch.delenv("QWEN3VL_RAG_EMBEDDING_MODEL")
    code, out, err = main_here(capsys, monkeypatch, "search", "rocket", "--no-rerank", db=db)
    assert code == 0, err
    assert " 1. " in out


def test_missing_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    args = ("index", str(CORPUS), "--embedding-model", str(tmp_path / "no-model"))
    code, _, err = main_here(capsys, monkeypatch, *args, db=tmp_path / "db")
    assert code == 3
    assert "cannot load the embedding model" in err and "no-model" in err


def test_missing_and_empty_collection(tmp_path, models_env, capsys, monkeypatch):
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "db"
    code, _, err = main_here(capsys, monkeypatch, "search", "anything", db=db)
    assert code == 5 and "no collection 'default'" in err
    assert main_here(capsys, monkeypatch, "info", "--collection", "nothing-here", db=db)[0] == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main_here(capsys, monkeypatch, "index", str(empty), db=db)[0] == 0
    code, _, err = main_here(capsys, monkeypatch, "search", "anything", db=db)
    assert code == 5 and "empty" in err


def test_unreachable_server(capsys, monkeypatch):
    code, _, err = main_here(capsys, monkeypatch, "info", "--url", "http://127.0.0.1:9")
    assert code == 4 and "127.0.0.1:9" in err


def test_usage_errors(tmp_path, capsys, monkeypatch):
    assert main_here(capsys, monkeypatch)[0] == 2
    code, _, err = main_here(capsys, monkeypatch, "search", "x", "--filter", "novalue", db=tmp_path / "db")
    assert code == 2 and "--filter expects KEY=VALUE" in err
    # option values checked before anything is opened or created: usage errors (2) naming the option
    for args, said in (
        (("--dim", "-3"), "--dim: must be at least 1, got -3"),
        (("--metadata", "{bad json"), "--metadata is not valid JSON"),
    ):
        code, _, err = main_here(capsys, monkeypatch, "index", str(CORPUS / "notes.md"), *args, db=tmp_path / "db")
        assert code == 2 and said in err and "Traceback" not in err, err
    code, _, err = main_here(capsys, monkeypatch, "push", "--to-url", str(tmp_path / "elsewhere"), db=tmp_path / "db")
    assert code == 2 and "--to-url takes a Qdrant server's URL" in err
    code, _, err = main_here(capsys, monkeypatch, "search", "x", "--rerank-budget", "-5", db=tmp_path / "db")
    assert code == 2 and "--rerank-budget: must be at least 0" in err
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").iterdir())  # nothing was created


def test_a_dimension_over_the_model_is_refused_before_a_collection_exists(tmp_path, models_env, capsys, monkeypatch):
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    args = ("index", str(CORPUS / "notes.md"), "--dim", "100000")
    code, _, err = main_here(capsys, monkeypatch, *args, db=tmp_path / "db")
    assert code == 1 and "outside this model's Matryoshka range" in err
    assert not (tmp_path / "db" / "default").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_where_everything_failed_exits_1(tmp_path, models_env):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"empty{i}.png").write_bytes(b"")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "w") as fh:
        fh.write("text in a file whose name is not UTF-8")
    result = cli("index", str(folder), env=models_env, db=tmp_path / "db")
    assert result.returncode == 1, result.stderr
    assert "0 items indexed, 0 already present, 4 failed" in result.stdout
    assert result.stdout.count("empty file") == 3 and "caf\\xe9.txt" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_model_spelling_and_working_directory_do_not_matter(tmp_path, capsys, monkeypatch):
    """A relative model path from one folder, the absolute one from another: the same collection (in this process,
    changing its working directory)."""
    db = tmp_path / "db"
    monkeypatch.chdir(ROOT)
    args = ("index", str(CORPUS / "notes.md"), "--embedding-model", os.path.relpath(TINY, ROOT), "--json")
    code, _, err = main_here(capsys, monkeypatch, *args, db=db)
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ("search", "revenue", "--no-rerank", "--embedding-model", str(TINY), "--json")
    code, out, err = main_here(capsys, monkeypatch, *args, db=db)
    assert code == 0, err
    assert json.loads(out)[0]["source"] == str(CORPUS / "notes.md")


def test_a_failed_rebuild_leaves_the_old_collection_intact(tmp_path, caplog):
    """--rebuild builds into a sibling collection and swaps only after a run that indexed something: a typo in the
    model (exit 3) or in the path (exit 1) leaves the old collection with all its points."""
    from retrieval_pipeline.cli import main
    from retrieval_pipeline.store import EdgeStore

    db, folder = tmp_path / "db", tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The cat sleeps on the sofa.")
    (folder / "b.txt").write_text("Rockets launch at dawn.")
    common = ["--db", str(db), "--embedding-model", str(TINY), "--json"]
    assert main(["index", str(folder), *common]) == 0
    held = {p.id for p in EdgeStore(db, "default").scroll()}
    assert len(held) == 2
    typo_model = ["--db", str(db), "--embedding-model", str(tmp_path / "no-such-model"), "--json"]
    assert main(["index", str(folder), "--rebuild", *typo_model]) == 3
    assert main(["index", str(tmp_path / "no-such-folder"), "--rebuild", *common]) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="retrieval_pipeline"):
        assert main(["index", str(bad), "--rebuild", *common[:-1]]) == 1  # every file failed (no --json: warnings)
    assert "rebuild of collection 'default' abandoned (nothing was indexed)" in caplog.text
    store = EdgeStore(db, "default")
    assert {p.id for p in store.scroll()} == held  # every point still there
    store.close()
    assert sorted(p.name for p in db.iterdir() if not p.name.startswith(".")) == ["default"]  # no leftover
    (folder / "b.txt").unlink()
    assert main(["index", str(folder), "--rebuild", *common]) == 0  # a good rebuild replaces it
    store = EdgeStore(db, "default")
    assert store.count() == 1 and {p.payload["text"] for p in store.scroll()} == {"The cat sleeps on the sofa."}
    store.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_damaged_store_exit_4_then_rebuild_and_prune(tmp_path, models_env, capsys, monkeypatch):
    """In this process (the exit codes and messages are the point, not the process)."""
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    db, folder = tmp_path / "db", tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The cat sleeps on the sofa.")
    (folder / "b.txt").write_text("Rockets launch at dawn.")
    assert main_here(capsys, monkeypatch, "index", str(folder), "-q", db=db)[0] == 0
    [status] = [p for p in (db / "default" / "shard").rglob("status.dat") if p.parent.name == "vectors"]
    status.write_bytes(b"")  # a truncated file inside the shard
    for args in (("info",), ("search", "cat", "--no-rerank")):
        code, _, err = main_here(capsys, monkeypatch, *args, db=db)
        assert code == 4, (args, err)
        assert "is damaged" in err and "--rebuild" in err and "Traceback" not in err
    code, out, err = main_here(capsys, monkeypatch, "index", str(folder), "--rebuild", "--json", db=db)
    assert code == 0, err
    assert json.loads(out)["indexed"] == 2
    (folder / "b.txt").unlink()
    code, out, err = main_here(capsys, monkeypatch, "index", str(folder), "--prune", "--json", db=db)
    assert code == 0, err
    report = json.loads(out)
    assert report["pruned"] == 1 and report["pruned_files"] == [str((folder / "b.txt").resolve())]
    assert report["present"] == 1 and report["failed"] == []
