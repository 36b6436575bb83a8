"""Office and OpenDocument files as pages: LibreOffice (headless) converts a document to PDF, and its pages go the
PDF way (rendered at the embedder's pixel budget, with their text layer).

Conversion runs in a private, temporary folder with a private LibreOffice profile (never next to the user's files,
never in the user's own LibreOffice profile), under a time limit (the whole process group is killed past it), a
bounded number at a time (``$QWEN3VL_RAG_OFFICE_WORKERS``, default 1: one LibreOffice is already several
threads). The PDF is kept in the project's cache, by the document's SHA-256, so that showing or reranking a page
later does not convert again. Without LibreOffice each such document fails on its own ("needs LibreOffice") and
the run goes on."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import InputError
from ..settings import cache_dir, env

logger = logging.getLogger(__name__)

WRITER = {".docx", ".doc", ".docm", ".dotx", ".odt", ".ott", ".rtf"}
IMPRESS = {".pptx", ".ppt", ".pptm", ".ppsx", ".pps", ".odp", ".otp"}
CALC = {".xlsx", ".xls", ".xlsm", ".ods", ".ots"}
OFFICE_EXTENSIONS = WRITER | IMPRESS | CALC
# What each kind of file starts with. LibreOffice opens *anything* it cannot parse as plain text (random bytes
# named .docx become a page of mojibake), so a document whose bytes are not of its kind is refused here.
ZIP_MAGIC, OLE_MAGIC, RTF_MAGIC = b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"{\\rtf"
MAGIC = {
    **dict.fromkeys(OFFICE_EXTENSIONS - {".doc", ".ppt", ".pps", ".xls", ".rtf"}, ((ZIP_MAGIC, "a ZIP package"),)),
    ".doc": ((OLE_MAGIC, "a Word 97-2003 file"), (RTF_MAGIC, "RTF")),
    ".ppt": ((OLE_MAGIC, "a PowerPoint 97-2003 file"),),
    ".pps": ((OLE_MAGIC, "a PowerPoint 97-2003 file"),),
    ".xls": ((OLE_MAGIC, "an Excel 97-2003 file"), (b"<", "an HTML table")),
    ".rtf": ((RTF_MAGIC, "RTF"),),
}
# One document's conversion may take at most this long (``$QWEN3VL_RAG_OFFICE_TIMEOUT``, seconds).
OFFICE_TIMEOUT = 120.0
# Documents larger than this are not handed to LibreOffice.
MAX_OFFICE_BYTES = 256 * 1024 * 1024
INSTALL_HINT = (
    "needs LibreOffice to render it (Debian / Ubuntu: apt-get install libreoffice-core-nogui "
    "libreoffice-writer-nogui libreoffice-impress-nogui libreoffice-calc-nogui; or set $QWEN3VL_RAG_SOFFICE)"
)


def is_office(name: str) -> bool:
    return Path(name).suffix.lower() in OFFICE_EXTENSIONS


def is_spreadsheet(name: str) -> bool:
    return Path(name).suffix.lower() in CALC


def soffice() -> str | None:
    """The LibreOffice executable: ``$QWEN3VL_RAG_SOFFICE``, else ``soffice`` / ``libreoffice`` on the PATH."""
    given = env("SOFFICE")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("soffice") or shutil.which("libreoffice")


def _workers() -> int:
    try:
        return max(1, int(env("OFFICE_WORKERS", "1") or 1))
    except ValueError:
        return 1


def _timeout() -> float:
    try:
        return max(1.0, float(env("OFFICE_TIMEOUT", str(OFFICE_TIMEOUT)) or OFFICE_TIMEOUT))
    except ValueError:
        return OFFICE_TIMEOUT


class _Profiles:
    """Private LibreOffice profiles, one per conversion slot (a profile is locked by the process using it), made
    on first use in a temporary folder and removed when the process exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list[Path] = []
        self.made = 0
        self.root: Path | None = None
        self.slots: threading.BoundedSemaphore | None = None

    @contextlib.contextmanager
    def slot(self):
        with self.lock:
            if self.slots is None:
                self.slots = threading.BoundedSemaphore(_workers())
        with self.slots:
            with self.lock:
                if self.root is None:
                    self.root = Path(tempfile.mkdtemp(prefix="qwen3vl-rag-office-"))
                    atexit.register(shutil.rmtree, self.root, True)
                if self.free:
                    profile = self.free.pop()
                else:
                    self.made += 1
                    profile = self.root / f"profile-{self.made}"
            try:
                yield profile
            finally:
                with self.lock:
                    self.free.append(profile)


_PROFILES = _Profiles()


def convert_to_pdf(data: bytes, suffix: str, *, timeout: float | None = None) -> bytes:
    """The document (its bytes, its extension) converted to PDF by LibreOffice. :class:`InputError` when there is
    no LibreOffice, the document is too large, LibreOffice cannot open it, or it takes longer than ``timeout``."""
    suffix = suffix.lower()
    if suffix not in OFFICE_EXTENSIONS:
        raise InputError(f"not an office document: {suffix!r}")
    if len(data) > MAX_OFFICE_BYTES:
        raise InputError(f"document too large: {len(data)} bytes (limit {MAX_OFFICE_BYTES})")
    kinds = MAGIC[suffix]
    if not any(data.startswith(magic) for magic, _ in kinds):
        expected = " or ".join(what for _, what in kinds)
        raise InputError(f"not a {suffix} document: its bytes are not {expected}")
    program = soffice()
    if program is None:
        raise InputError(INSTALL_HINT)
    limit = timeout or _timeout()
    with _PROFILES.slot() as profile, tempfile.TemporaryDirectory(prefix="qwen3vl-rag-convert-") as work:
        source = Path(work) / f"document{suffix}"
        source.write_bytes(data)
        out = Path(work) / "out"
        command = [
            program,
            "--headless",
            "--invisible",
            "--nologo",
            "--norestore",
            "--nolockcheck",
            "--nodefault",
            f"-env:UserInstallation={profile.resolve().as_uri()}",
            "--convert-to",
            "pdf",
            "--outdir",
            str(out),
            str(source),
        ]
        environment = {**os.environ, "HOME": str(profile), "SAL_USE_VCLPLUGIN": "svp"}
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=environment,
            start_new_session=True,  # its own process group: a timeout kills every process it started
        )
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise InputError(f"LibreOffice did not finish converting it within {limit:g} s") from None
        result = out / "document.pdf"
        if proc.returncode != 0 or not result.is_file() or result.stat().st_size == 0:
            said = (stderr or stdout or b"").decode("utf-8", "replace").strip().splitlines()
            said = [line for line in said if "javaldx" not in line and "java may not" not in line]
            detail = f": {said[-1][:200]}" if said else ""
            raise InputError(f"LibreOffice could not open or convert it{detail}")
        return result.read_bytes()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=10)


def converted_pdf(data: bytes, suffix: str, digest: str | None = None) -> Path:
    """The cached PDF of a document (converted now when it is not cached yet): ``<cache>/documents/<sha256>.pdf``."""
    digest = digest or hashlib.sha256(data).hexdigest()
    folder = cache_dir() / "documents"
    path = folder / f"{digest}.pdf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    pdf = convert_to_pdf(data, suffix)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest}-", suffix=".pdf")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pdf)
        os.replace(tmp, path)  # atomic: two processes converting the same document both end with a whole file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    logger.debug("converted a %s document (%d bytes) to a %d-byte PDF", suffix, len(data), len(pdf))
    return path
