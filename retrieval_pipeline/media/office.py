"""Office and OpenDocument files as pages: LibreOffice (headless) converts a document to PDF, and its pages go the
PDF way (rendered at the embedder's pixel budget, with their text layer).

Conversion runs in a private, temporary folder with a private LibreOffice profile (never next to the user's files,
never in the user's own LibreOffice profile), under a time limit (the whole process group is killed past it) and a
memory limit (``$QWEN3VL_RAG_OFFICE_MEMORY_MB``, default 4096: the converter's address space), a bounded number at
a time (``$QWEN3VL_RAG_OFFICE_WORKERS``, default 1: one LibreOffice is already several threads). The PDF is kept in
the project's cache, by the document's SHA-256 and extension, so that showing or reranking a page later does not
convert again. Without LibreOffice each such document fails on its own ("needs LibreOffice") and the run goes on.

A document is content, not a program: nothing is fetched for it and no file outside it is read into it. LibreOffice
follows links when it loads a document (linked images, objects, sections, sheets, DDE, XForms instances), so:

- a ZIP package (OOXML, OpenDocument) is checked from its central directory before anything is inflated (too many
  entries, too much inflated, an entry inflating too many times: refused as a zip bomb), then rewritten entry by
  entry as Python reads it (so LibreOffice sees exactly what was checked): every external relationship of an OOXML
  package (``TargetMode="External"``, hyperlinks included: an image can point at a hyperlink's relationship) points
  at a part that does not exist, and in OpenDocument XML every link that leaves the package on anything but a
  hyperlink (``text:a``, ``draw:a``) is removed, with DDE connections, linked sections and sheets, ``xml:base`` and
  XForms sources (their last saved content stays);
- the private profile blocks links from untrusted documents (``BlockUntrustedRefererLinks``: the only defence
  for the binary formats, .doc and .ppt, which load linked pictures too);
- the converter runs in a network namespace of its own where the system allows it (``unshare``): no network at all;
- an .xls must be an Excel 97-2003 file (an HTML or XML file named .xls is refused: LibreOffice would open it as a
  web page or a flat OpenDocument, links and all)."""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.parse
import zipfile
import zlib
from pathlib import Path

from ..errors import InputError
from ..settings import env
from .cache import cache_path, write_atomically

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
    ".xls": ((OLE_MAGIC, "an Excel 97-2003 file"),),
    ".rtf": ((RTF_MAGIC, "RTF"),),
}
# One document's conversion may take at most this long (``$QWEN3VL_RAG_OFFICE_TIMEOUT``, seconds).
OFFICE_TIMEOUT = 120.0
# Documents larger than this are not handed to LibreOffice.
MAX_OFFICE_BYTES = 256 * 1024 * 1024
# A ZIP package (OOXML, OpenDocument) is refused as a zip bomb past any of these, read from its central directory
# before anything is inflated: entries, bytes inflated in all, and how many times an entry of more than
# RATIO_FROM bytes inflates (XML inflates 5 to 20 times; the bomb that grew LibreOffice past 9 GiB, 340 times).
MAX_PACKAGE_ENTRIES = 10_000
MAX_PACKAGE_INFLATED = 256 * 1024 * 1024
MAX_PACKAGE_RATIO = 100
RATIO_FROM = 1024 * 1024
# The converter's address space (``$QWEN3VL_RAG_OFFICE_MEMORY_MB``; 0: no limit). LibreOffice reserves about
# 0.5 GiB of it to convert a page of text (it does not start under about 0.45 GiB).
OFFICE_MEMORY_MB = 4096
# Settings written into each fresh private profile. BlockUntrustedRefererLinks: LibreOffice loads no linked image
# or object for a document outside its trusted locations (there are none): what keeps a .doc or .ppt from reading
# a local file into its pages or fetching a URL.
PROFILE_SETTINGS = (("/org.openoffice.Office.Common/Security/Scripting", "BlockUntrustedRefererLinks", "true"),)
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


def _memory_mb() -> int:
    try:
        return max(0, int(env("OFFICE_MEMORY_MB", str(OFFICE_MEMORY_MB)) or OFFICE_MEMORY_MB))
    except ValueError:
        return OFFICE_MEMORY_MB


def _address_space_limit(megabytes: int):
    """For ``preexec_fn``: the converter (and what it starts) may map at most this much memory; past it an
    allocation fails and LibreOffice aborts instead of growing until the machine swaps."""
    import resource

    limit = megabytes * 1024 * 1024

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


