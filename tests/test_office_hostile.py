"""Hostile office documents (security review of the LibreOffice conversion): nothing is fetched for a document, no
local file is read into it, a zip bomb is refused before LibreOffice starts, and LibreOffice runs under a memory
limit. Every document is built here (zipfile, lxml, python-docx); a local HTTP server records what is asked of it,
and a local "secret" PDF stands for a file the document must not reach."""

from __future__ import annotations

import http.server
import io
import stat
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from retrieval_pipeline.errors import InputError
from retrieval_pipeline.ingest import IngestOptions
from retrieval_pipeline.ingest.items import items_of_file
from retrieval_pipeline.ingest.report import ItemFailure
from retrieval_pipeline.media import office
from retrieval_pipeline.testing import make_text_pdf

needs_libreoffice = pytest.mark.skipif(office.soffice() is None, reason="LibreOffice is not installed")

SECRET = "TOP SECRET"
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6364f8cff01f0002"
    "870180eb47ba920000000049454e44ae426082"
)
ODF = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "style": "urn:oasis:names:tc:opendocument:xmlns:style:1.0",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
    "xlink": "http://www.w3.org/1999/xlink",
    "xforms": "http://www.w3.org/2002/xforms",
}
NSDECLS = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in ODF.items())
TEXT_MIME = "application/vnd.oasis.opendocument.text"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


# ----------------------------------------------------------------------------------------------------------------
# the world outside the document: a server that records requests, a secret file


class _Recorder(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG_1PX)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(PNG_1PX)

    do_GET = do_HEAD = do_OPTIONS = do_POST = do_PROPFIND = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def url(server):
    server.seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("secret")
    (folder / "secret.txt").write_text(f"{SECRET} text file 4242\n")
    return make_text_pdf(folder / "secret.pdf", [f"{SECRET} PDF 4242 confidential"], bars=False)


# ----------------------------------------------------------------------------------------------------------------
# documents


def write_odf(path: Path, body: str, *, automatic_styles: str = "", mimetype: str = TEXT_MIME, extra=()) -> Path:
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {NSDECLS} office:version="1.2">'
        f"<office:automatic-styles>{automatic_styles}</office:automatic-styles>"
        f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
        f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{mimetype}"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr(zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED)
        package.writestr("content.xml", content)
        for name, data in extra:
            package.writestr(name, data)
        package.writestr("META-INF/manifest.xml", manifest)
    return path


def frame(inner: str, width: str = "12cm", height: str = "8cm") -> str:
    return (
        f'<text:p><draw:frame svg:width="{width}" svg:height="{height}" text:anchor-type="as-char">{inner}'
        "</draw:frame></text:p>"
    )


def hostile_odt(path: Path, secret: Path, url: str) -> Path:
    """Links to the secret PDF and to the server from every kind of element that LibreOffice loads."""
    image = '<draw:image xlink:href="{}" xlink:type="simple" xlink:show="embed" xlink:actuate="onLoad"/>'
    background = (
        '<style:style style:name="P1" style:family="paragraph"><style:paragraph-properties>'
        f'<style:background-image xlink:href="{url}/background.png" xlink:type="simple" xlink:actuate="onLoad"/>'
        "</style:paragraph-properties></style:style>"
    )
    body = (
        f'<xforms:model id="m"><xforms:instance src="{url}/xforms.xml"/></xforms:model>'
        '<text:p text:style-name="P1">Visible ODT text: the quokka report.</text:p>'
        + frame(image.format(secret.as_uri()))
        + frame(image.format(f"{url}/image.png"), "3cm", "2cm")
        + frame(image.format("../" * 12 + str(secret).lstrip("/")), "12cm", "8cm")
        + frame(f'<draw:object xlink:href="{url}/object.odt" xlink:type="simple" xlink:show="embed"/>', "6cm", "3cm")
        + '<text:section text:name="S1"><text:section-source xlink:href="'
        + (secret.parent / "secret.txt").as_uri()
        + '" text:filter-name="Text"/><text:p>stale section</text:p></text:section>'
        '<text:p>a hyperlink: <text:a xlink:type="simple" xlink:href="https://example.com/">example link</text:a>'
        "</text:p>"
    )
    return write_odf(path, body, automatic_styles=background)


DRAWING = (
    '<w:p xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
    f'xmlns:r="{REL}" '
    'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
    'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
    'xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture"><w:r><w:drawing><wp:inline>'
    '<wp:extent cx="5000000" cy="6000000"/><wp:docPr id="{n}" name="p{n}"/><a:graphic>'
    '<a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture"><pic:pic>'
    '<pic:nvPicPr><pic:cNvPr id="{n}" name="p{n}"/><pic:cNvPicPr/></pic:nvPicPr>'
    '<pic:blipFill><a:blip r:link="{rid}"/><a:stretch><a:fillRect/></a:stretch></pic:blipFill>'
    '<pic:spPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="5000000" cy="6000000"/></a:xfrm><a:prstGeom prst="rect"/>'
    "</pic:spPr></pic:pic></a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>"
)


