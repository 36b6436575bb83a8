"""Distributed ingestion on a real local Ray cluster (2 CPUs, CPU actors with fractional CPUs, the tiny checkpoint in
float32): the same ids, vectors and payloads as the single-process path; runs that finish each other; an actor
killed mid-run."""

from __future__ import annotations

import contextlib
import email.message
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import ray
from conftest import MEDIA, TINY, load_public, make_pdf_with_bad_page

from retrieval_pipeline.cli import main
from retrieval_pipeline.errors import StoreError
from retrieval_pipeline.ingest import Indexer, IndexReport, IngestOptions
from retrieval_pipeline.ingest.distributed import (
    EmbedActor,
    EmbedderSpec,
    RayIndexer,
    RayOptions,
    _rows,
    check_resources,
    owner_name,
    parse_actors,
)
from retrieval_pipeline.store import EdgeStore, ServerStore
from retrieval_pipeline.testing import make_text_pdf

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SETTINGS = load_public()["settings"]
# the actor subclasses below travel to Ray's worker processes by value (they cannot import this test module)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
PROSE = "The office cat sleeps on the red sofa while the quarterly figures are printed. " * 40


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(MEDIA / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(MEDIA / "chelsea.jpg", folder / "sub" / "same-cat.jpg")  # one point, two sources
    shutil.copy(MEDIA / "report_page.png", folder / "sub" / "report_page.png")
    shutil.copy(MEDIA / "moving_square.mp4", folder / "clip.mp4")
    (folder / "notes.md").write_text(PROSE)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "table.xyz").write_text("a,b\n")  # unsupported: skipped
    # a mail with a PDF attachment and an archive (issue 28): members through the same readers on both paths
    mail = email.message.EmailMessage()
    mail["From"], mail["Subject"] = "alice@example.com", "Minutes"
    mail.set_content("The minutes are attached.")
    attachment = make_text_pdf(tmp_path / "minutes.pdf", ["Minutes of the ibex meeting."]).read_bytes()
    mail.add_attachment(attachment, maintype="application", subtype="pdf", filename="minutes.pdf")
    (folder / "mail.eml").write_bytes(bytes(mail))
    with zipfile.ZipFile(folder / "bundle.zip", "w") as archive:
        archive.writestr("docs/readme.txt", "Read me first: the ibex manual.")
        archive.writestr("tool.exe", b"MZ")  # a member of a type not indexed: skipped, named
    (folder / os.fsdecode(b"caf\xe9.txt")).write_text("a name that is not UTF-8")  # fails with its reason
    make_text_pdf(folder / "report.pdf", ["Quarterly revenue by region.", "Outlook for next year: growth."])
    make_pdf_with_bad_page(folder / "bad.pdf", ["Cover page.", "(cannot be rendered)", "Appendix."], bad=2)
    return folder


def make_store(kind, tmp_path, collection):
    if kind == "edge":
        return EdgeStore(tmp_path / "db", collection)
    return ServerStore(path=str(tmp_path / f"local-{collection}"), collection=collection)


def ray_indexer(store, **options):
    """One actor unless a test is about several (each actor starts a process and loads the model: seconds)."""
    embedder = EmbedderSpec(str(TINY), torch_dtype="float32", **SETTINGS)
    options = {"actors": 1, "batch_size": 2, **options}
    actor = options.pop("embed_actor", EmbedActor)
    return RayIndexer(embedder, store, ray_options=RayOptions(**options), embed_actor=actor)


def points(store):
    return {p.id: p for p in store.scroll(with_vectors=True)}


def same_report(a: IndexReport, b: IndexReport) -> None:
    key = lambda f: (f.source, f.reason)  # noqa: E731
    assert (a.indexed, a.present, a.files, a.replaced) == (b.indexed, b.present, b.files, b.replaced)
    assert sorted(a.failed, key=key) == sorted(b.failed, key=key)
    assert sorted(a.skipped, key=key) == sorted(b.skipped, key=key)


