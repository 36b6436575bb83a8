"""Ingestion against hostile and changing corpora: per-file failure attribution, changed / duplicated / deleted
files, model identity, and PDFs whose pages decode to gigabytes. Tiny checkpoint, embedded Qdrant Edge."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import MEDIA, TINY

from retrieval_pipeline import InputError
from retrieval_pipeline.ingest import (
    PDF_MAX_PIXELS,
    Indexer,
    IndexReport,
    IngestOptions,
    items_of_file,
    pdf_render_scale,
    render_pdf,
)
from retrieval_pipeline.retriever import TwoStageRetriever
from retrieval_pipeline.store import CollectionSpec, EdgeStore, point_id, sources_of

BAD_NAME = b"caf\xe9.txt"  # not UTF-8: Linux allows any bytes in a file name


def _names(report: IndexReport) -> dict[str, str]:
    return {f.source.rsplit("/", 1)[-1]: f.reason for f in report.failed}


@pytest.fixture
def store(tmp_path):
    s = EdgeStore(tmp_path / "db", "docs")
    yield s
    s.close()


def test_a_failing_file_fails_alone(embedder, store, tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(6):
        (folder / f"t{i}.txt").write_text(f"Document number {i} is about topic {i}.")
    (folder / "poison-memory.txt").write_text("POISON-MEMORY this one runs out of memory")
    (folder / "poison-type.txt").write_text("POISON-TYPE this one breaks the processor")
    shutil.copy(MEDIA / "chelsea.jpg", folder / "chelsea.jpg")
    for i in range(3):
        (folder / f"empty{i}.png").write_bytes(b"")  # three zero-byte images: three failures, none "present"
    with open(os.path.join(os.fsencode(folder), BAD_NAME), "w") as fh:
        fh.write("a file whose name is not UTF-8")
    original = embedder.embed

    def embed(inputs, **kwargs):  # the real embedder, with two inputs that make it raise
        texts = " ".join(str(i.get("text", "")) for i in inputs if isinstance(i, dict))
        if "POISON-MEMORY" in texts:
            raise MemoryError
        if "POISON-TYPE" in texts:
            raise TypeError("the processor failed")
        return original(inputs, **kwargs)

    monkeypatch.setattr(embedder, "embed", embed)
    report = Indexer(embedder, store, group_size=4).index_paths([folder], show_progress_bar=False)
    failed = _names(report)
    assert set(failed) == {
        "poison-memory.txt",
        "poison-type.txt",
        "caf\\xe9.txt",
        "empty0.png",
        "empty1.png",
        "empty2.png",
    }
    assert "out of memory" in failed["poison-memory.txt"]
    assert "TypeError: the processor failed" in failed["poison-type.txt"]
    assert "not valid UTF-8" in failed["caf\\xe9.txt"]
    assert all("empty file" in failed[f"empty{i}.png"] for i in range(3))
    assert report.indexed == 7 and report.present == 0  # every good file is in, none lost with a bad neighbour
    assert store.count() == 7
    assert {p.payload["file_name"] for p in store.scroll(with_vectors=False)} == {
        *(f"t{i}.txt" for i in range(6)),
        "chelsea.jpg",
    }
    report.summary().encode("utf-8")  # printable as it is


def test_a_changed_file_replaces_its_points(embedder, store, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    notes, photo = folder / "notes.md", folder / "photo.jpg"
    notes.write_text("The office cat sleeps on the red sofa. " * 60)
    shutil.copy(MEDIA / "chelsea.jpg", photo)
    indexer = Indexer(embedder, store)
    first = indexer.index_paths([folder], show_progress_bar=False)
    old_ids = {p.id for p in store.scroll(with_vectors=False)}
    assert first.indexed == len(old_ids) >= 3

    notes.write_text("Rockets leave the launch pad at dawn.")
    shutil.copy(MEDIA / "coffee.jpg", photo)
    second = indexer.index_paths([folder], show_progress_bar=False)
    assert second.indexed == 2 and second.replaced == len(old_ids) and second.failed == []
    payloads = [p.payload for p in store.scroll(with_vectors=False)]
    assert store.count() == 2 and not old_ids & {p.id for p in store.scroll(with_vectors=False)}
    assert [p["text"] for p in payloads if p["modality"] == "text"] == ["Rockets leave the launch pad at dawn."]
    hits = TwoStageRetriever(embedder, store).retrieve({"image": str(MEDIA / "chelsea.jpg")}, top_k=5)
    assert len(hits) == 2  # the old photo is gone: no second copy of photo.jpg


def test_identical_content_lists_every_source_and_prune_removes_gone_files(embedder, store, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    a, b = folder / "a.jpg", folder / "sub" / "b.jpg"
    shutil.copy(MEDIA / "rocket.jpg", a)
    shutil.copy(MEDIA / "rocket.jpg", b)
    indexer = Indexer(embedder, store)
    report = indexer.index_paths([folder], show_progress_bar=False)
    assert report.indexed == 1 and report.present == 1
    [point] = list(store.scroll(with_vectors=False))
    assert sources_of(point.payload) == [str(a.resolve()), str(b.resolve())]

    c = folder / "c.jpg"
    a.rename(c)  # renamed: --prune takes the old name off, the point stays
    report = indexer.index_paths([folder], show_progress_bar=False, prune=True)
    assert report.indexed == 0 and report.pruned == 0 and report.pruned_files == [str(a.resolve())]
    [point] = list(store.scroll(with_vectors=False))
    assert sorted(sources_of(point.payload)) == sorted([str(b.resolve()), str(c.resolve())])
    assert point.payload["source"] in sources_of(point.payload)

    b.unlink()
    c.unlink()
    report = indexer.prune([folder])
    assert report.pruned == 1 and sorted(report.pruned_files) == sorted([str(b.resolve()), str(c.resolve())])
    assert store.count() == 0
    assert indexer.prune([tmp_path / "not-mounted"]).pruned_files == []  # a missing root prunes nothing


def test_a_shared_point_describes_a_file_that_still_holds_it(embedder, store, tmp_path):
    """a.txt and b.txt hold the same text: after a.txt is gone the point kept a.txt's name and metadata."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("shared text")
    (folder / "b.txt").write_text("shared text")
    indexer = Indexer(embedder, store)
    indexer.index_paths([folder / "a.txt"], metadata={"lang": "en"}, show_progress_bar=False)
    indexer.index_paths([folder / "b.txt"], metadata={"lang": "de"}, show_progress_bar=False)
    [point] = list(store.scroll(with_vectors=False))
    assert point.payload["file_name"] == "a.txt" and point.payload["metadata"] == {"lang": "en"}
    assert point.payload["files"][str((folder / "b.txt").resolve())]["metadata"] == {"lang": "de"}
    (folder / "a.txt").unlink()
    indexer.prune([folder])
    [point] = list(store.scroll(with_vectors=False))
    assert point.payload["source"] == str((folder / "b.txt").resolve())
    assert point.payload["file_name"] == "b.txt" and point.payload["metadata"] == {"lang": "de"}
    assert store.count({"metadata.lang": "de"}) == 1 and store.count({"metadata.lang": "en"}) == 0
    # new metadata for the same file and content updates the point
    indexer.index_paths([folder / "b.txt"], metadata={"lang": "fr"}, show_progress_bar=False)
    assert store.count({"metadata.lang": "fr"}) == 1