def hostile_docx(path: Path, secret: Path, url: str) -> Path:
    """Pictures linked (``r:link``) to the secret PDF and to the server, through image relationships and through
    hyperlink relationships (LibreOffice loads a picture from whatever relationship it names)."""
    import docx
    from docx.oxml import parse_xml

    document = docx.Document()
    document.add_paragraph("Visible DOCX text: the pangolin memo.")
    links = [
        (f"{REL}/image", secret.as_uri()),
        (f"{REL}/image", f"{url}/docx-image.png"),
        (f"{REL}/hyperlink", secret.as_uri()),
        (f"{REL}/hyperlink", f"{url}/docx-hyperlink-as-image.png"),
    ]
    body = document.element.body
    for n, (kind, target) in enumerate(links, start=1):
        rid = document.part.relate_to(target, kind, is_external=True)
        body.insert(len(body) - 1, parse_xml(DRAWING.replace("{n}", str(n)).replace("{rid}", rid)))
    document.add_paragraph("The end of the memo.")
    document.save(path)
    return path


def pages_text(pdf: bytes) -> str:
    import pypdfium2

    document = pypdfium2.PdfDocument(pdf)
    try:
        return "\n".join(document[i].get_textpage().get_text_range() for i in range(len(document)))
    finally:
        document.close()


def indexed_text(path: Path) -> str:
    items = list(items_of_file(path, IngestOptions(), {}))
    failures = [item for item in items if isinstance(item, ItemFailure)]
    assert not failures, failures
    return "\n".join(item.record.text or "" for item in items)


# ----------------------------------------------------------------------------------------------------------------
# nothing fetched, no local file read into the document


@needs_libreoffice
@pytest.mark.parametrize("kind", ["odt", "docx"])
def test_linked_files_and_urls_are_neither_read_nor_fetched(kind, tmp_path, server, url, secret):
    make = hostile_odt if kind == "odt" else hostile_docx
    path = make(tmp_path / f"hostile.{kind}", secret, url)
    visible = "the quokka report" if kind == "odt" else "the pangolin memo"
    converted = pages_text(office.convert_to_pdf(path.read_bytes(), f".{kind}"))
    indexed = indexed_text(path)  # the indexer's way: the cached conversion, its pages and their text
    for text in (converted, indexed):
        assert visible in text
        assert SECRET not in text
    assert server.seen == []


@needs_libreoffice
def test_a_binary_doc_with_linked_pictures_reads_and_fetches_nothing(tmp_path, server, url, secret):
    """A .doc cannot be rewritten: the profile's BlockUntrustedRefererLinks keeps the secret out, the network
    namespace keeps the request from being made (where the system allows one)."""
    image = '<draw:image xlink:href="{}" xlink:type="simple" xlink:show="embed" xlink:actuate="onLoad"/>'
    body = (
        "<text:p>Visible DOC text: the serval file.</text:p>"
        + frame(image.format(secret.as_uri()))
        + frame(image.format(f"{url}/doc-image.png"), "3cm", "2cm")
    )
    source = write_odf(tmp_path / "links.odt", body)
    made = subprocess.run(  # LibreOffice itself writes the .doc (links kept as links)
        [office.soffice(), "--headless", "--norestore", f"-env:UserInstallation={(tmp_path / 'p').as_uri()}"]
        + ["--convert-to", "doc", "--outdir", str(tmp_path / "doc"), str(source)],
        capture_output=True,
        timeout=120,
    )
    doc = tmp_path / "doc" / "links.doc"
    assert doc.is_file(), made.stderr
    assert secret.as_uri().encode("utf-16-le") in doc.read_bytes() or secret.as_uri().encode() in doc.read_bytes()
    server.seen.clear()  # what making it fetched
    text = pages_text(office.convert_to_pdf(doc.read_bytes(), ".doc"))
    assert "the serval file" in text and SECRET not in text
    if office._isolation():
        assert server.seen == []


def test_an_html_or_xml_file_named_xls_is_refused(tmp_path, server, url, secret):
    flat = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document {NSDECLS} office:version="1.2" '
        f'office:mimetype="{TEXT_MIME}"><office:body><office:text><text:p>FLAT</text:p>'
        + frame(f'<draw:image xlink:href="{secret.as_uri()}"/>')
        + frame(f'<draw:image xlink:href="{url}/flat.png"/>')
        + "</office:text></office:body></office:document>"
    ).encode()
    html = f'<html><body><table><tr><td>cell</td></tr></table><img src="{url}/html.png"></body></html>'.encode()
    for data in (flat, html):
        with pytest.raises(InputError, match="an HTML or XML file named .xls"):
            office.convert_to_pdf(data, ".xls")
    assert server.seen == []


