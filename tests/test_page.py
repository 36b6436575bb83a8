"""The search page at ``/``, driven in headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) with
Playwright, against a real ``qwen3vl-rag serve`` process on the tiny checkpoint with a bearer token."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServeProcess
from helpers.cli import CORPUS, cli

from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.store import EdgeStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
]
TOKEN = "page-token"
WATCHED: dict[str, Path] = {}  # the served collection follows this folder (serve --watch)
EVIL_NAME = "<img src=x onerror=window.__pwned=1>.txt"
EVIL_TEXT = '<script>window.__pwned=2</script><img src=x onerror="window.__pwned=3"> spare valve XK-9 details'


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    corpus = tmp_path_factory.mktemp("corpus")
    for name in ("chelsea.jpg", "annual_report.pdf", "moving_square.mp4", "notes.md"):
        shutil.copy(CORPUS / name, corpus / name)
    (corpus / EVIL_NAME).write_text(EVIL_TEXT)
    db = tmp_path_factory.mktemp("db")
    env = {
        "QWEN3VL_RAG_EMBEDDING_MODEL": str(Path(__file__).parent / "fixtures" / "parity" / "tiny-qwen3vl"),
        "QWEN3VL_RAG_DTYPE": "float32",
    }
    run = cli("index", str(corpus), "--image-tokens", "64", env=env, db=db)
    assert run.returncode == 0, run.stderr
    other = tmp_path_factory.mktemp("other")
    (other / "harbour.md").write_text("The lighthouse keeper logs every ship that enters the harbour at night.")
    store = EdgeStore(db, "other")  # a second collection of the same database (in this process: no model load)
    assert Indexer(embedder, store).index_paths([other], show_progress_bar=False).indexed == 1
    store.close()
    WATCHED["corpus"] = corpus
    with ServeProcess("--token", TOKEN, "--watch", str(corpus), "--settle", "0.3", db=db) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    page.errors = errors
    yield page
    context.close()


def _wait(page, script: str, arg=None, timeout: float = 30.0):
    """Poll ``script`` until it is truthy (Playwright's wait_for_function evaluates strings, which the page's CSP
    forbids -- as it should; page.evaluate runs through the debugger protocol)."""
    deadline = time.time() + timeout
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {script}")
        time.sleep(0.1)


def _login(page):
    page.fill("#query", "revenue chart")
    page.click("#search-button")
    page.wait_for_selector("#token-form:not([hidden])")
    assert "access token" in page.text_content("#error")
    page.fill("#token", TOKEN)
    page.click("#token-form button")


def _search(page, query: str, rerank: bool = True):
    page.fill("#query", query)
    page.set_checked("#rerank", rerank)
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    return page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")


def test_page_shell_is_public_with_a_strict_policy_and_data_is_not(server):
    shell = httpx.get(server)
    assert shell.status_code == 200 and "default-src 'none'" in shell.headers["content-security-policy"]
    assert "script-src 'self'" in shell.headers["content-security-policy"] and "unsafe" not in shell.text
    assert httpx.get(f"{server}/static/app.js").status_code == 200
    for path in ("/static/../../etc/passwd", "/static/..%2F..%2Fetc%2Fpasswd", "/static/page.py"):
        r = httpx.get(f"{server}{path}")
        assert r.status_code in (401, 404) and "root:" not in r.text, path  # only the page's three files
    assert httpx.post(f"{server}/v1/search", json={"query": "x"}).status_code == 401


def test_search_thumbnails_rerank_and_viewer(page):
    _login(page)
    ids = _search(page, "revenue chart")
    # a thumbnail actually loaded for an image, a PDF page and a video segment
    for modality in ("image", "pdf-page", "video"):
        _wait(
            page,
            """m => [...document.querySelectorAll('#results .card')].some(c =>
                 c.querySelector('.badge + .badge').textContent === m &&
                 c.querySelector('img.thumb') && c.querySelector('img.thumb').naturalWidth > 0)""",
            modality,
        )
    assert page.locator("#results .card .chunk").count() >= 1  # text shows its chunk
    stage_one = _search(page, "revenue chart", rerank=False)
    assert sorted(stage_one) == sorted(ids) and stage_one != ids  # the reranker reordered what is shown
    _search(page, "revenue chart", rerank=True)
    moved = page.eval_on_selector_all("#results .rank", "els => els.map(e => e.textContent)")
    assert any("\u2192" in m and m.split()[1] != m.split()[-1] for m in moved)  # "rank a -> b"
    page.click("#results .card >> nth=0")
    page.wait_for_selector("#viewer[open] #viewer-body :is(img, video, pre)")
    page.click("#viewer-close")
    assert not page.errors, page.errors
    if os.environ.get("QWEN3VL_RAG_SCREENSHOT"):
        page.screenshot(path=os.environ["QWEN3VL_RAG_SCREENSHOT"], full_page=True)


def test_image_query_and_the_servers_error_on_the_page(page, tmp_path):
    _login(page)
    page.set_input_files("#image", str(CORPUS / "chelsea.jpg"))
    _wait(page, "() => document.getElementById('image-name').textContent === 'chelsea.jpg'")
    page.fill("#query", "")
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    assert page.is_hidden("#error")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    page.set_input_files("#image", str(broken))
    _wait(page, "() => document.getElementById('image-name').textContent === 'broken.png'")
    page.click("#search-button")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert "image" in message.lower() and "401" not in message  # the server's own explanation
    boxes = page.query_selector_all("input[name=modality]")
    for box in boxes:
        box.uncheck()
    page.fill("#query", "a cat")
    page.click("#search-button")  # every kind unticked: said on the page, nothing sent
    _wait(page, "() => document.getElementById('error').textContent.includes('tick at least one kind')")
    for box in boxes:
        box.check()


def test_ask_streams_into_the_page_and_citations_link_to_cards(page):
    _login(page)
    page.evaluate(
        """() => { window.__lengths = [];
             new MutationObserver(() => {
               if (document.getElementById('answer-panel').dataset.done !== 'true')
                 window.__lengths.push(document.getElementById('answer').textContent.length);
             }).observe(document.getElementById('answer'), {childList: true, subtree: true, characterData: true}); }"""
    )
    page.fill("#query", "What does the revenue chart show?")
    page.click("#ask-button")
    page.wait_for_selector("#answer-panel[data-done=true]", timeout=120_000)
    lengths = page.evaluate("window.__lengths")
    assert len({n for n in lengths if n > 0}) >= 2, lengths  # text arrived in pieces before the end
    assert page.locator("#results .card").count() >= 1  # the sources the answer was given, as cards
    # the tiny random model cites nothing: the page's own renderer is given the streamed text plus a citation
    page.evaluate(
        "citedText(document.getElementById('answer'), document.getElementById('answer').textContent + ' [1]')"
    )
    page.click("#answer a.cite")
    assert page.evaluate("document.activeElement.id") == "card-1"
    assert "cited" in page.get_attribute("#card-1", "class")


def test_untrusted_text_and_file_names_render_as_text(page):
    _login(page)
    _search(page, "spare valve XK-9", rerank=False)
    _wait(
        page, "t => [...document.querySelectorAll('#results .chunk')].some(c => c.textContent.includes(t))", "<script>"
    )
    sources = page.eval_on_selector_all("#results .source", "els => els.map(e => e.textContent)")
    assert any(EVIL_NAME in s for s in sources)
    page.click("#results .card:has(.chunk) >> nth=0")
    page.wait_for_selector("#viewer[open] pre")
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], script:not([src])').length") == 0
    assert not page.errors, page.errors


def test_phone_width_and_keyboard(page):
    page.set_viewport_size({"width": 390, "height": 844})
    _login(page)
    _search(page, "revenue chart", rerank=False)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing runs off the side
    page.focus("#card-1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open] #viewer-body :is(img, video, pre)")
    page.keyboard.press("Escape")  # the dialog closes from the keyboard too
    assert page.evaluate("!document.getElementById('viewer').open")


BOXES_IN_IMAGE = """selector => {
    // each highlight box's rect relative to its image's rect, as fractions of the image (0..1 when inside it)
    const root = document.querySelector(selector);
    const img = root.querySelector('.marks img');
    if (!img || !img.complete || !img.naturalWidth) return null;
    const r = img.getBoundingClientRect();
    return [...root.querySelectorAll('.marks .hl')].map(b => {
        const q = b.getBoundingClientRect();
        return [(q.left - r.left) / r.width, (q.top - r.top) / r.height, (q.right - r.left) / r.width,
                (q.bottom - r.top) / r.height];
    });
}"""


def _same_boxes(shown: list, expected: list, tolerance: float = 0.02) -> None:
    assert len(shown) == len(expected) >= 1, (shown, expected)
    for box in shown:
        assert all(-tolerance <= v <= 1 + tolerance for v in box), box  # within the page's image
        assert any(all(abs(a - b) <= tolerance for a, b in zip(box, want)) for want in expected), (box, expected)


def test_page_hits_show_the_query_words_boxes_over_the_page_and_a_snippet(page, server):
    # annual_report.pdf has a text layer; "quarterly" is on its first page only
    page.evaluate(
        """() => { window.__csp = [];
             document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective)); }"""
    )
    _login(page)
    for box in page.query_selector_all("input[name=modality]"):
        box.set_checked(box.get_attribute("value") == "pdf-page")
    ids = _search(page, "quarterly", rerank=False)
    api = httpx.post(
        f"{server}/v1/search",
        json={"query": "quarterly", "top_k": 8, "rerank": False, "filters": {"modality": ["pdf-page"]}},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    ).json()["results"]
    hits = {h["id"]: h for h in api}
    assert sorted(hits) == sorted(ids)
    found = [h for h in api if h.get("highlights")]
    assert len(found) == 1 and found[0]["page"] == 1, api
    hit = found[0]
    expected = [b for h in hit["highlights"] for b in h["boxes"]]
    # the card: the boxes over the thumbnail, where the API says the word is
    card = f'#results .card[data-id="{hit["id"]}"]'
    _same_boxes(_wait(page, BOXES_IN_IMAGE, card), expected)
    assert "quarterly" in page.text_content(f"{card} .snippet mark").lower()
    assert "annual_report.pdf \u00b7 page 1" in page.text_content(f"{card} .source")
    other = next(i for i in ids if i != hit["id"])  # page 2: the word is not there, nothing drawn
    _wait(page, 'id => document.querySelector(`#results .card[data-id="${id}"] img.thumb`).naturalWidth > 0', other)
    assert page.locator(f'#results .card[data-id="{other}"] .hl').count() == 0
    # the viewer: the same boxes over the full-size page
    page.click(card)
    page.wait_for_selector("#viewer[open] #viewer-body .marks .hl")
    _same_boxes(_wait(page, BOXES_IN_IMAGE, "#viewer-body"), expected, tolerance=0.01)
    page.click("#viewer-close")
    # a hit without its boxes (as a chat source may come): the item's, for the query shown
    fetched = page.evaluate("async id => pageHighlights({id})", hit["id"])
    assert [b for h in fetched for b in h["boxes"]] == expected
    # an item inside its source file, a spreadsheet page's sheet
    inside = {"source": "mail/q3.eml", "member": "attachment=report.pdf", "modality": "pdf-page", "page": 2}
    assert page.evaluate("hit => describe(hit)", inside) == "q3.eml#attachment=report.pdf \u00b7 page 2"
    sheet = {"source": "budget.xlsx", "sheet": "Costs", "modality": "pdf-page", "page": 1}
    assert page.evaluate("hit => describe(hit)", sheet) == "budget.xlsx \u00b7 sheet Costs \u00b7 page 1"
    assert page.evaluate("window.__csp") == [] and not page.errors, (page.evaluate("window.__csp"), page.errors)


def test_the_page_searches_the_collection_its_address_names(page, server):
    """``/?collection=NAME`` (or a vector-store id): searches, item views and answers go to that collection."""
    page.goto(server + "/?collection=other")
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#collection") == "other"
    _login(page)
    ids = _search(page, "lighthouse keeper")
    sources = page.eval_on_selector_all("#results .card .source", "els => els.map(e => e.textContent)")
    assert len(ids) == 1 and any("harbour.md" in s for s in sources), sources
    page.click("#results .card >> nth=0")
    page.wait_for_selector("#viewer[open] #viewer-body pre")
    assert "lighthouse keeper" in page.text_content("#viewer-body pre")
    page.click("#viewer-close")
    page.fill("#collection", "")
    _search(page, "lighthouse keeper")  # the served collection again: its own items
    shown = page.eval_on_selector_all("#results .card .source", "els => els.map(e => e.textContent)")
    assert shown and not any("harbour.md" in s for s in shown), shown
    page.fill("#collection", "no-such-collection")
    page.fill("#query", "anything")
    page.click("#search-button")
    _wait(page, "() => !document.getElementById('error').hidden")
    assert "not found" in page.text_content("#error")
    assert not page.errors, page.errors


def test_the_page_shows_the_folder_sync_and_finds_a_file_added_to_the_watched_folder(page):
    """``serve --watch``: the page's sync line (from /health, for an authorised page) and a new file searchable."""
    _login(page)
    _wait(page, "() => !document.getElementById('sync').hidden")
    line = page.text_content("#sync")
    assert "Folder sync (" in line and WATCHED["corpus"].name in line and str(WATCHED["corpus"]) not in line, line
    (WATCHED["corpus"] / "pump.md").write_text("The bilge pump of the ferry starts when the float switch rises.")
    deadline = time.time() + 30
    while True:  # the next refreshes of the page show it; a search finds it
        ids = _search(page, "bilge pump float switch")
        sources = page.eval_on_selector_all("#results .card .source", "els => els.map(e => e.textContent)")
        if any("pump.md" in s for s in sources):
            break
        assert time.time() < deadline, sources
        time.sleep(0.5)
    _wait(page, "() => /[1-9]\\d* added/.test(document.getElementById('sync').textContent)", timeout=15)
    assert ids and not page.errors, page.errors
