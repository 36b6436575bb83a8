"""Real folders (issue 28): office documents rendered by LibreOffice, web pages, mail with attachments, archives,
text in any encoding -- each becomes items through the same readers, with text layers, member paths and highlights.

Every document here is written by the library that writes it (python-docx, python-pptx, openpyxl, the email
package, zipfile, the project's own PDF writer); LibreOffice (Debian's headless packages, installed by .ci/run)
renders the office ones."""

from __future__ import annotations

import email.message
import io
import json
import os
import random
import shutil
import stat
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import MEDIA, LiveServer
from helpers.cli import main_here

from retrieval_pipeline.errors import InputError
from retrieval_pipeline.ingest import Indexer, IngestOptions
from retrieval_pipeline.ingest.items import items_of_file
from retrieval_pipeline.media import containers, office
from retrieval_pipeline.media.documents import page_highlights, query_terms, snippet
from retrieval_pipeline.media.text import decode_text
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.records import Record
from retrieval_pipeline.serving.app import ServerConfig, create_app
from retrieval_pipeline.store import EdgeStore
from retrieval_pipeline.testing import make_text_pdf, write_docx, write_pptx, write_xlsx

# LibreOffice, Chromium and the indexed folder are the slow tier (each conversion starts LibreOffice: a second)

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def write_mail(path: Path, attachments: dict[str, bytes], subject: str = "Minutes of the pump review") -> Path:
    message = email.message.EmailMessage()
    message["From"] = "Alice Example <alice@example.com>"
    message["To"] = "team@example.com"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message["Subject"] = subject
    message.set_content("Hello team,\nthe minutes are attached; the wombat budget is on page one.\n")
    message.add_alternative("<html><body><p>Hello team, the minutes are attached.</p></body></html>", subtype="html")
    for name, data in attachments.items():
        maintype, subtype = ("application", "pdf") if name.endswith(".pdf") else ("application", "octet-stream")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    path.write_bytes(bytes(message))
    return path


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def build_folder(root: Path) -> Path:
    """A work folder as people keep one: Office files, a saved web page (with an image beside it and one inline),
    a mail with a PDF attachment, an archive, a PDF, a video, an image and text in three encodings."""
    root.mkdir(parents=True)
    write_docx(root / "report.docx", ["Quarterly report: revenue grew.", "Logistics of the okapi enclosure."])
    write_pptx(root / "deck.pptx", [("Roadmap", "Milestones for next year"), ("Risks", "Only on this slide: quokka")])
    write_xlsx(root / "budget.xlsx", {"Revenue": [["narwhal", "12"]], "Costs": [["pangolin", "7"]]})
    (root / "page_files").mkdir()
    shutil.copy(MEDIA / "chelsea.jpg", root / "page_files" / "cat.jpg")
    (root / "page.html").write_text(
        "<html><head><title>Field notes</title><script>document.write('never run')</script></head><body>"
        "<article><h1>Field notes</h1><p>The axolotl regrows its limbs; notes from the aquarium visit.</p>"
        '<img src="page_files/cat.jpg"><img src="https://example.invalid/tracker.png">'
        f'<img src="data:image/png;base64,{PNG_1PX}"></article></body></html>',
        encoding="utf-8",
    )
    minutes = make_text_pdf(root / "minutes.tmp", ["Minutes: the wombat budget was approved."]).read_bytes()
    (root / "minutes.tmp").unlink()
    write_mail(root / "mail.eml", {"minutes.pdf": minutes})
    write_zip(
        root / "bundle.zip",
        {
            "notes/legacy.txt": "Kühlschrank café – résumé for the ibex team".encode("cp1252"),
            "pics/rocket.jpg": (MEDIA / "rocket.jpg").read_bytes(),
        },
    )
    make_text_pdf(root / "manual.pdf", ["Install the flange gasket first.", "Then tighten the capybara bolt."])
    shutil.copy(MEDIA / "moving_square.mp4", root / "clip.mp4")
    (root / "windows.txt").write_bytes("Grüße aus Köln: the marmot report, 5 € per page.".encode("cp1252"))
    (root / "utf16.txt").write_text("UTF-16 notes about the tapir, naïve café.", encoding="utf-16")
    return root