@needs_libreoffice
def test_dde_connections_are_removed_and_their_last_value_kept(tmp_path, secret):
    topic = str(secret.parent / "secret.txt")
    body = (
        '<text:dde-connection-decls><text:dde-connection-decl office:name="L1" office:dde-application="soffice" '
        f'office:dde-topic="{topic}" office:dde-item="" office:automatic-update="true"/></text:dde-connection-decls>'
        '<text:p>DDE field: <text:dde-connection text:connection-name="L1">stale dde value 77</text:dde-connection>'
        " end.</text:p>"
        '<text:section text:name="D"><office:dde-source office:name="D" office:dde-application="soffice" '
        f'office:dde-topic="{topic}" office:dde-item="" office:automatic-update="true"/>'
        "<text:p>stale dde section</text:p></text:section>"
    )
    path = write_odf(tmp_path / "dde.odt", body)
    started = time.perf_counter()
    text = pages_text(office.convert_to_pdf(path.read_bytes(), ".odt", timeout=60))
    assert time.perf_counter() - started < 30
    assert "stale dde value 77" in text and "stale dde section" in text and SECRET not in text


@needs_libreoffice
def test_each_defence_alone_keeps_the_document_in(tmp_path, monkeypatch, server, url, secret):
    """Defence in depth: the rewritten package alone (no namespace, no profile setting), and the network namespace
    alone (the package as it came), each keep what they are for."""
    odt = hostile_odt(tmp_path / "hostile.odt", secret, url).read_bytes()
    docx_ = hostile_docx(tmp_path / "hostile.docx", secret, url).read_bytes()
    isolation = office._isolation()
    monkeypatch.setattr(office, "PROFILE_SETTINGS", ())
    monkeypatch.setattr(office, "_PROFILES", office._Profiles())  # fresh profiles, without the setting
    monkeypatch.setattr(office, "_ISOLATION", [[]])
    for data, suffix in ((odt, ".odt"), (docx_, ".docx")):
        assert SECRET not in pages_text(office.convert_to_pdf(data, suffix))
    assert server.seen == []
    if not isolation:
        pytest.skip("no network namespace on this system (unshare)")
    monkeypatch.setattr(office, "_ISOLATION", [isolation])
    monkeypatch.setattr(office, "safe_package", lambda data: data)
    office.convert_to_pdf(odt, ".odt")
    assert server.seen == []


# ----------------------------------------------------------------------------------------------------------------
# zip bombs, memory