def same_points(a, b) -> None:
    pa, pb = points(a), points(b)
    assert set(pa) == set(pb)
    for pid in pa:
        assert np.abs(np.asarray(pa[pid].vector) - np.asarray(pb[pid].vector)).max() <= 1e-5
        assert pa[pid].payload == pb[pid].payload


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_ray_gives_the_single_process_ids_vectors_payloads_and_report(embedder, corpus, tmp_path, kind):
    single_store, ray_store = make_store(kind, tmp_path, "single"), make_store(kind, tmp_path, "ray")
    metadata = {"team": "finance", "year": 2026}
    single = Indexer(embedder, single_store).index_paths([corpus], metadata=metadata, show_progress_bar=False)
    # two actors on the embedded store (a point written by two writers at once, through its one owner); the server
    # backend's writers are the same code, with one actor
    actors = 2 if kind == "edge" else 1
    distributed = ray_indexer(ray_store, actors=actors).index_paths(
        [corpus], metadata=metadata, show_progress_bar=False
    )
    assert isinstance(distributed, IndexReport)
    same_report(distributed, single)
    assert distributed.failed == single.failed  # not only the same set: the same order (file order)
    names = [f.source.rsplit("/", 1)[-1] for f in single.failed]
    assert names == sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))
    assert distributed.indexed == 1 + 1 + 1 + 2 + 2 + 1 + single_store.count({"modality": "text"})
    failed = {f.source.rsplit("/", 1)[-1] for f in distributed.failed}
    assert failed == {"bad.pdf (page 2)", "broken.png", "empty.txt", "caf\\xe9.txt"}  # one page, not the file
    assert [f.source.rsplit("/", 1)[-1] for f in distributed.skipped] == ["table.xyz", "bundle.zip#entry=tool.exe"]
    members = {p.payload.get("member") for p in points(ray_store).values()}
    assert {"attachment=minutes.pdf", "entry=docs/readme.txt"} <= members
    same_points(ray_store, single_store)
    cat = [p for p in points(ray_store).values() if p.payload.get("file_name") == "chelsea.jpg"]
    assert len(cat) == 1 and len(cat[0].payload["sources"]) == 2  # both files, in file order

    assert all(metadata.items() <= p.payload["metadata"].items() for p in points(ray_store).values())  # mail: + headers
    if kind == "edge":  # a re-run embeds nothing (the server backend runs the same code)
        again = ray_indexer(ray_store, actors=1).index_paths([corpus], metadata=metadata, show_progress_bar=False)
        assert (again.indexed, again.present) == (0, single.indexed + single.present)
    single_store.close()
    ray_store.close()


class _GatedActor(EmbedActor):
    """Embeds its first batch with rows to embed (rows of failed files only pass through), then holds every later
    one until the gate file exists: however slow or busy the machine, the run cannot finish before the test has
    stopped it (no timing involved)."""

    gate = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedded = 0

    def __call__(self, batch):
        if any(not row["status"] for row in _rows(batch)):
            self.embedded += 1
            while self.embedded > 1 and not os.path.exists(self.gate):
                time.sleep(0.05)
        return super().__call__(batch)


def _interrupt_after_first_write(store, stopped, gate, done):
    """Ctrl-C once the store's owner actor holds a point (the gated actor holds back every row after the first).
    Should no point ever come (a bug), the gate opens after 10 minutes: the run then ends and the test fails,
    instead of hanging."""

    def watch():
        deadline = time.monotonic() + 600
        while not done.is_set():
            try:
                if ray.get(ray.get_actor(owner_name(store.address())).count.remote()) > 0:
                    stopped.set()
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            except Exception:  # noqa: BLE001 - the owner is not started yet
                pass
            if time.monotonic() > deadline:
                gate.touch()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _exactly_once(store, expected: int) -> None:
    stored = points(store)
    assert len(stored) == expected
    hashes = [p.payload["content_hash"] for p in stored.values()]
    assert len(hashes) == len(set(hashes))


def test_an_interrupted_ray_run_is_finished_by_a_plain_index(embedder, corpus, tmp_path):
    reference_store = make_store("edge", tmp_path, "reference")
    reference = Indexer(embedder, reference_store).index_paths([corpus], show_progress_bar=False)
    store = make_store("edge", tmp_path, "docs")
    stopped, done = threading.Event(), threading.Event()
    gate = tmp_path / "gate"
    actor = type("Gated", (_GatedActor,), {"gate": str(gate)})
    _interrupt_after_first_write(store, stopped, gate, done)
    try:
        with pytest.raises(KeyboardInterrupt):
            ray_indexer(store, actors=1, batch_size=1, embed_actor=actor).index_paths([corpus], show_progress_bar=False)
    finally:
        done.set()
        gate.touch()  # lets a held batch go, should the actor outlive the run
    assert stopped.is_set()
    partial = store.count()
    assert 0 < partial < reference.indexed  # stopped half way; what was written is kept
    finished = Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    assert finished.indexed == reference.indexed - partial
    assert finished.present == reference.present + partial
    _exactly_once(store, reference.indexed)
    same_points(store, reference_store)
    store.close()


