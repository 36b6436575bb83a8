"""What a real work folder costs per page (issue 28): office documents converted by LibreOffice and rendered as page
images, a saved web page, a mail with a PDF attachment, a zip archive, a PDF and Windows-1252 text, side by side.

    python benchmarks/bench_documents.py [--pages 5] [--real-size [--real-pages 2] [--cache /tmp/qwen3vl-realsize]]

Per format: LibreOffice conversion per page (the first conversion of the process, which makes a fresh private
profile, apart from the steady state; the conversion cache cleared each time) and the cached re-read; reading per
page or item (``items_of_file`` with the conversion cache warm: parse, render, text layer); embedding per page or
item with the tiny parity checkpoint in float32 at the default media settings (page images at their full
1800-token budget, so the image preprocessing is real; the tiny model's compute is not). ``--real-size`` also embeds
at most 2 pages with a random-weight checkpoint of the released 2B size (float32, and bfloat16 where the CPU has it
natively): about 100 s per page image in float32 on a 2-core CPU. Then ``Indexer.index_paths`` end to end on a
folder of all the formats (conversion cache cleared), and again with everything present.

Every document is written by the library that writes it (python-docx, python-pptx, openpyxl, the email package,
zipfile, the project's PDF writer). Timings are medians of 3 unless said otherwise.
"""

from __future__ import annotations

import argparse
import email.message
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, TINY, WORDS, peak_mib  # noqa: E402

OFFICE = ("docx", "pptx", "xlsx")
EMBED_BUDGET = 8.0  # seconds per format: embedding is repeated (up to 3 runs) only within this


# ----------------------------------------------------------------------------------------------------------------
# documents


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_mail(path: Path, body: str, attachments: dict[str, bytes]) -> Path:
    message = email.message.EmailMessage()
    message["From"] = "Alice Example <alice@example.com>"
    message["To"] = "team@example.com"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message["Subject"] = "Minutes of the pump review"
    message.set_content(body)
    message.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
    for name, data in attachments.items():
        message.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    path.write_bytes(bytes(message))
    return path


def build_documents(root: Path, pages: int) -> dict[str, Path]:
    """One file per format, ``pages`` pages (slides, sheets) where a format has pages; distinct contents, so that
    nothing is shared between formats (no conversion or embedding is saved by a duplicate)."""
    from retrieval_pipeline.testing import make_text_pdf, write_docx, write_pptx, write_xlsx

    rng = random.Random(0)
    root.mkdir(parents=True)
    files: dict[str, Path] = {}
    files["docx"] = write_docx(root / "report.docx", [prose(rng, 150) for _ in range(pages)], headings=True)
    files["pptx"] = write_pptx(root / "deck.pptx", [(f"Slide {i + 1}", prose(rng, 30)) for i in range(pages)])
    files["xlsx"] = write_xlsx(
        root / "budget.xlsx",
        {
            f"Sheet {i + 1}": [["item", "quarter", "amount"]]
            + [[rng.choice(WORDS), f"Q{q % 4 + 1}", rng.randint(1, 9999)] for q in range(20)]
            for i in range(pages)
        },
    )
    (root / "page_files").mkdir()
    shutil.copy(MEDIA / "chelsea.jpg", root / "page_files" / "cat.jpg")
    shutil.copy(MEDIA / "rocket.jpg", root / "page_files" / "rocket.jpg")
    paragraphs = "".join(f"<p>{prose(rng, 120)}</p>" for _ in range(12))
    (root / "article.html").write_text(
        "<html><head><title>Field notes</title><script>document.write('never run')</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<article><h1>Field notes</h1>{paragraphs[: len(paragraphs) // 2]}"
        '<figure><img src="page_files/cat.jpg" alt="a cat"></figure>'
        f"{paragraphs[len(paragraphs) // 2 :]}"
        '<figure><img src="page_files/rocket.jpg" alt="a rocket"></figure></article>'
        "<footer>Copyright 2026</footer></body></html>",
        encoding="utf-8",
    )
    files["html"] = root / "article.html"
    attached = make_text_pdf(root / "minutes.tmp", [prose(rng, 80) for _ in range(pages)]).read_bytes()
    (root / "minutes.tmp").unlink()
    files["eml"] = write_mail(root / "mail.eml", prose(rng, 60), {"minutes.pdf": attached})
    inner = write_docx(root / "inner.tmp.docx", [prose(rng, 150) for _ in range(2)], headings=True).read_bytes()
    (root / "inner.tmp.docx").unlink()
    with zipfile.ZipFile(root / "bundle.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs/inner.docx", inner)
        archive.writestr("notes/legacy.txt", "Kühlschrank café – résumé. ".encode("cp1252") + prose(rng, 100).encode())
    files["zip"] = root / "bundle.zip"
    files["pdf"] = make_text_pdf(root / "manual.pdf", [prose(rng, 120) for _ in range(pages)])
    text = "\n\n".join(f"Grüße aus Köln, {prose(rng, 80)} Kosten: {i} € – naïve «déjà vu»." for i in range(10))
    (root / "windows.txt").write_bytes(text.encode("cp1252"))
    files["txt"] = root / "windows.txt"
    return files