def test_what_is_hashed_is_what_is_embedded(embedder, store, tmp_path, monkeypatch):
    image = tmp_path / "photo.jpg"
    shutil.copy(MEDIA / "chelsea.jpg", image)
    [unit] = list(items_of_file(image, IngestOptions(), {}))
    data = image.read_bytes()
    assert unit.input == {"image": data} and unit.content_key == hashlib.sha256(data).hexdigest()

    video = tmp_path / "clip.mp4"
    shutil.copy(MEDIA / "moving_square.mp4", video)
    original = embedder.embed

    def embed_while_the_file_changes(inputs, **kwargs):
        out = original(inputs, **kwargs)  # the reader decoded the file ...
        with open(video, "ab") as fh:  # ... and then someone wrote to it
            fh.write(b"\0")
        return out

    monkeypatch.setattr(embedder, "embed", embed_while_the_file_changes)
    report = Indexer(embedder, store).index_paths([video], show_progress_bar=False)
    assert report.indexed == 0 and "changed while it was being indexed" in _names(report)["clip.mp4"]
    assert store.count() == 0
    monkeypatch.setattr(embedder, "embed", original)
    report = Indexer(embedder, store).index_paths([video], show_progress_bar=False)  # the next run indexes it
    assert report.indexed == 1 and report.failed == []