_KILLED_DRIVER = """
import json, sys, time
import ray
from retrieval_pipeline.ingest.distributed import EmbedActor, RayIndexer, RayOptions, EmbedderSpec, _rows
from retrieval_pipeline.store import EdgeStore

address, namespace, model, settings, db, corpus = sys.argv[1:]

class Held(EmbedActor):
    # embeds its first batch with rows to embed, then holds every later one (until this driver is killed)
    def __call__(self, batch):
        if any(not row["status"] for row in _rows(batch)):
            self.embedded = getattr(self, "embedded", 0) + 1
            while self.embedded > 1:
                time.sleep(1)
        return super().__call__(batch)

ray.init(address=address, namespace=namespace, logging_level="ERROR")
embedder = EmbedderSpec(model, torch_dtype="float32", **json.loads(settings))
options = RayOptions(actors=1, batch_size=1)
RayIndexer(embedder, EdgeStore(db, "docs"), ray_options=options, embed_actor=Held).index_paths([corpus])
"""


def test_a_ray_driver_killed_mid_run_keeps_every_batch_it_finished(embedder, corpus, tmp_path):
    """SIGKILL, not Ctrl-C: nothing of the driver runs after it. What the actors finished was stored as each
    batch was done (the driver's death takes the store's owner with it), so a run again continues from there."""
    reference_store = make_store("edge", tmp_path, "reference")
    reference = Indexer(embedder, reference_store).index_paths([corpus], show_progress_bar=False)
    store = make_store("edge", tmp_path, "docs")
    script = tmp_path / "driver.py"
    script.write_text(_KILLED_DRIVER)
    namespace = f"killed-driver-{os.getpid()}"
    args = [ray.get_runtime_context().gcs_address, namespace, str(TINY), json.dumps(SETTINGS)]
    driver = subprocess.Popen([sys.executable, str(script), *args, str(tmp_path / "db"), str(corpus)])
    name = owner_name(store.address())
    try:
        deadline = time.monotonic() + 300
        while True:  # until the owner holds the first batch (or the driver ended: a bug, shown by its output)
            assert driver.poll() is None, "the driver ended before it was stopped"
            assert time.monotonic() < deadline, "no batch was stored"
            with contextlib.suppress(ValueError, ray.exceptions.RayTaskError):  # not started, or not open yet
                if ray.get(ray.get_actor(name, namespace=namespace).count.remote()) > 0:
                    break
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 60
    while True:  # Ray ends the dead driver's actors, the owner with them (its lock goes with its process)
        try:
            store.open(create=False)
            break
        except StoreError as exc:
            assert "another process has it open" in str(exc)
        assert time.monotonic() < deadline, "the store's owner outlived its driver"
        time.sleep(0.2)
    partial = store.count()
    assert 0 < partial < reference.indexed
    finished = Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    assert (finished.indexed, finished.present) == (reference.indexed - partial, reference.present + partial)
    _exactly_once(store, reference.indexed)
    same_points(store, reference_store)
    store.close()