# What LibreOffice (or the loader) prints when an allocation fails under the limit: a C++ bad_alloc ends in abort()
# ("Fatal exception: Signal 6"), a library that cannot be mapped stops the start.
_OUT_OF_MEMORY = re.compile(
    r"bad_alloc|Signal 6\b|failed to map segment|Cannot allocate memory|out of memory", re.IGNORECASE
)

_ISOLATION: list[list[str]] = []
_ISOLATION_LOCK = threading.Lock()


def _isolation() -> list[str]:
    """The command that runs the converter in a network namespace of its own (no interface but a loopback that is
    down: nothing can be fetched), tried once per process: ``unshare --net`` as root, ``unshare --net
    --map-root-user`` (a user namespace) otherwise. Empty where neither works (no unshare, user namespaces off, a
    container that forbids them): the other defences still hold."""
    with _ISOLATION_LOCK:
        if not _ISOLATION:
            _ISOLATION.append(_find_isolation())
        return _ISOLATION[0]


def _find_isolation() -> list[str]:
    unshare = shutil.which("unshare")
    true = shutil.which("true")
    if unshare is None or true is None:
        logger.debug("no network isolation for LibreOffice: unshare or true is not on the PATH")
        return []
    tries = [[unshare, "--net"], [unshare, "--net", "--map-root-user"]]
    if os.geteuid() != 0:
        tries.reverse()
    for prefix in tries:
        try:
            done = subprocess.run([*prefix, true], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.debug("no network isolation with %s: %s", " ".join(prefix), exc)
            continue
        if done.returncode == 0:
            logger.debug("LibreOffice runs in its own network namespace (%s)", " ".join(prefix))
            return prefix
        logger.debug("no network isolation with %s: %s", " ".join(prefix), done.stderr.decode(errors="replace"))
    return []


def _seed_profile(profile: Path) -> None:
    """A fresh profile's settings (PROFILE_SETTINGS), written before LibreOffice first starts with it; LibreOffice
    keeps them when it writes the file again."""
    items = "".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse"><value>{value}</value></prop></item>'
        for path, name, value in PROFILE_SETTINGS
    )
    (profile / "user").mkdir(parents=True, exist_ok=True)
    (profile / "user" / "registrymodifications.xcu").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"{items}</oor:items>\n",
        encoding="utf-8",
    )


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
                    _seed_profile(profile)
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
        hint = ""
        if suffix == ".xls" and data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
            hint = " (an HTML or XML file named .xls: save it as .html, or as .xlsx / .ods)"
        raise InputError(f"not a {suffix} document: its bytes are not {expected}{hint}")
    if data.startswith(ZIP_MAGIC):
        data = safe_package(data)
    program = soffice()
    if program is None:
        raise InputError(INSTALL_HINT)
    limit = timeout or _timeout()
    memory = _memory_mb()
    with _PROFILES.slot() as profile, tempfile.TemporaryDirectory(prefix="qwen3vl-rag-convert-") as work:
        source = Path(work) / f"document{suffix}"
        source.write_bytes(data)
        out = Path(work) / "out"
        command = [
            *_isolation(),
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
            preexec_fn=_address_space_limit(memory) if memory else None,
        )
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise InputError(f"LibreOffice did not finish converting it within {limit:g} s") from None
        result = out / "document.pdf"
        if proc.returncode != 0 or not result.is_file() or result.stat().st_size == 0:
            said = (stderr or stdout or b"").decode("utf-8", "replace")
            if memory and (proc.returncode in (-6, 134) or _OUT_OF_MEMORY.search(said)):
                raise InputError(f"LibreOffice ran out of memory (limit {memory} MiB, $QWEN3VL_RAG_OFFICE_MEMORY_MB)")
            lines = [line for line in said.strip().splitlines() if "javaldx" not in line and "java may not" not in line]
            detail = f": {lines[-1][:200]}" if lines else ""
            # an allocation that fails under the limit may also end as a plain load failure: say the limit
            bound = f" (it ran with at most {memory} MiB of memory; $QWEN3VL_RAG_OFFICE_MEMORY_MB)" if memory else ""
            raise InputError(f"LibreOffice could not open or convert it{detail}{bound}")
        return result.read_bytes()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=10)


