"""``/v1/items/{id}``, its thumbnail and its media: only stored items, by point id, with Range for video and a
placeholder when a source is gone (the search page's data; the page itself is issue 17's next part)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import httpx
import pytest
from conftest import LiveServer
from helpers.cli import CORPUS
from PIL import Image

from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.serving import ServerConfig, create_app
from retrieval_pipeline.store import EdgeStore

TOKEN = "items-token"


@pytest.fixture(scope="module")
def served(embedder, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    for name in ("chelsea.jpg", "annual_report.pdf", "moving_square.mp4", "notes.md", "rocket.jpg", "report_page.png"):
        shutil.copy(CORPUS / name, corpus / name)
    store = EdgeStore(tmp_path_factory.mktemp("db"), "docs")
    Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    (corpus / "broken.pdf").write_bytes((CORPUS / "annual_report.pdf").read_bytes() + b"\n%another copy\n")
    Image.new("RGB", (40, 30), (200, 30, 90)).save(corpus / "linked.png")
    Indexer(embedder, store).index_paths([corpus / "broken.pdf", corpus / "linked.png"], show_progress_bar=False)
    (corpus / "rocket.jpg").unlink()  # a source that can no longer be read
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage now")  # corrupt since indexing
    (corpus / "linked.png").unlink()
    (corpus / "linked.png").symlink_to("/etc/passwd")  # a link out of the folder swapped in since indexing
    (corpus / "report_page.png").write_bytes(_bomb_png(40_000, 40_000))  # swapped for a decompression bomb
    by_kind = {}
    for point in store.scroll(with_vectors=False):
        name = point.payload["source"].rsplit("/", 1)[-1]
        by_kind.setdefault(name, point.id)
    by_kind["store"] = store
    app = create_app(
        pipeline=RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None),
        config=ServerConfig(api_key=TOKEN),
    )
    with (
        LiveServer(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client,
    ):
        yield client, by_kind
    store.close()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (decoding it would need gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_thumbnails_for_every_visual_modality(served):
    client, ids = served
    for name in ("chelsea.jpg", "annual_report.pdf", "moving_square.mp4"):
        r = client.get(f"/v1/items/{ids[name]}/thumbnail", params={"size": 200})
        assert r.headers["content-type"] == "image/jpeg" and "x-placeholder" not in r.headers, (name, r.headers)
        image = _image(r)
        assert 0 < max(image.size) <= 200, (name, image.size)
    meta = client.get(f"/v1/items/{ids['moving_square.mp4']}").json()
    assert meta["modality"] == "video" and meta["readable"] and meta["thumbnail"].endswith("/thumbnail")
    page = client.get(f"/v1/items/{ids['annual_report.pdf']}/media")
    assert page.headers["content-type"] == "image/png" and _image(page).size[0] > 200


def test_video_media_answers_range_requests(served):
    client, ids = served
    whole = client.get(f"/v1/items/{ids['moving_square.mp4']}/media")
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/v1/items/{ids['moving_square.mp4']}/media", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == whole.content[10:110]
    assert part.headers["content-range"].startswith("bytes 10-109/")
    size = int(part.headers["content-range"].rsplit("/", 1)[1])
    for header, status in (("bytes=abc", 400), ("items=0-10", 400), (f"bytes={size + 10}-", 416)):
        bad = client.get(f"/v1/items/{ids['moving_square.mp4']}/media", headers={"Range": header})
        assert bad.status_code == status and bad.json()["error"]["param"] == "Range", (header, bad.text)
        if status == 416:
            assert bad.headers["content-range"] == f"bytes */{size}"


def test_text_gone_sources_and_bad_ids(served):
    client, ids = served
    text = client.get(f"/v1/items/{ids['notes.md']}/media")
    assert text.headers["content-type"].startswith("text/plain") and "revenue" in text.text.lower()
    gone = client.get(f"/v1/items/{ids['rocket.jpg']}/thumbnail")
    assert gone.status_code == 200 and "no longer be read" in gone.headers["x-placeholder"]
    assert _image(gone).size[0] > 0
    assert client.get(f"/v1/items/{ids['rocket.jpg']}").json()["readable"] is False
    bomb = client.get(f"/v1/items/{ids['report_page.png']}/thumbnail")  # refused before decoding, not a 500
    assert bomb.status_code == 200 and "changed since it was indexed" in bomb.headers["x-placeholder"]
    missing = client.get("/v1/items/00000000-0000-0000-0000-000000000000/thumbnail")
    assert missing.status_code == 404
    bad = client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/media")
    assert bad.status_code in (400, 404) and "root:" not in bad.text
    assert client.get("/v1/items/not-a-uuid").status_code == 400
    anonymous = httpx.get(f"{client.base_url}/v1/items/{ids['chelsea.jpg']}/thumbnail")
    assert anonymous.status_code == 401


def test_swapped_files_concurrency_and_no_server_paths(served):
    client, ids = served
    link = client.get(f"/v1/items/{ids['linked.png']}/media")
    assert "root:" not in link.text and "link out of its folder" in link.headers["x-placeholder"]
    assert client.get(f"/v1/items/{ids['linked.png']}").json()["readable"] is False
    broken = client.get(f"/v1/items/{ids['broken.pdf']}/thumbnail")
    reason = broken.headers["x-placeholder"]
    assert "changed since it was indexed" in reason and "/" not in reason  # no server path in the reason
    # pdfium is not thread-safe: many renders at once must neither crash the server nor fail
    import concurrent.futures

    pdf_ids = [i for name, i in ids.items() if name == "annual_report.pdf"] * 12
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda i: client.get(f"/v1/items/{i}/thumbnail").status_code, pdf_ids))
    assert codes == [200] * 12
    assert client.get("/health").status_code == 200


def test_reranking_skips_a_corrupt_pdf(served, embedder, reranker):
    from retrieval_pipeline.retriever import TwoStageRetriever

    _, ids = served
    retriever = TwoStageRetriever(embedder, ids["store"], reranker, candidates=20)
    hits = retriever.retrieve("revenue", top_k=20)  # the corrupt PDF is among the candidates
    broken = [h for h in hits if h.source.endswith("broken.pdf")]
    assert broken and all(h.rerank_score is None for h in broken) and hits[0].rerank_score is not None


def test_a_parent_folder_swapped_for_a_link_serves_nothing_outside(embedder, tmp_path):
    """After indexing, the folder holding an item is replaced by a link to another folder with a file of the same
    name: media and thumbnail are placeholders (the file is not the one indexed), never the other file."""
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (corpus / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(CORPUS / "chelsea.jpg", corpus / "sub" / "photo.jpg")
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    (point,) = store.scroll()
    Image.new("RGB", (64, 48), (0, 255, 0)).save(elsewhere / "photo.jpg")  # "secret" content outside the corpus
    shutil.rmtree(corpus / "sub")
    (corpus / "sub").symlink_to(elsewhere)
    rag = RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None)
    app = create_app(pipeline=rag, config=ServerConfig())
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for what in ("media", "thumbnail"):
            r = client.get(f"/v1/items/{point.id}/{what}")
            assert r.status_code == 200 and "changed since it was indexed" in r.headers["x-placeholder"]
            assert (0, 255, 0) not in _image(r).convert("RGB").getdata()  # not the file outside
    store.close()


def test_media_of_a_large_image_is_bounded_and_encoded_once(embedder, tmp_path):
    from retrieval_pipeline.media import previews
    from retrieval_pipeline.serving.routes import items as items_route

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    Image.new("RGB", (6000, 4000), (30, 90, 200)).save(corpus / "big.jpg", quality=60)  # 24 M pixels
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    (point,) = store.scroll()
    rag = RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None)
    with LiveServer(create_app(pipeline=rag, config=ServerConfig())) as url, httpx.Client(base_url=url) as client:
        first = client.get(f"/v1/items/{point.id}/media")
        shown = _image(first)
        assert first.headers["content-type"] == "image/jpeg"
        assert shown.size[0] * shown.size[1] <= previews.MEDIA_PIXELS and shown.size[0] / shown.size[1] == 1.5
        cached = [k for k in items_route._ENCODED.items if k[0].endswith("big.jpg")]
        assert len(cached) == 1
        assert client.get(f"/v1/items/{point.id}/media").content == first.content  # from the cache
    store.close()