# ----------------------------------------------------------------------------------------------------------------
# readers, without a model


@pytest.mark.parametrize(
    "encoding, text",
    [
        ("utf-8", "plain ascii and ünïcödé"),
        ("utf-8-sig", "with a byte order mark"),
        ("utf-16", "UTF-16 with its BOM: naïve"),
        ("utf-32", "UTF-32 with its BOM"),
        ("cp1252", "Le café coûte 3 € — naïve résumé, «déjà vu»."),
        ("latin-1", "Grüße aus Köln, schöne Straße."),
        ("shift_jis", "日本語のテキストです。検索エンジン。"),
        ("gb18030", "这是中文文本，用于检索测试。"),
        ("euc-kr", "한국어 텍스트입니다. 검색 테스트."),
        ("big5", "這是繁體中文文本，用於檢索測試。"),
    ],
)
def test_text_in_any_common_encoding_decodes(encoding, text):
    decoded, detected = decode_text(text.encode(encoding))
    assert decoded == text, detected


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_its_byte_order_mark_decodes(encoding):
    text = "Notes from a Windows tool: naïve café, the tapir report.\r\n"
    assert decode_text(text.encode(encoding)) == (text, encoding)


@pytest.mark.parametrize("data", [bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n" + bytes(range(200)) * 3])
def test_binary_data_is_still_refused_with_a_reason(data):
    with pytest.raises(InputError, match="binary data, not text"):
        decode_text(data)


def test_zip_bombs_are_refused_within_the_limits(tmp_path, monkeypatch):
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.txt", b"\0" * (20 * 1024 * 1024))  # 20 MiB that deflate to ~20 KB: ratio ~1000
        archive.writestr("fine.txt", b"a small note about the ibex")
        archive.writestr("noise.bin", random.Random(0).randbytes(400_000))  # incompressible: the archive's
    found = {m.name: m for m in containers.zip_members(bomb.getvalue())}  # overall ratio stays low
    assert found["zeros.txt"].data is None and "zip bomb" in found["zeros.txt"].error
    assert found["fine.txt"].data == b"a small note about the ibex"  # the archive's other entries go on
    # an archive of many small, highly compressed entries: its overall ratio refuses it
    small = io.BytesIO()
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(40):
            archive.writestr(f"a{i}.txt", b"a" * 60_000)
    with pytest.raises(InputError, match="times its size: refused as a zip bomb"):
        list(containers.zip_members(small.getvalue()))
    # a zip of zips: one budget for the whole file, whatever each archive says of itself
    budget = containers.Budget(5 * 1024 * 1024)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("part.bin", bytes(range(256)) * 12_000)  # 3 MB, stored
    list(containers.zip_members(inner.getvalue(), budget))
    second = list(containers.zip_members(inner.getvalue(), budget))
    assert second[0].data is None and "in all: refused as a zip bomb" in second[0].error
    # entries and total declared size are checked before anything is inflated
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(30):
            archive.writestr(f"f{i}.txt", b"x")
    monkeypatch.setattr(containers, "MAX_ENTRIES", 20)
    with pytest.raises(InputError, match="30 entries"):
        list(containers.zip_members(many.getvalue()))
    monkeypatch.setattr(containers, "MAX_EXPANDED_BYTES", 1024 * 1024)
    with pytest.raises(InputError, match="zip bomb"):
        list(containers.zip_members(bomb.getvalue()))
    # nesting is bounded: an archive in an archive in ... is refused past MAX_DEPTH
    nested = b"innermost ibex note"
    name = "note.txt"
    for depth in range(5):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr(name, nested)
        nested, name = buf.getvalue(), f"level{depth}.zip"
    (tmp_path / "deep.zip").write_bytes(nested)
    parts = list(items_of_file(tmp_path / "deep.zip", IngestOptions(), {}))
    assert len(parts) == 1 and "nested more than 3 deep" in parts[0].reason
    assert parts[0].where.endswith("deep.zip#entry=level3.zip#entry=level2.zip#entry=level1.zip#entry=level0.zip")


def test_a_2000_page_document_is_refused_before_any_page_is_rendered(tmp_path):
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for _ in range(2000):
        pdf.new_page(612, 792)
    pdf.save(str(tmp_path / "long.pdf"))
    pdf.close()
    started = time.perf_counter()
    with pytest.raises(InputError, match="2000 pages \\(limit 1000"):
        list(items_of_file(tmp_path / "long.pdf", IngestOptions(), {}))
    assert time.perf_counter() - started < 5  # the header decides; no page was rendered
    first = next(items_of_file(tmp_path / "long.pdf", IngestOptions(max_pages=2000), {}))  # allowed: it renders
    assert first.record.page == 1


def test_query_terms_snippets_and_boxes_on_a_pdf_page(tmp_path):
    assert query_terms("Where is the capybara bolt?") == ["capybara", "bolt"]
    path = make_text_pdf(tmp_path / "m.pdf", ["Install the flange gasket first. Then tighten the capybara bolt."])
    found = page_highlights(path, 1, ["capybara", "absent"])
    assert [h["term"] for h in found] == ["capybara"]
    for x0, y0, x1, y1 in found[0]["boxes"]:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert y1 < 0.5  # the text is at the top of the page: origin top-left
    text = "x " * 300 + "the capybara bolt " + "y " * 300
    assert "capybara" in snippet(text, "capybara") and snippet(text, "capybara").startswith("…")


def test_web_page_text_and_images_without_running_or_fetching_anything(tmp_path):
    folder = build_folder(tmp_path / "f")
    items = list(items_of_file(folder / "page.html", IngestOptions(), {}))
    texts = [i.record.text for i in items if i.record.modality == "text"]
    assert texts and texts[0].startswith("Field notes") and "axolotl" in texts[0]
    assert all("never run" not in t for t in texts)  # scripts are dropped, never run
    images = [i.record.member for i in items if i.record.modality == "image"]
    assert images == ["image=page_files/cat.jpg", "inline=1.png"]  # the remote tracker is not fetched
    # a member is read again from its page (the retriever, the server)
    cat = next(i for i in items if i.record.member == "image=page_files/cat.jpg")
    assert Path(cat.record.local_file()).read_bytes() == (MEDIA / "chelsea.jpg").read_bytes()
    # an <img> that climbs out of the page's folder is not read
    (tmp_path / "f" / "evil.html").write_text('<p>text here</p><img src="../../../etc/hostname">')
    evil = list(items_of_file(tmp_path / "f" / "evil.html", IngestOptions(), {}))
    assert [getattr(e, "reason", None) for e in evil[1:]] == ["not an image file beside the page"]


def test_mail_body_headers_and_attachments_as_members(tmp_path):
    pdf = make_text_pdf(tmp_path / "a.pdf", ["Minutes: the wombat budget was approved."]).read_bytes()
    inner = write_zip(tmp_path / "inner.zip", {"deep/readme.txt": b"the gecko manual"}).read_bytes()
    path = write_mail(tmp_path / "m.eml", {"minutes.pdf": pdf, "inner.zip": inner, "tool.exe": b"MZ\x90\x00"})
    parts = list(items_of_file(path, IngestOptions(), {"team": "ops"}))
    body = parts[0].record
    assert body.modality == "text" and "wombat budget is on page one" in body.text
    assert body.metadata == {
        "from": "Alice Example <alice@example.com>",
        "to": "team@example.com",
        "date": "Mon, 07 Dec 2026 10:00:00 +0000",
        "subject": "Minutes of the pump review",
        "team": "ops",
    }
    page = parts[1].record
    assert (page.modality, page.member, page.page) == ("pdf-page", "attachment=minutes.pdf", 1)
    assert page.describe() == f"{path}#attachment=minutes.pdf (page 1)" and "wombat" in page.text
    readme = parts[2].record
    assert readme.member == "attachment=inner.zip#entry=deep/readme.txt" and readme.text == "the gecko manual"
    assert parts[3].skipped and parts[3].where.endswith("#attachment=tool.exe")
    # the page is rendered again from the attachment, for the reranker and the generator
    assert Record.from_payload(page.to_payload()).to_input()["image"].size == parts[1].input["image"].size
    # an attachment gone from the file is named when it is read again
    write_mail(path, {})
    with pytest.raises(InputError, match="no longer holds 'attachment=minutes.pdf'"):
        containers.member_bytes(path, "attachment=minutes.pdf")


@pytest.mark.slow
@pytest.mark.skipif(office.soffice() is None, reason="LibreOffice is not installed")
def test_office_pages_slides_and_sheets(tmp_path):
    deck = write_pptx(tmp_path / "deck.pptx", [("Roadmap", "Milestones"), ("Risks", "Only on this slide: quokka")])
    book = write_xlsx(tmp_path / "book.xlsx", {"Revenue": [["narwhal"]], "Costs": [["pangolin"]]})
    before = sorted(os.listdir(tmp_path))
    slides = [i.record for i in items_of_file(deck, IngestOptions(), {})]
    assert [(s.modality, s.page) for s in slides] == [("pdf-page", 1), ("pdf-page", 2)]
    assert "quokka" in slides[1].text and "quokka" not in slides[0].text
    sheets = [i.record for i in items_of_file(book, IngestOptions(), {})]
    assert [(s.page, s.sheet, s.text) for s in sheets] == [(1, "Revenue", "narwhal"), (2, "Costs", "pangolin")]
    assert sorted(os.listdir(tmp_path)) == before  # nothing left beside the user's documents
    # the page is rendered again from the cached conversion (the retriever, the server's thumbnails)
    assert Record.from_payload(slides[1].to_payload()).to_input()["image"].size[0] > 100
    with pytest.raises(InputError, match="2 pages \\(limit 1"):
        list(items_of_file(deck, IngestOptions(max_pages=1), {}))


@pytest.mark.slow
@pytest.mark.skipif(office.soffice() is None, reason="LibreOffice is not installed")
def test_documents_libreoffice_cannot_open_are_named_with_the_reason(tmp_path):
    good = write_docx(tmp_path / "good.docx", ["A report about the serval."]).read_bytes()
    (tmp_path / "truncated.docx").write_bytes(good[: len(good) // 2])
    (tmp_path / "renamed.docx").write_bytes(b"this is plain text someone named .docx")
    for name, reason in [("truncated.docx", "LibreOffice could not open"), ("renamed.docx", "not a ZIP package")]:
        with pytest.raises(InputError, match=reason):
            list(items_of_file(tmp_path / name, IngestOptions(), {}))


def test_conversion_runs_under_a_time_limit_and_kills_what_it_started(tmp_path, monkeypatch):
    """A converter that hangs (and starts a child that would outlive it) is killed, process group and all."""
    fake = tmp_path / "soffice"
    pidfile = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nsleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("QWEN3VL_RAG_SOFFICE", str(fake))
    started = time.perf_counter()
    with pytest.raises(InputError, match="did not finish converting it within 1 s"):
        office.convert_to_pdf(write_docx(tmp_path / "a.docx", ["x"]).read_bytes(), ".docx", timeout=1)
    assert time.perf_counter() - started < 10
    child = Path(f"/proc/{int(pidfile.read_text())}/stat")
    time.sleep(0.2)  # gone, or a zombie waiting for its reaper: not running either way
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_without_libreoffice_each_office_file_fails_alone_and_the_run_goes_on(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("QWEN3VL_RAG_SOFFICE", str(tmp_path / "no-such-soffice"))
    folder = tmp_path / "f"
    folder.mkdir()
    write_docx(folder / "a.docx", [f"unique {time.time_ns()}"])  # not in the conversion cache
    (folder / "notes.txt").write_text("notes about the ibex")
    store = EdgeStore(tmp_path / "db", "docs")
    report = Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    store.close()
    assert report.indexed == 1 and [f.source.rsplit("/", 1)[-1] for f in report.failed] == ["a.docx"]
    assert "needs LibreOffice" in report.failed[0].reason and "apt-get install" in report.failed[0].reason


# ----------------------------------------------------------------------------------------------------------------
# a mixed folder indexed with the tiny model: search, highlights, re-runs, prune, the server


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, embedder):
    if office.soffice() is None:
        pytest.skip("LibreOffice is not installed")
    root = tmp_path_factory.mktemp("mixed")
    folder = build_folder(root / "folder")
    write_docx(folder / "broken.docx", ["x"])
    data = (folder / "broken.docx").read_bytes()
    (folder / "broken.docx").write_bytes(data[: len(data) // 2])
    store = EdgeStore(root / "db", "docs")
    report = Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    yield folder, store, report
    store.close()


def _points(store: EdgeStore) -> list[Record]:
    return [Record.from_payload(p.payload) for p in store.scroll()]


@pytest.mark.slow
def test_a_mixed_folder_indexes_with_no_file_skipped_for_its_type(mixed):
    folder, store, report = mixed
    assert report.files == 12 and report.skipped == []
    assert [(f.source.rsplit("/", 1)[-1], "LibreOffice could not open" in f.reason) for f in report.failed] == [
        ("broken.docx", True)
    ]
    where = sorted(
        (r.locator.removeprefix(str(folder) + "/"), r.page, r.sheet, r.modality)
        for r in _points(store)
        if r.modality != "text"
    )
    assert where == [
        ("budget.xlsx", 1, "Revenue", "pdf-page"),
        ("budget.xlsx", 2, "Costs", "pdf-page"),
        ("bundle.zip#entry=pics/rocket.jpg", None, None, "image"),
        ("clip.mp4", None, None, "video"),
        ("deck.pptx", 1, None, "pdf-page"),
        ("deck.pptx", 2, None, "pdf-page"),
        ("mail.eml#attachment=minutes.pdf", 1, None, "pdf-page"),
        ("manual.pdf", 1, None, "pdf-page"),
        ("manual.pdf", 2, None, "pdf-page"),
        ("page.html#image=page_files/cat.jpg", None, None, "image"),  # one point: also page_files/cat.jpg itself
        ("page.html#inline=1.png", None, None, "image"),
        ("report.docx", 1, None, "pdf-page"),
        ("report.docx", 2, None, "pdf-page"),
    ]
    cat = next(r for r in _points(store) if r.member == "image=page_files/cat.jpg")
    assert cat.sources == [str(folder / "page.html"), str(folder / "page_files" / "cat.jpg")]
    assert cat.files[str(folder / "page_files" / "cat.jpg")].get("member") is None  # the file is its own item there
    encodings = {r.locator.removeprefix(f"{folder}/"): r.encoding for r in _points(store) if r.encoding}
    assert encodings == {"windows.txt": "cp1252", "utf16.txt": "utf-16", "bundle.zip#entry=notes/legacy.txt": "cp1252"}
    texts = " ".join(r.text for r in _points(store))
    for word in ("Grüße aus Köln", "5 €", "naïve café", "Kühlschrank café", "axolotl", "wombat budget"):
        assert word in texts


@pytest.mark.slow
def test_a_term_only_inside_a_slide_finds_that_slide_highlighted(mixed, embedder):
    folder, store, _ = mixed
    rag = RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None)
    hits = rag.search("quokka", top_k=3, rerank=False)
    top = hits[0]
    assert (top.source, top.record.page) == (str(folder / "deck.pptx"), 2)
    assert [h["term"] for h in top.highlights] == ["quokka"]
    (x0, y0, x1, y1), *_ = top.highlights[0]["boxes"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert "quokka" in top.snippet
    as_json = top.to_dict()
    assert as_json["highlights"] == top.highlights and as_json["snippet"] == top.snippet
    # a term only in a mail's attachment: the attachment's page, named as its own member
    hit = rag.search("wombat approved", top_k=5, rerank=False, filters={"modality": "pdf-page"})[0]
    assert hit.describe() == f"{folder / 'mail.eml'}#attachment=minutes.pdf (page 1)"
    assert hit.highlights and {h["term"] for h in hit.highlights} == {"wombat", "approved"}
    # the mail's headers filter its items (body and attachments alike)
    subject = {"metadata.subject": "Minutes of the pump review"}
    found = rag.search("minutes", top_k=20, rerank=False, filters=subject)
    assert {h.source for h in found} == {str(folder / "mail.eml")} and len(found) == 2


@pytest.mark.slow
def test_the_server_shows_members_pages_and_highlights(mixed, embedder):
    folder, store, _ = mixed
    rag = RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None)
    with (
        LiveServer(create_app(pipeline=rag, config=ServerConfig(source_root=str(folder)))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        r = client.post("/v1/search", json={"query": "quokka", "top_k": 3, "rerank": False})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert (top["source"], top["page"]) == ("deck.pptx", 2) and top["highlights"][0]["term"] == "quokka"
        item = client.get(f"/v1/items/{top['id']}", params={"q": "quokka risks"}).json()
        assert {h["term"] for h in item["highlights"]} == {"quokka", "risks"} and item["readable"]
        thumb = client.get(f"/v1/items/{top['id']}/thumbnail")
        assert thumb.status_code == 200 and "x-placeholder" not in thumb.headers
        r = client.post("/v1/search", json={"query": "x", "top_k": 20, "rerank": False})
        members = {h["member"]: h["id"] for h in r.json()["results"] if h.get("member")}
        for member in ("attachment=minutes.pdf", "entry=pics/rocket.jpg", "image=page_files/cat.jpg"):
            media = client.get(f"/v1/items/{members[member]}/media")
            assert media.status_code == 200 and "x-placeholder" not in media.headers, member
            assert media.headers["content-type"].startswith("image/")


@pytest.mark.slow
def test_rerun_embeds_nothing_a_changed_document_replaces_its_pages_and_prune_removes_a_mail(mixed, embedder, tmp_path):
    folder, store, _ = mixed
    copy = shutil.copytree(folder, tmp_path / "folder")
    db = EdgeStore(tmp_path / "db", "docs")
    first = Indexer(embedder, db).index_paths([copy], show_progress_bar=False)
    again = Indexer(embedder, db).index_paths([copy], show_progress_bar=False)
    assert again.indexed == 0 and again.present == first.indexed + first.present
    write_docx(copy / "report.docx", ["Quarterly report: revenue grew.", "A new second page about the gerenuk."])
    changed = Indexer(embedder, db).index_paths([copy / "report.docx"], show_progress_bar=False)
    assert changed.indexed == 2 and changed.replaced == 2  # the document's bytes changed: both pages are new
    (copy / "mail.eml").unlink()
    pruned = Indexer(embedder, db).index_paths([copy], prune=True, show_progress_bar=False)
    assert pruned.pruned_files == [str(copy / "mail.eml")] and pruned.pruned == 2  # the body and its attachment
    assert not [r for r in _points(db) if "mail.eml" in r.source]
    db.close()


@pytest.mark.slow
def test_the_command_line_indexes_a_mixed_folder_and_info_counts_by_modality(
    mixed, tmp_path, models_env, capsys, monkeypatch
):
    folder, _, _ = mixed
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "db"
    code, out, err = main_here(capsys, monkeypatch, "index", str(folder), db=db)
    assert code == 0, err
    assert "broken.docx: not a readable ZIP package (File is not a zip file): LibreOffice could not open" in out + err
    code, out, err = main_here(capsys, monkeypatch, "search", "quokka", "--json", "--no-rerank", db=db)
    top = json.loads(out)[0]
    assert top["source"].endswith("deck.pptx") and top["page"] == 2 and top["highlights"][0]["term"] == "quokka"
    code, out, err = main_here(capsys, monkeypatch, "search", "wombat", "--no-rerank", "--top-k", "5", db=db)
    assert "mail.eml#attachment=minutes.pdf (page 1)" in out  # the terminal names the member
    info = json.loads(main_here(capsys, monkeypatch, "info", "--json", db=db)[1])
    assert info["modalities"] == {"text": 5, "image": 3, "video": 1, "pdf-page": 9}, info


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_render_html_runs_the_page_offline_and_indexes_its_pages(tmp_path, caplog):
    """--render-html: Chromium prints the page (its script runs); nothing reaches the network (a server on
    127.0.0.1 sees no request), no local file outside the page's folder shows up, the image beside it does."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"leaked")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-TOKEN-123")
    folder = tmp_path / "site"
    (folder / "img").mkdir(parents=True)
    shutil.copy(MEDIA / "chelsea.jpg", folder / "img" / "cat.jpg")
    (folder / "page.html").write_text(
        "<html><body><h1>Rendered notes</h1><p id=x>static text</p>"
        "<script>document.getElementById('x').textContent = 'written by the script: dugong';"
        f"fetch('http://127.0.0.1:{port}/fetch').catch(() => 0);</script>"
        f'<img src="http://127.0.0.1:{port}/img.png"><iframe src="file://{secret}"></iframe>'
        f'<iframe src="http://127.0.0.1:{port}/frame"></iframe><img src="img/cat.jpg"></body></html>'
    )
    caplog.set_level("DEBUG", logger="retrieval_pipeline.media.browser")
    try:
        items = list(items_of_file(folder / "page.html", IngestOptions(render_html=True), {}))
    finally:
        server.shutdown()
    blocked = {r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records if "blocked a request" in r.getMessage()}
    local = f"http://127.0.0.1:{port}"
    assert {f"{local}/fetch", f"{local}/img.png", f"{local}/frame"} <= blocked  # refused by the page's own router
    pages = [i for i in items if i.record.modality == "pdf-page"]
    assert len(pages) == 1 and "dugong" in pages[0].record.text and "SECRET" not in pages[0].record.text
    assert seen == []  # no request left the browser
    texts = [i.record.text for i in items if i.record.modality == "text"]
    assert texts and "dugong" not in " ".join(texts)  # the text items are the page as written: no script ran
    assert [i.record.member for i in items if i.record.modality == "image"] == ["image=img/cat.jpg"]
    # the page is rendered again from the cache for the reranker, and its words are highlighted on it
    record = Record.from_payload(pages[0].record.to_payload())
    assert record.to_input()["image"].size == pages[0].input["image"].size
    from retrieval_pipeline.media.documents import document_pdf

    assert page_highlights(document_pdf(record.source), 1, ["dugong"])[0]["term"] == "dugong"
    assert sorted(p.name for p in folder.rglob("*")) == ["cat.jpg", "img", "page.html"]  # nothing left beside it


# ----------------------------------------------------------------------------------------------------------------
# hostile folders (a tester's findings, each kept as a test)


def test_overlapping_zip_entries_are_refused(tmp_path):
    """One compressed stream named by many central-directory entries (a "flat" zip bomb): refused from the
    directory, before anything is inflated (Python 3.11.7's zipfile does not check this itself)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"n{i}.txt", b"a" * 1000)
    data = bytearray(buf.getvalue())
    records = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    first = int.from_bytes(data[records[0] + 42 : records[0] + 46], "little")
    for at in records[1:]:  # every entry's local header offset -> the first entry's
        data[at + 42 : at + 46] = first.to_bytes(4, "little")
    with pytest.raises(InputError, match="overlap"):
        list(containers.zip_members(bytes(data)))


def test_an_archive_skips_entries_of_types_not_read_without_inflating_them(tmp_path):
    path = write_zip(tmp_path / "a.zip", {"tool.exe": b"MZ" + bytes(5000), "../../up.txt": b"climbing note"})
    parts = list(items_of_file(path, IngestOptions(), {}))
    assert parts[0].skipped and parts[0].where.endswith("a.zip#entry=tool.exe")
    assert parts[1].record.member == "entry=up.txt" and parts[1].record.text == "climbing note"  # named safely


def test_page_images_are_image_files_beside_the_page_each_once_and_bounded(tmp_path, monkeypatch):
    from retrieval_pipeline.media import web

    folder = tmp_path / "site"
    (folder / ".hidden").mkdir(parents=True)
    (folder / ".hidden" / "secret.png").write_bytes((MEDIA / "chelsea.jpg").read_bytes())
    (folder / "notes.txt").write_text("API_KEY=sk-neighbour")
    (folder / "big.png").write_bytes((MEDIA / "rocket.jpg").read_bytes())
    shutil.copy(MEDIA / "chelsea.jpg", folder / "a#b.jpg")
    tags = "".join(
        f'<img src="{s}">'
        for s in (
            "a%23b.jpg",
            "./a%23b.jpg",
            "a%23b.jpg?1",
            "sub/../a%23b.jpg",
            ".hidden/secret.png",
            "notes.txt",
            "big.png",
        )
    )
    (folder / "page.html").write_text(f"<p>a page with a few pictures and some words</p>{tags}")
    monkeypatch.setattr(web, "MAX_PAGE_IMAGE_BYTES", (MEDIA / "rocket.jpg").stat().st_size - 1)
    parts = list(items_of_file(folder / "page.html", IngestOptions(), {}))
    images = [p.record.member for p in parts if getattr(p, "record", None) and p.record.modality == "image"]
    assert images == ["image=a%23b.jpg"]  # one item for four spellings; '#' escaped in the member path
    assert (
        Path(
            Record.from_payload(
                next(p for p in parts if getattr(p, "record", None) and p.record.member).record.to_payload()
            ).local_file()
        ).read_bytes()
        == (MEDIA / "chelsea.jpg").read_bytes()
    )
    failures = {p.where.rsplit("#", 1)[-1]: p.reason for p in parts if not hasattr(p, "record")}
    assert failures == {
        "image=.hidden/secret.png": "not an image file beside the page",
        "image=notes.txt": "not an image file beside the page",
        "image=big.png": f"image too large: {(MEDIA / 'rocket.jpg').stat().st_size} bytes (limit "
        f"{(MEDIA / 'rocket.jpg').stat().st_size - 1})",
    }
    texts = " ".join(p.record.text for p in parts if getattr(p, "record", None))
    assert "sk-neighbour" not in texts


def test_many_images_in_a_page_are_cut_at_the_limit_and_the_rest_reported(tmp_path):
    message = email.message.EmailMessage()
    message["Subject"] = "saved page"
    message.set_content("<html><body><p>Saved page with many pictures of the ibex.</p></body></html>", subtype="html")
    for i in range(70):
        message.add_attachment(PNG_1PX.encode(), maintype="image", subtype="png", filename=f"p{i}.png")
    raw = bytes(message).replace(b"multipart/mixed", b"multipart/related")
    (tmp_path / "page.mhtml").write_bytes(raw)
    parts = list(items_of_file(tmp_path / "page.mhtml", IngestOptions(), {}))
    skipped = [p for p in parts if getattr(p, "skipped", False)]
    assert len(skipped) == 1 and skipped[0].reason == "6 more images than the 64 read"
    assert (
        sum(1 for p in parts if getattr(p, "record", None) and p.record.member)
        + sum(1 for p in parts if not hasattr(p, "record") and not p.skipped)
        == 64
    )


def test_messy_mail_keeps_what_it_can_and_reports_the_rest(tmp_path):
    # a header the strict address parser chokes on: the mail is read all the same
    mail = write_mail(tmp_path / "bad-header.eml", {"notes.txt": b"attached ibex notes"})
    mail.write_bytes(mail.read_bytes().replace(b"To: team@example.com", b"To: a@"))
    parts = list(items_of_file(mail, IngestOptions(), {}))
    assert parts[0].record.metadata["to"] == "a@" and parts[1].record.text == "attached ibex notes"
    # an attachment inside a nested multipart/mixed is found (not an empty "attachment-1")
    outer = email.message.EmailMessage()
    outer["Subject"], outer["From"] = "nested", "a@example.com"
    inner = email.message.EmailMessage()
    inner.set_content("inner text")
    inner.add_attachment(b"inner attachment about the tapir", maintype="text", subtype="plain", filename="inner.txt")
    outer.set_content("outer body")
    outer.add_attachment(inner)
    outer.get_payload()[1].replace_header("Content-Type", inner["Content-Type"])
    outer.get_payload()[1].set_payload(inner.get_payload())
    (tmp_path / "nested.eml").write_bytes(bytes(outer))
    got = {p.record.member: p.record.text for p in items_of_file(tmp_path / "nested.eml", IngestOptions(), {})}
    assert got == {
        None: "From: a@example.com\nSubject: nested\n\nouter body",
        "attachment=attachment-1.txt": "inner text\n",  # an unnamed part is read by its type
        "attachment=inner.txt": "inner attachment about the tapir",
    }
    # a broken MIME structure that hides every part is reported, not silently empty
    broken = tmp_path / "broken.eml"
    broken.write_bytes(
        b"From: a@example.com\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=NOPE\r\n\r\n"
        b"--OTHER\r\nContent-Type: text/plain\r\n\r\nlost text\r\n--OTHER--\r\n"
    )
    reasons = [p.reason for p in items_of_file(broken, IngestOptions(), {}) if not hasattr(p, "record")]
    assert reasons and "malformed MIME structure" in reasons[0]