def converted_pdf(data: bytes, suffix: str, digest: str | None = None) -> Path:
    """The cached PDF of a document (converted now when it is not cached yet):
    ``<cache>/documents/<sha256><suffix>.pdf`` (the same bytes named .rtf and .doc are two conversions)."""
    digest = digest or hashlib.sha256(data).hexdigest()
    suffix = suffix.lower()
    path = cache_path("documents", f"{digest}{suffix}.pdf")
    if path.is_file() and path.stat().st_size > 0:
        return path
    pdf = convert_to_pdf(data, suffix)
    with contextlib.suppress(OSError):  # converted by an older version, links followed: never read again
        (path.parent / f"{digest}.pdf").unlink()
    # atomic: two processes converting the same document both end with a whole file
    write_atomically(path, pdf)
    logger.debug("converted a %s document (%d bytes) to a %d-byte PDF", suffix, len(data), len(pdf))
    return path


# ----------------------------------------------------------------------------------------------------------------
# ZIP packages: checked, then rewritten with no link that leaves the package


_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_XFORMS = "http://www.w3.org/2002/xforms"
_TEXT = ("urn:oasis:names:tc:opendocument:xmlns:text:1.0", "http://openoffice.org/2000/text")
_DRAW = ("urn:oasis:names:tc:opendocument:xmlns:drawing:1.0", "http://openoffice.org/2000/drawing")
# Elements whose xlink:href is a hyperlink (followed by a reader who clicks it, never by the converter).
_HYPERLINKS = {f"{{{ns}}}a" for ns in (*_TEXT, *_DRAW)}
# Elements that only tie their parent to content elsewhere (the parent keeps the content last saved): removed.
_LINK_ELEMENTS = {
    "dde-connection-decls",  # text: DDE connections (one made LibreOffice wait out the whole time limit)
    "dde-connection-decl",
    "dde-links",  # table: DDE links
    "dde-link",
    "dde-source",  # office: a section or sheet filled by DDE
    "section-source",  # text: a section linked to a file or URL
    "table-source",  # table: a sheet linked to a file or URL
    "cell-range-source",  # table: a cell range linked to a file or URL
}
# XForms attributes that name what to load or where to send.
_XFORMS_URLS = ("src", "action", "resource", "schema")
# Only parts that hold one of these need reading as XML (the rest cannot link out under the rules below).
_TOKENS = (b"xlink", b"xml:base", b"xforms", b"image-data", b"dde-", b"&#", b"<!ENTITY")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_INERT_TARGET = "external-link-removed"


class _PackageError(Exception):
    pass


def safe_package(data: bytes) -> bytes:
    """An OOXML or OpenDocument package as LibreOffice may read it: refused (:class:`InputError`) when it is
    unreadable, encrypted or a zip bomb; otherwise the same entries, in the same order (``mimetype`` first and
    stored), each as Python inflated it (so any trick of the ZIP structure is gone), with external links removed
    from its XML (see the module's description). Entries with nothing to remove keep their bytes."""
    broken = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
    except (*broken, ValueError) as exc:
        raise InputError(f"not a readable ZIP package ({exc}): LibreOffice could not open it either") from None
    with package:
        entries = package.infolist()
        _check_bomb(entries)
        twice = sorted(name for name, n in collections.Counter(e.filename for e in entries).items() if n > 1)
        if twice:  # Python reads the last of them, LibreOffice perhaps another
            raise InputError(f"not a valid package: it holds two entries named {twice[0]!r}")
        entries.sort(key=lambda entry: entry.filename != "mimetype")  # stable: the others keep their order
        try:
            return _rewritten(package, entries)
        except _PackageError as exc:
            raise InputError(str(exc)) from None
        except (*broken, ValueError) as exc:
            raise InputError(f"a broken ZIP package ({exc}): LibreOffice could not open it either") from None


