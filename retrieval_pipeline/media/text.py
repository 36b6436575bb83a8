"""Text files in any common encoding: a byte order mark decides (UTF-8, UTF-16, UTF-32), then strict UTF-8, then
charset-normalizer's detection (Windows-1252 / Latin-1 and the other single-byte code pages, Shift-JIS, GB18030,
Big5, EUC-KR, ...). Data no encoding explains -- a binary file named ``.txt`` -- is refused with the reason."""

from __future__ import annotations

import codecs

from ..errors import InputError

# Byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# charset-normalizer's detection within this much "chaos" of its best guess counts as a tie, and a tie that
# Windows-1252 can explain goes to it: on a short Western text (a few accents and a euro sign) the Baltic or
# Central European code pages often score a hair better, yet Windows-1252 is what such files almost always are.
NEAR_TIE = 0.1
PREFERRED = "cp1252"
# Control characters (other than tab, newlines, form feed) in a decoded text: more than this share and it is binary.
MAX_CONTROL_SHARE = 0.01


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, the encoding it was decoded from: ``utf-8``, ``utf-8-sig``, ``utf-16``, ``cp1252``, ...).

    A byte order mark is not part of the text. Raises :class:`InputError` for data that is no text."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding), encoding), encoding
            except UnicodeDecodeError as exc:
                raise InputError(f"not {encoding} text despite its byte order mark ({exc.reason})") from None
    try:
        return _checked(data.decode("utf-8"), "utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:65536]:  # no BOM, not UTF-8, NUL bytes: UTF-16 without its BOM, or a binary file
        guessed = _bomless_utf16(data)
        if guessed is not None:
            return guessed
        raise InputError("binary data, not text (NUL bytes and no byte order mark)")
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        raise InputError("binary data, not text (no text encoding explains these bytes)")
    best = matches[0]
    encoding = best.encoding
    for match in matches:
        if match.chaos <= best.chaos + NEAR_TIE and PREFERRED in match.could_be_from_charset:
            encoding = PREFERRED
            break
    try:
        return _checked(data.decode(encoding), encoding), encoding
    except UnicodeDecodeError:  # a near tie that does not decode everything: the detector's own choice
        return _checked(str(best), best.encoding), best.encoding


def _bomless_utf16(data: bytes) -> tuple[str, str] | None:
    """UTF-16 written without a byte order mark (some Windows tools do): mostly Latin or CJK text puts its NUL
    bytes on one side of each pair. Accepted only when that holds for nearly every pair and the text decodes."""
    sample = data[:65536]
    if len(sample) < 4 or len(sample) % 2:
        return None
    pairs = len(sample) // 2
    odd, even = sample[1::2].count(0), sample[0::2].count(0)
    encoding = (
        "utf-16-le" if odd >= 0.9 * pairs and even == 0 else "utf-16-be" if even >= 0.9 * pairs and odd == 0 else None
    )
    if encoding is None:
        return None
    try:
        return _checked(data.decode(encoding), encoding), encoding
    except (UnicodeDecodeError, InputError):
        return None


def _checked(text: str, encoding: str) -> str:
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f") if text else 0
    if text and controls / len(text) > MAX_CONTROL_SHARE:
        raise InputError(f"binary data, not text ({controls} control characters when read as {encoding})")
    return text