def test_point_ids_do_not_depend_on_where_the_model_lives(embedder, public, tmp_path, monkeypatch):
    from retrieval_pipeline import Qwen3VLEmbedder

    copy = shutil.copytree(TINY, tmp_path / "elsewhere" / "model")
    notes = tmp_path / "notes.txt"
    notes.write_text("Revenue grew in the third quarter.")
    first = EdgeStore(tmp_path / "db", "a")
    Indexer(embedder, first).index_paths([notes], show_progress_bar=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = Qwen3VLEmbedder("model", **public["settings"])  # the same checkpoint, another folder, a relative name
    second = EdgeStore(tmp_path / "db", "b")
    Indexer(moved, second).index_paths([notes], show_progress_bar=False)
    assert {p.id for p in first.scroll(with_vectors=False)} == {p.id for p in second.scroll(with_vectors=False)}
    hits = TwoStageRetriever(moved, first).retrieve("revenue", top_k=1)  # not refused as "another model"
    assert hits[0].payload["source"] == str(notes.resolve())
    assert first.spec.model_id == second.spec.model_id and first.spec.format >= 1
    first.close()
    second.close()
    assert os.path.isdir(copy)


def test_an_old_collection_keeps_its_id_scheme(embedder, store, tmp_path):
    old = CollectionSpec(model="as-typed/long-ago", dim=embedder.hidden_size, instruction="x", format=0)
    store.open(old)
    notes = tmp_path / "notes.txt"
    notes.write_text("Some text.")
    indexer = Indexer(embedder, store)
    with pytest.raises(Exception, match="as-typed/long-ago"):  # another model: refused, not re-keyed
        indexer.index_paths([notes], show_progress_bar=False)
    legacy = CollectionSpec(model=str(TINY), dim=embedder.hidden_size, instruction="x", format=0)
    other = EdgeStore(tmp_path / "db", "legacy")
    other.open(legacy)
    report = Indexer(embedder, other).index_paths([notes], show_progress_bar=False)
    assert report.indexed == 1
    [unit] = list(items_of_file(notes, IngestOptions(), {}))
    assert other.existing([point_id(unit.content_key, legacy)])  # ids still from the model name as typed
    other.close()


def _pdf(path, sizes):
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for width, height in sizes:
        pdf.new_page(width, height)
    pdf.save(str(path))
    pdf.close()
    return path


def test_pdf_pages_render_at_the_models_size_whatever_they_declare(embedder, store, tmp_path):
    huge = _pdf(tmp_path / "huge.pdf", [(14400, 14400)])
    many = _pdf(tmp_path / "many.pdf", [(4700, 4700)] * 6 + [(300, 300)])
    assert huge.stat().st_size < 2048
    for path in (huge, many):
        for _, image, _ in render_pdf(path.read_bytes(), max_pixels=PDF_MAX_PIXELS):
            assert image.width * image.height <= PDF_MAX_PIXELS * 1.01
    assert pdf_render_scale(300, 300) == 2.0  # small pages: 144 dpi as before
    assert pdf_render_scale(14400, 14400, max_pixels=10**12) * 14400 <= 4096  # the hard cap
    with pytest.raises(InputError, match="invalid page size"):
        pdf_render_scale(0, 100)
    with pytest.raises(InputError, match="elongated"):
        pdf_render_scale(10**7, 1e-4)
    report = Indexer(embedder, store).index_paths([huge, many], show_progress_bar=False)
    assert report.failed == [] and report.indexed == 1 + 7


def test_an_unrenderable_pdf_page_is_reported_and_the_other_pages_indexed(embedder, tmp_path):
    """One page that cannot be rendered used to end the file there, silently: now it is a failure naming the page
    and every other page, before and after it, is indexed."""
    from conftest import make_pdf_with_bad_page

    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf_with_bad_page(folder / "report.pdf", ["Cover.", "Broken page.", "Results.", "Appendix."], bad=2)
    store = EdgeStore(tmp_path / "db", "docs")
    report = Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    assert report.indexed == 3 and sorted(p.payload["page"] for p in store.scroll()) == [1, 3, 4]
    (failure,) = report.failed
    assert failure.source.endswith("report.pdf (page 2)") and "too elongated to render" in failure.reason
    again = Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    assert (again.indexed, again.present, len(again.failed)) == (0, 3, 1)  # the good pages stay, nothing doubles
    store.close()


def test_symlinks_are_followed_under_their_own_names_with_loops_skipped_and_reported(embedder, tmp_path):
    """Links to files and to folders are followed alike; what is found through a link is indexed under the link's
    path, so deleting the link and pruning removes it. A loop, a second way to one folder, and a dangling link are
    skipped and reported."""
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore, sources_of

    root, outside = tmp_path / "docs", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "real.txt").write_text("The cat sleeps on the red sofa.")
    (root / "sub" / "a.txt").write_text("Rockets launch at dawn.")
    (outside / "b.txt").write_text("Quarterly revenue grew.")
    (root / "link.txt").symlink_to(root / "real.txt")
    (root / "again").symlink_to(root / "sub")
    (root / "loop").symlink_to(root)
    (root / "dangling.txt").symlink_to(tmp_path / "nothing.txt")
    (root / "shared").symlink_to(outside)
    store = EdgeStore(tmp_path / "db", "docs")
    report = Indexer(embedder, store).index_paths([root], show_progress_bar=False)
    sources = {Path(s).relative_to(root).as_posix() for p in store.scroll() for s in sources_of(p.payload)}
    assert sources == {"real.txt", "link.txt", "sub/a.txt", "shared/b.txt"}
    assert report.indexed == 3 and store.count() == 3  # link.txt's content is real.txt's: one point, two sources
    reasons = {Path(f.source).name: f.reason for f in report.skipped}
    assert reasons["again"].startswith("the same folder as") and reasons["loop"].startswith("the same folder as")
    assert "link to nothing" in reasons["dangling.txt"] and not report.failed
    (root / "link.txt").unlink()
    (root / "shared").unlink()
    pruned = Indexer(embedder, store).index_paths([root], show_progress_bar=False, prune=True)
    assert pruned.pruned == 1 and store.count() == 2  # b.txt's point went; real.txt's point lost only the link
    left = {Path(s).name for p in store.scroll() for s in sources_of(p.payload)}
    assert left == {"real.txt", "a.txt"}
    store.close()


def test_text_files_have_a_size_limit_a_bom_is_not_text_and_impossible_paths_are_reported(embedder, tmp_path):
    from retrieval_pipeline.ingest import Indexer, IngestOptions
    from retrieval_pipeline.store import EdgeStore

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.md").write_text("x" * 5000)
    (folder / "small.txt").write_bytes(b"\xef\xbb\xbfHello from Notepad.")  # UTF-8 with a byte order mark
    too_long = str(tmp_path / ("n" * 300)) + "/file.txt"  # longer than a file name may be
    store = EdgeStore(tmp_path / "db", "docs")
    options = IngestOptions(max_text_bytes=1000)
    report = Indexer(embedder, store).index_paths([too_long, folder], options=options, show_progress_bar=False)
    reasons = {Path(f.source).name: f.reason for f in report.failed}
    assert reasons["big.md"] == "file too large: 5000 bytes (limit 1000)"
    assert reasons["file.txt"] == "File name too long"  # reported; the run went on
    (point,) = store.scroll()
    assert point.payload["text"] == "Hello from Notepad."  # no U+FEFF in the text
    store.close()