def _rewritten(package: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> bytes:
    if any(entry.flag_bits & 0x1 for entry in entries):
        raise _PackageError("an encrypted ZIP package: LibreOffice could not open it")
    if "META-INF/manifest.xml" in package.NameToInfo and b"encryption-data" in package.read("META-INF/manifest.xml"):
        raise _PackageError("a password-protected document: LibreOffice could not open it")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as rewritten:
        for entry in entries:
            content = package.read(entry)
            if entry.filename.lower().endswith((".xml", ".rels")) and not entry.is_dir():
                content = _neutralised(entry.filename, content)
            info = zipfile.ZipInfo(entry.filename, date_time=entry.date_time)
            info.external_attr = entry.external_attr
            # stored when it was, or when deflating gained nothing (pictures): inflating it again would be wasted
            stored = entry.compress_type == zipfile.ZIP_STORED or entry.compress_size >= 0.98 * entry.file_size
            stored = stored or entry.filename == "mimetype"
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            rewritten.writestr(info, content)
    return out.getvalue()


def _check_bomb(entries: list[zipfile.ZipInfo]) -> None:
    """From the central directory only (declared sizes; reading an entry later stops at its declared size and
    checks its CRC, so a lie there is caught too)."""
    if len(entries) > MAX_PACKAGE_ENTRIES:
        raise InputError(f"refused as a zip bomb: {len(entries)} entries (limit {MAX_PACKAGE_ENTRIES})")
    total = sum(entry.file_size for entry in entries)
    if total > MAX_PACKAGE_INFLATED:
        raise InputError(f"refused as a zip bomb: it inflates to {total} bytes (limit {MAX_PACKAGE_INFLATED})")
    for entry in entries:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > RATIO_FROM and ratio > MAX_PACKAGE_RATIO:
            raise InputError(
                f"refused as a zip bomb: {entry.filename!r} inflates {ratio:.0f} times "
                f"({entry.compress_size} to {entry.file_size} bytes; limit {MAX_PACKAGE_RATIO})"
            )


def _neutralised(name: str, content: bytes) -> bytes:
    """An XML part with its external links removed: relationships (``*.rels``) and OpenDocument links."""
    rels = name.lower().endswith(".rels")
    ascii_compatible = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<" and b"\x00" not in content[:64]
    if not rels and ascii_compatible and not any(token in content for token in _TOKENS):
        return content  # UTF-8 (or ASCII-compatible) XML that can hold none of the links below
    from lxml import etree

    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, remove_blank_text=False
    )
    try:
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError as exc:
        raise _PackageError(f"{name!r} is not well-formed XML ({exc}): LibreOffice could not open it either") from None
    tree = root.getroottree()
    dtd = tree.docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise _PackageError(f"{name!r} declares XML entities (no office document needs them)")
    changed = _relationships(root) if rels else _opendocument_links(root)
    if not changed:
        return content
    standalone = True if tree.docinfo.standalone else None  # "no" is what no declaration means
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", standalone=standalone)


def _outside(href: str) -> bool:
    """Whether a link leaves the package: a scheme (file:, http:, vnd.sun.star...:, C:), an absolute path, a
    ``..`` step, or nothing at all (the document itself)."""
    target = urllib.parse.unquote(href).strip().replace("\\", "/")
    return not target or bool(_SCHEME.match(target)) or target.startswith("/") or ".." in target.split("/")


def _relationships(root) -> bool:
    """Every relationship that leaves the package points at a part that does not exist (LibreOffice then loads
    nothing for it). Hyperlinks too: LibreOffice loads an image from whatever relationship its ``r:link`` names."""
    changed = False
    for rel in root.iter("{*}Relationship"):
        target = (rel.get("Target") or "").strip().replace("\\", "/")
        mode = rel.get("TargetMode")
        if (mode is not None and mode != "Internal") or _SCHEME.match(target) or target.startswith("//"):
            rel.attrib.pop("TargetMode", None)
            rel.set("Target", _INERT_TARGET)
            changed = True
    return changed


def _opendocument_links(root) -> bool:
    changed = False
    for element in list(root.iter()):
        if not isinstance(element.tag, str):
            continue  # a comment or a processing instruction
        local = element.tag.rpartition("}")[2]
        if local in _LINK_ELEMENTS:
            _remove(element)
            changed = True
            continue
        if local == "dde-connection":  # a field filled by DDE: its last value stays, as text
            _remove(element, "".join(element.itertext()))
            changed = True
            continue
        if _XML_BASE in element.attrib:
            del element.attrib[_XML_BASE]
            changed = True
        href = element.get(_XLINK_HREF)
        if href is not None and element.tag not in _HYPERLINKS and _outside(href):
            del element.attrib[_XLINK_HREF]  # an image, object, frame, plugin, style image, font... with nothing
            changed = True
        for attribute in list(element.attrib):
            if element.tag.startswith(f"{{{_XFORMS}}}") and attribute in _XFORMS_URLS:
                outside = _outside(element.get(attribute) or "")
            elif attribute.rpartition("}")[2] == "image-data":  # form:image-data, an image button's picture
                outside = _outside(element.get(attribute) or "")
            else:
                continue
            if outside:
                del element.attrib[attribute]
                changed = True
    return changed


def _remove(element, text: str = "") -> None:
    """Takes an element out of its parent, leaving ``text`` and the text that followed it in its place."""
    parent = element.getparent()
    if parent is None:
        return
    kept = text + (element.tail or "")
    before = element.getprevious()
    if before is not None:
        before.tail = (before.tail or "") + kept
    else:
        parent.text = (parent.text or "") + kept
    parent.remove(element)