class _Interrupting:
    """The session embedder, stopped (Ctrl-C) on its third call."""

    def __init__(self, embedder):
        self._embedder, self.calls = embedder, 0

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def embed(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self._embedder.embed(*args, **kwargs)


def test_an_interrupted_plain_run_is_finished_by_ray(embedder, corpus, tmp_path):
    reference_store = make_store("edge", tmp_path, "reference")
    reference = Indexer(embedder, reference_store).index_paths([corpus], show_progress_bar=False)
    store = make_store("edge", tmp_path, "docs")
    with pytest.raises(KeyboardInterrupt):
        Indexer(_Interrupting(embedder), store, group_size=2).index_paths([corpus], show_progress_bar=False)
    partial = store.count()
    assert 0 < partial < reference.indexed
    finished = ray_indexer(store).index_paths([corpus], show_progress_bar=False)
    assert (finished.indexed, finished.present) == (reference.indexed - partial, reference.present + partial)
    _exactly_once(store, reference.indexed)
    same_points(store, reference_store)
    store.close()


class _KilledOnce(EmbedActor):
    """SIGKILLs its own process when its second batch arrives (after the first was done), once per test."""

    marks = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        with open(os.path.join(self.marks, "starts"), "a") as fh:
            fh.write(f"{os.getpid()} {int(restarted)}\n")
        self.batches = 0

    def __call__(self, batch):
        self.batches += 1
        killed = os.path.join(self.marks, "killed")
        if self.batches == 2 and not os.path.exists(killed):
            with open(killed, "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_an_actor_killed_after_its_first_batch_is_restarted_and_nothing_is_lost(embedder, corpus, tmp_path):
    reference_store = make_store("edge", tmp_path, "reference")
    reference = Indexer(embedder, reference_store).index_paths([corpus], show_progress_bar=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    actor = type("KilledOnce", (_KilledOnce,), {"marks": str(marks)})
    store = make_store("edge", tmp_path, "docs")
    report = ray_indexer(store, actors=1, batch_size=2, embed_actor=actor).index_paths(
        [corpus], show_progress_bar=False
    )
    assert (marks / "killed").exists()
    starts = [line.split() for line in (marks / "starts").read_text().splitlines()]
    restarts = sum(int(flag) for _, flag in starts)
    assert restarts > 0, starts  # Ray restarted the actor and retried its batch
    assert int((marks / "killed").read_text()) != int(starts[-1][0])  # a new process
    same_report(report, reference)
    _exactly_once(store, reference.indexed)
    same_points(store, reference_store)
    store.close()


def test_cli_index_ray_json_is_the_plain_report(corpus, tmp_path, capsys):
    common = ["--db", str(tmp_path / "db"), "--embedding-model", str(TINY), "--dtype", "float32"]
    common += ["--image-tokens", str(SETTINGS["max_pixels"] // 1024), "--json"]
    ray_args = ["--ray", "--ray-actors", "1-2", "--ray-batch-size", "2"]
    assert main(["index", str(corpus), "--collection", "ray", *common, *ray_args]) == 0
    distributed = json.loads(capsys.readouterr().out)
    assert main(["index", str(corpus), "--collection", "plain", *common]) == 0
    plain = json.loads(capsys.readouterr().out)
    for report in (distributed, plain):
        report["failed"].sort(key=lambda f: f["source"])
    assert distributed == plain
    assert main(["index", str(corpus), "--collection", "plain", *common, *ray_args]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["indexed"], again["present"]) == (0, plain["indexed"] + plain["present"])


def test_options_are_checked():
    assert parse_actors("3") == 3 and parse_actors("2-8") == (2, 8)
    with pytest.raises(ValueError, match="N or MIN-MAX"):
        parse_actors("many")
    with pytest.raises(ValueError, match="actors"):
        RayOptions(actors=(4, 2))
    with pytest.raises(ValueError, match="gpus_per_actor"):
        RayOptions(gpus_per_actor=-1)
    assert RayOptions().actor_cpus == 0.5 and RayOptions(gpus_per_actor=1).actor_cpus == 1.0


def test_a_store_other_processes_cannot_reach_is_refused_before_any_work():
    store = ServerStore(path=":memory:", collection="docs")
    with pytest.raises(ValueError, match="other processes cannot reach"):
        ray_indexer(store)


def test_a_second_ray_run_on_the_same_embedded_store_is_refused(tmp_path):
    from retrieval_pipeline.ingest.distributed import StoreOwner

    corpus = tmp_path / "corpus"  # what is indexed is not the point here: one small file
    corpus.mkdir()
    (corpus / "notes.md").write_text(PROSE)

    store = make_store("edge", tmp_path, "docs")
    indexer = ray_indexer(store)
    spec = store.open(indexer.spec)
    store.close()
    first = ray.remote(StoreOwner).options(name=owner_name(store.address()), num_cpus=0).remote(store.address())
    try:
        assert ray.get(first.call.remote("open", (spec,), {})) == spec
        assert ray.get(first.count.remote()) == 0
        with pytest.raises(StoreError, match="another Ray run is writing"):
            indexer.index_paths([corpus], show_progress_bar=False)
    finally:
        ray.get(first.close.remote())
        ray.kill(first)
    assert indexer.index_paths([corpus], show_progress_bar=False).indexed > 0  # once the other run is done
    store.close()


def test_repeated_content_keeps_its_first_place_and_a_rerun_changes_no_payload(embedder, tmp_path):
    """A chunk repeated in one file, more than a group of units apart, and in another file: one point, its first
    place in each file; indexing again changes nothing, on either path."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = " ".join(f"w{i % 40:02d}" for i in range(400))  # 40 chunks of 40 characters, 4 distinct
    (corpus / "a.txt").write_text(text)
    (corpus / "b.txt").write_text(text[:90])
    options = IngestOptions(chunk_chars=40, chunk_overlap=0)
    single_store, ray_store = make_store("edge", tmp_path, "single"), make_store("edge", tmp_path, "ray")
    single = Indexer(embedder, single_store).index_paths([corpus], options=options, show_progress_bar=False)
    distributed = ray_indexer(ray_store).index_paths([corpus], options=options, show_progress_bar=False)
    same_report(distributed, single)
    same_points(ray_store, single_store)
    first = {p.id: p.payload for p in ray_store.scroll(with_vectors=False)}
    a = str((corpus / "a.txt").resolve())
    assert sorted(p["files"][a]["chunk"] for p in first.values() if a in p["files"]) == [0, 1, 2, 3]
    Indexer(embedder, single_store).index_paths([corpus], options=options, show_progress_bar=False)
    ray_indexer(ray_store).index_paths([corpus], options=options, show_progress_bar=False)
    assert {p.id: p.payload for p in ray_store.scroll(with_vectors=False)} == first
    assert {p.id: p.payload for p in single_store.scroll(with_vectors=False)} == first
    single_store.close()
    ray_store.close()


def test_changed_files_lose_their_old_points_and_moved_content_is_not_embedded_again(embedder, tmp_path):
    """X moves from a long file (a whole group of units) to another and Y the other way: both are found present,
    not deleted and embedded again; each file loses what it no longer holds; the same report on both paths."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    options = IngestOptions(chunk_chars=40, chunk_overlap=0)
    filler = " ".join(f"filler{i:03d}xx" for i in range(31 * 3))  # 31 chunks
    x, y = "XXXXXXXX apples apples apples apples", "YYYYYYYY banana banana banana banana"
    single_store, ray_store = make_store("edge", tmp_path, "single"), make_store("edge", tmp_path, "ray")
    (corpus / "a.txt").write_text(x + " " + filler)
    (corpus / "b.txt").write_text(y)
    Indexer(embedder, single_store).index_paths([corpus], options=options, show_progress_bar=False)
    ray_indexer(ray_store).index_paths([corpus], options=options, show_progress_bar=False)
    (corpus / "a.txt").write_text(y + " " + filler)
    (corpus / "b.txt").write_text(x)
    single = Indexer(embedder, single_store).index_paths([corpus], options=options, show_progress_bar=False)
    distributed = ray_indexer(ray_store).index_paths([corpus], options=options, show_progress_bar=False)
    assert (single.indexed, single.present, single.replaced) == (0, 33, 2)
    same_report(distributed, single)
    same_points(ray_store, single_store)
    single_store.close()
    ray_store.close()


def test_a_pool_the_cluster_cannot_hold_is_refused_not_waited_for(caplog):
    cpus = {"CPU": 2.0}
    check_resources(RayOptions(actors=2), cpus, local=True)  # 2 x 0.5 CPU and one CPU for the tasks
    with pytest.raises(ValueError, match="6 CPU actors .* ask for fewer actors"):
        check_resources(RayOptions(actors=6), cpus, local=True)
    with pytest.raises(ValueError, match="1 GPU each need 1 GPUs; the Ray cluster has 2 CPUs and 0 GPUs"):
        check_resources(RayOptions(gpus_per_actor=1), cpus, local=True)
    with caplog.at_level("WARNING", logger="retrieval_pipeline.ingest.distributed"):
        check_resources(RayOptions(actors=(4, 8), gpus_per_actor=1), {"CPU": 64, "GPU": 2}, local=False)
    check_resources(RayOptions(actors=2, gpus_per_actor=0.5), {"CPU": 16, "GPU": 1}, local=True)
    assert "waits until the cluster grows" in caplog.text


def test_cli_checks_ray_options_before_rebuild_deletes_anything(corpus, tmp_path, capsys):
    common = ["--db", str(tmp_path / "db"), "--embedding-model", str(TINY), "--dtype", "float32", "--json"]
    assert main(["index", str(corpus / "notes.md"), *common]) == 0
    capsys.readouterr()
    assert main(["index", str(corpus), "--rebuild", "--ray", "--ray-actors", "0", *common]) == 2  # usage
    assert "actors must be a positive int" in capsys.readouterr().err
    assert EdgeStore(tmp_path / "db", "default").count() > 0  # still there