def _docx_with(entries: dict[str, bytes | int]) -> bytes:
    """A python-docx document plus entries: bytes as they are, an int as that many inflated bytes of XML."""
    import docx

    base = io.BytesIO()
    document = docx.Document()
    document.add_paragraph("bomb")
    document.save(base)
    out = io.BytesIO()
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bomb:
        for info in source.infolist():
            if info.filename not in entries:
                bomb.writestr(info.filename, source.read(info.filename))
        for name, content in entries.items():
            if isinstance(content, bytes):
                bomb.writestr(name, content)
                continue
            chunk = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>" * 30_000
            with bomb.open(name, "w", force_zip64=True) as entry:
                for _ in range(content // len(chunk)):
                    entry.write(chunk)
    return out.getvalue()


@pytest.mark.parametrize(
    "entries, reason",
    [
        ({"word/document.xml": 300 * 1024 * 1024}, "inflates to"),
        ({"word/media/zeros.bin": bytes(3 * 1024 * 1024)}, "inflates [0-9]+ times"),
        ({f"word/media/e{i}.xml": b"" for i in range(10_001)}, "10[0-9]{3} entries"),
    ],
    ids=["inflated", "ratio", "entries"],
)
def test_a_zip_bomb_is_refused_before_libreoffice_starts(entries, reason, tmp_path, monkeypatch):
    fake = tmp_path / "soffice"
    started = tmp_path / "started"
    fake.write_text(f"#!/bin/sh\ntouch {started}\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("QWEN3VL_RAG_SOFFICE", str(fake))
    data = _docx_with(entries)
    assert len(data) < 4 * 1024 * 1024
    clock = time.perf_counter()
    with pytest.raises(InputError, match=f"zip bomb: .*{reason}"):
        office.convert_to_pdf(data, ".docx", timeout=10)
    assert time.perf_counter() - clock < 2
    assert not started.exists()


@needs_libreoffice
def test_libreoffice_runs_under_a_memory_limit(tmp_path, monkeypatch):
    import docx

    document = docx.Document()
    document.add_paragraph(f"memory {time.time_ns()}")
    document.save(tmp_path / "small.docx")
    monkeypatch.setenv("QWEN3VL_RAG_OFFICE_MEMORY_MB", "300")  # LibreOffice needs about 0.5 GiB to start
    # a crash from a failed allocation says so; a load that fails gracefully under the limit names the limit
    with pytest.raises(InputError, match=r"ran out of memory \(limit 300 MiB|with at most 300 MiB of memory"):
        office.convert_to_pdf((tmp_path / "small.docx").read_bytes(), ".docx", timeout=60)


# ----------------------------------------------------------------------------------------------------------------
# the rewritten package (no LibreOffice)


def test_the_rewritten_package_keeps_everything_but_the_links(tmp_path, secret):
    picture = bytes(range(256)) * 64
    path = hostile_odt(tmp_path / "a.odt", secret, "http://127.0.0.1:9")
    with zipfile.ZipFile(path, "a") as package:
        package.writestr("Pictures/p.png", picture, compress_type=zipfile.ZIP_STORED)
        package.writestr(
            "styles.xml", f'<office:document-styles {NSDECLS}><x:y xmlns:x="urn:x"/></office:document-styles>'
        )
    rewritten = zipfile.ZipFile(io.BytesIO(office.safe_package(path.read_bytes())))
    original = zipfile.ZipFile(path)
    assert rewritten.namelist() == original.namelist() and rewritten.namelist()[0] == "mimetype"
    assert rewritten.getinfo("mimetype").compress_type == zipfile.ZIP_STORED
    for name in ("mimetype", "META-INF/manifest.xml", "Pictures/p.png", "styles.xml"):
        assert rewritten.read(name) == original.read(name)
    content = etree.fromstring(rewritten.read("content.xml"))
    hrefs = {
        etree.QName(el).localname: el.get(f"{{{ODF['xlink']}}}href")
        for el in content.iter()
        if el.get(f"{{{ODF['xlink']}}}href")
    }
    assert hrefs == {"a": "https://example.com/"}  # the hyperlink only
    assert not content.findall(".//{*}section-source") and not content.xpath("//@src")
    assert "Visible ODT text" in "".join(content.itertext())


def test_every_external_relationship_is_neutralised(tmp_path, secret):
    data = hostile_docx(tmp_path / "a.docx", secret, "http://127.0.0.1:9").read_bytes()
    rewritten = zipfile.ZipFile(io.BytesIO(office.safe_package(data)))
    rels = etree.fromstring(rewritten.read("word/_rels/document.xml.rels"))
    targets = [(rel.get("Target"), rel.get("TargetMode")) for rel in rels]
    assert not [t for t in targets if t[1] is not None or "://" in t[0]], targets
    assert sum(t[0] == "external-link-removed" for t in targets) == 4


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16"])
def test_links_in_a_utf16_part_are_found_too(encoding):
    content = (
        f'<?xml version="1.0" encoding="UTF-16"?><office:document-content {NSDECLS}><office:body><office:text>'
        + frame('<draw:image xlink:href="file:///etc/passwd"/>')
        + "</office:text></office:body></office:document-content>"
    )
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as writer:
        writer.writestr("mimetype", TEXT_MIME)
        writer.writestr("content.xml", content.encode(encoding))
    rewritten = zipfile.ZipFile(io.BytesIO(office.safe_package(package.getvalue()))).read("content.xml")
    assert b"passwd" not in rewritten and b"draw:image" in rewritten


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"PK\x03\x04 not a package", "not a readable ZIP package"),
        ("duplicate", "two entries named 'content.xml'"),
        ("entity", "declares XML entities"),
    ],
)
def test_packages_that_cannot_be_checked_are_refused(data, reason, tmp_path):
    if data == "duplicate":
        path = write_odf(tmp_path / "a.odt", "<text:p>one</text:p>")
        with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as package:
            package.writestr("content.xml", "<x/>")
        data = path.read_bytes()
    elif data == "entity":
        xml = f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "file:///etc/passwd">]><d xmlns:xlink="{ODF["xlink"]}"/>'
        data = write_odf(tmp_path / "b.odt", "", extra=[("styles.xml", xml)]).read_bytes()
    with pytest.raises(InputError, match=reason):
        office.safe_package(data)


def test_the_same_bytes_under_two_extensions_are_two_conversions(monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3VL_RAG_CACHE", str(tmp_path))
    monkeypatch.setattr(office, "convert_to_pdf", lambda data, suffix: f"%PDF-1.4 {suffix}".encode())
    data = b"{\\rtf1 the same bytes}"
    rtf, doc = office.converted_pdf(data, ".rtf"), office.converted_pdf(data, ".DOC")
    assert rtf != doc and rtf.read_bytes() == b"%PDF-1.4 .rtf" and doc.read_bytes() == b"%PDF-1.4 .doc"