# ----------------------------------------------------------------------------------------------------------------
# timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(
    fn: Callable[[], Any], repeat: int = 3, before: Callable[[], Any] | None = None, budget: float | None = None
) -> tuple[float, Any]:
    """Median seconds of ``repeat`` runs (``before`` runs untimed ahead of each), and the last result. ``budget``:
    no further run once the runs so far and one more would take longer than this many seconds."""
    runs: list[float] = []
    out = None
    for _ in range(repeat):
        if runs and budget is not None and sum(runs) + runs[-1] > budget:
            break
        if before:
            before()
        s, out = timed(fn)
        runs.append(s)
    return statistics.median(runs), out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Others:
    """How many cores other processes kept busy meanwhile (all CPU time on the machine less this process's and its
    waited-for children's, LibreOffice included): another job on a 2-core machine slows torch's threads manyfold."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            mine = [int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:15]]
        tick = os.sysconf("SC_CLK_TCK")
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick, sum(mine) / tick, time.perf_counter()

    def cores(self) -> float:
        busy, mine, now = self._sample()
        return max(0.0, (busy - self.start[0]) - (mine - self.start[1])) / max(1e-9, now - self.start[2])


def phase(name: str, fn: Callable[[], Any]) -> Any:
    print(f"{name} ...", end=" ", flush=True)
    others = Others()
    s, out = timed(fn)
    print(f"{s:.1f} s (other processes kept {others.cores():.2f} cores busy meanwhile)", flush=True)
    return out


def clear_conversions() -> None:
    from retrieval_pipeline.settings import cache_dir

    shutil.rmtree(cache_dir() / "documents", ignore_errors=True)


def office_parts(fmt: str, path: Path) -> list[tuple[bytes, str]]:
    """The office documents a file holds (itself, or a zip's office members): (bytes, suffix)."""
    if fmt in OFFICE:
        return [(path.read_bytes(), path.suffix)]
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            return [(archive.read(n), Path(n).suffix) for n in archive.namelist() if Path(n).suffix[1:] in OFFICE]
    return []


def pdf_pages(pdf: Path) -> int:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        return len(doc)
    finally:
        doc.close()


def describe(items: list[Any]) -> str:
    kinds: dict[str, int] = {}
    for it in items:
        kind = {"pdf-page": "page", "image": "image", "text": "text"}.get(it.record.modality, it.record.modality)
        kinds[kind] = kinds.get(kind, 0) + 1
    return " + ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items())


def f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------
# parts of the run


def conversions(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Per office format: the first conversion (fresh profile), steady state and cached re-read, per page."""
    from retrieval_pipeline.media.office import converted_pdf

    out: dict[str, dict[str, Any]] = {}
    clear_conversions()
    first_fmt = "docx"
    (data, suffix) = office_parts(first_fmt, files[first_fmt])[0]
    first_s, pdf = timed(lambda: converted_pdf(data, suffix))
    out[first_fmt] = {"first_s": first_s, "first_pages": pdf_pages(pdf)}
    for fmt, path in files.items():
        parts = office_parts(fmt, path)
        if not parts:
            continue
        row = out.setdefault(fmt, {})
        convert = cached = 0.0
        pages = 0
        for data, suffix in parts:
            s, pdf = median(lambda d=data, x=suffix: converted_pdf(d, x), before=clear_conversions)
            convert += s
            pages += pdf_pages(pdf)
            s, _ = median(lambda d=data, x=suffix: converted_pdf(d, x))
            cached += s
        row.update(convert_s=convert, cached_s=cached, pdf_pages=pages)
    return out


def reading(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``items_of_file`` with the conversion cache warm: parse + render + text layer."""
    from retrieval_pipeline.ingest import IngestOptions
    from retrieval_pipeline.ingest.items import items_of_file
    from retrieval_pipeline.ingest.report import ItemFailure

    out = {}
    for fmt, path in files.items():
        list(items_of_file(path, IngestOptions(), {}))  # warms the conversion cache (and the page cache)
        s, units = median(lambda p=path: list(items_of_file(p, IngestOptions(), {})))
        items = [u for u in units if not isinstance(u, ItemFailure)]
        failures = [u for u in units if isinstance(u, ItemFailure)]
        out[fmt] = {"read_s": s, "items": items, "failures": failures}
    return out


def embedding(embedder: Any, read: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per format: (seconds to embed all its items, cores other processes kept busy meanwhile)."""
    embedder.embed(["warm up"])
    embedder.embed([read["pdf"]["items"][0].input])
    out = {}
    for fmt, row in read.items():
        inputs = [it.input for it in row["items"]]
        others = Others()
        s, _ = median(lambda i=inputs: embedder.embed(i, show_progress_bar=False), budget=EMBED_BUDGET)
        out[fmt] = (s, others.cores())
    return out


def end_to_end(embedder: Any, folder: Path, work: Path) -> dict[str, Any]:
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    clear_conversions()
    store = EdgeStore(work / "db", "docs")
    first_s, first = timed(lambda: Indexer(embedder, store).index_paths([folder], show_progress_bar=False))
    again_s, again = median(lambda: Indexer(embedder, store).index_paths([folder], show_progress_bar=False))
    return {"first_s": first_s, "first": first, "again_s": again_s, "again": again, "points": store.count()}


def real_size(read: dict[str, dict[str, Any]], model: Path, pages: int) -> list[tuple[str, str, float]]:
    """A few page images with the released-size checkpoint: (dtype, page, seconds), one model resident at a time."""
    import gc

    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.models.runtime import cpu_has_native_bf16, release_memory

    chosen = [("docx", read["docx"]["items"][0]), ("pptx", read["pptx"]["items"][0])][:pages]
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])
    if len(dtypes) == 1:
        print("  (no native bfloat16 on this CPU: float32 only)")
    rows = []
    for dtype in dtypes:
        load_s, big = timed(lambda d=dtype: Qwen3VLEmbedder(str(model), torch_dtype=d))
        print(f"  {dtype}: loaded in {load_s:.1f} s", flush=True)
        big.embed(["warm up"])
        for fmt, item in chosen:
            s, _ = timed(lambda i=item, m=big: m.embed([i.input], show_progress_bar=False))
            size = "x".join(map(str, item.input["image"].size))
            rows.append((dtype, f"{fmt} page 1 ({size})", s))
            print(f"  {dtype}: {fmt} page 1: {s:.1f} s", flush=True)
        big = None
        gc.collect()
        release_memory()
    return rows


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=5, help="pages of the docx and PDFs, slides, sheets (default 5)")
    ap.add_argument("--real-size", action="store_true", help="also embed pages with the released-size checkpoint")
    ap.add_argument("--real-pages", type=int, default=2, choices=[1, 2], help="pages embedded at real size")
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize", help="where the real-size checkpoint is built")
    ap.add_argument("--real-model", help="an existing checkpoint folder to use instead of the random 2B one")
    args = ap.parse_args()
    if args.pages < 1:
        ap.error("--pages must be >= 1")
    started = time.perf_counter()
    print("$ python " + shlex.join(sys.argv), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-documents-") as tmp:
        work = Path(tmp)
        os.environ["QWEN3VL_RAG_CACHE"] = str(work / "cache")  # before the package is imported: a private cache
        import torch

        from retrieval_pipeline import Qwen3VLEmbedder
        from retrieval_pipeline.media.office import soffice

        program = soffice()
        if program is None:
            sys.exit("LibreOffice (soffice) is not installed: office documents cannot be converted")
        version = subprocess.run([program, "--version"], capture_output=True, text=True).stdout.strip()
        torch_info = f"torch {torch.__version__} with {torch.get_num_threads()} threads"
        print(f"{os.cpu_count()} CPUs (load average {load()}), {torch_info}; {version}")

        folder = work / "folder"
        files = build_documents(folder, args.pages)
        print(f"documents: {', '.join(p.name for p in files.values())} ({args.pages} pages each where paged)")

        everything = Others()
        conv = phase("converting (LibreOffice)", lambda: conversions(files))
        read = phase("reading (items_of_file, conversion cached)", lambda: reading(files))
        load_s, embedder = timed(lambda: Qwen3VLEmbedder(str(TINY), torch_dtype="float32"))
        emb = phase("embedding (tiny checkpoint, float32, default media settings)", lambda: embedding(embedder, read))
        e2e = phase("end to end (Indexer.index_paths on the folder)", lambda: end_to_end(embedder, folder, work))
        busy_elsewhere = everything.cores()
        real = []
        if args.real_size:
            model = Path(args.real_model) if args.real_model else Path(args.cache) / "2B"
            if not (model / "config.json").exists():
                from retrieval_pipeline.testing import build_random_checkpoint

                print(f"building the random 2B checkpoint in {model} ...", flush=True)
                build_random_checkpoint(model, like=TINY, size="2B")
            print(f"real size: {model}", flush=True)
            real = real_size(read, model, args.real_pages)

    print(f"\n### Per format ({args.pages} pages; seconds per page or item)\n")
    print(
        "convert: LibreOffice, steady state, cache cleared (median of 3); read: items_of_file with the conversion "
        "cached (median of 3);\nembed: the tiny checkpoint, float32, default media settings (median of up to 3 "
        f"runs within {EMBED_BUDGET:g} s); total: their sum.\n"
    )
    print("| format | pages/items | convert s/page | read s/page | embed s/page | total s/page |")
    print("|---|---|---:|---:|---:|---:|")
    for fmt in files:
        n = len(read[fmt]["items"])
        convert = conv[fmt]["convert_s"] / n if fmt in conv else None
        read_s = read[fmt]["read_s"] / n
        embed_s = emb[fmt][0] / n
        total = (convert or 0.0) + read_s + embed_s
        label = f"{n} ({describe(read[fmt]['items'])})"
        print(f"| {fmt} | {label} | {f(convert)} | {f(read_s, 4)} | {f(embed_s, 4)} | {f(total)} |")

    print(
        "\nother processes' cores busy while each format was embedded: "
        + ", ".join(f"{fmt} {cores:.2f}" for fmt, (_, cores) in emb.items())
    )

    print("\n### LibreOffice conversion (seconds per page of the converted PDF)\n")
    print("| format | PDF pages | first conversion, fresh profile | steady state (cache cleared) | cached re-read |")
    print("|---|---:|---:|---:|---:|")
    for fmt, row in conv.items():
        pages = row["pdf_pages"]
        first = row["first_s"] / row["first_pages"] if "first_s" in row else None
        print(
            f"| {fmt} | {pages} | {f(first)} | {f(row['convert_s'] / pages)} | "
            f"{f(row['cached_s'] / pages * 1000, 2)} ms |"
        )
    if "first_s" in conv.get("docx", {}):
        row = conv["docx"]
        print(
            f"\nfirst conversion of the process: {row['first_s']:.2f} s for the whole docx; steady state "
            f"{row['convert_s']:.2f} s (a LibreOffice start per document: the fixed cost dominates short ones)"
        )

    print("\n### End to end: Indexer.index_paths on a folder of all the formats\n")
    first, again = e2e["first"], e2e["again"]
    print(
        f"- first run (conversion cache cleared): {e2e['first_s']:.2f} s, {first.summary()}; "
        f"{first.indexed / e2e['first_s']:.2f} items/s; {e2e['points']} points in the store"
    )
    print(f"- re-run, everything present (median of 3): {e2e['again_s']:.2f} s, {again.summary()}")
    for failure in first.failed + first.skipped:
        print(f"  - {failure}")
    items_sum = sum(len(r["items"]) for r in read.values())
    print(f"- items read per format, summed: {items_sum}; the page_files/ images are indexed as files too")

    if real:
        what = args.real_model or "random 2B checkpoint"
        print(f"\n### Real size ({what}, default media settings; one run each)\n")
        print("| dtype | page | embed s/page |")
        print("|---|---|---:|")
        for dtype, page, s in real:
            print(f"| {dtype} | {page} | {s:.1f} |")

    print("\n### Checks\n")
    for fmt, row in read.items():
        for failure in row["failures"]:
            print(f"- {fmt}: item failure {failure.where}: {failure.reason}")
    sheets = sorted({it.record.sheet for it in read["xlsx"]["items"] if it.record.sheet})
    print(f"- xlsx: {len(read['xlsx']['items'])} pages for {args.pages} sheets; sheet names on pages: {sheets}")
    print(
        f"- docx: {len(read['docx']['items'])} pages for {args.pages} written; "
        f"pptx: {len(read['pptx']['items'])} for {args.pages} slides"
    )
    encodings = sorted({str(it.record.encoding) for it in read["txt"]["items"]})
    print(f"- txt: detected encoding {encodings}; first chunk starts {read['txt']['items'][0].input['text'][:40]!r}")
    html = "\n".join(it.input["text"] for it in read["html"]["items"] if "text" in it.input)
    boiler = [w for w in ("never run", "Home", "Copyright") if w in html]
    print(f"- html: text starts {html[:30]!r}; script/nav/footer text left in: {boiler or 'none'}")
    sizes = sorted(
        {
            "x".join(map(str, it.input["image"].size))
            for r in read.values()
            for it in r["items"]
            if it.record.modality == "pdf-page"
        }
    )
    print(f"- page image sizes: {sizes}")
    print(f"- tiny embedder loaded in {load_s:.2f} s; peak RSS {peak_mib():.0f} MiB")
    print(
        f"\nwall time: {time.perf_counter() - started:.1f} s; other processes kept {busy_elsewhere:.2f} of "
        f"{os.cpu_count()} cores busy on average during the measurements (load average now {load()})"
    )


if __name__ == "__main__":
    main()
