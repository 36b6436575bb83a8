"""Every input form a user will throw at the embedder, and every way an input can be bad."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import MEDIA
from PIL import Image

from retrieval_pipeline import InputError, LimitError
from retrieval_pipeline.media import parse_input, to_rgb

TOL = 1e-5
CHELSEA = MEDIA / "chelsea.jpg"
FRAMES = [MEDIA / f"frame_{i}.png" for i in range(4)]
VIDEO = MEDIA / "moving_square.mp4"


def close(a, b, tol=TOL):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


@pytest.fixture(scope="module")
def chelsea_vec(embedder):
    return embedder.embed([{"image": str(CHELSEA)}])[0]


# ---------------------------------------------------------------------------------------------------------------
# Image sources


def test_image_sources_agree(embedder, chelsea_vec, media_server):
    data = CHELSEA.read_bytes()
    sources = [
        CHELSEA,  # pathlib.Path
        f"file://{CHELSEA}",
        f"{media_server}/chelsea.jpg",
        Image.open(CHELSEA),
        data,
        bytearray(data),
        "data:image/jpeg;base64," + base64.b64encode(data).decode(),
    ]
    out = embedder.embed([{"image": s} for s in sources])
    for source, vec in zip(sources, out):
        assert close(vec, chelsea_vec), f"source {type(source).__name__} differs"


def test_relative_path(embedder, chelsea_vec, monkeypatch):
    monkeypatch.chdir(MEDIA)
    assert close(embedder.embed([{"image": "chelsea.jpg"}])[0], chelsea_vec)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb(embedder, tmp_path, mode):
    img = Image.open(CHELSEA).convert("RGB")
    if mode in ("I;16", "I", "F"):
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(arr.astype(np.uint16)) if mode == "I;16" else Image.fromarray(arr).convert(mode)
    elif mode == "PA":
        converted = img.convert("RGBA").convert("PA") if hasattr(Image, "Palette") else img.convert("P")
    else:
        converted = img.convert(mode)
    rgb = to_rgb(converted)
    assert rgb.mode == "RGB" and rgb.size == img.size
    if mode in ("I;16", "I", "F"):
        # 16-bit data is scaled to 8 bits, not clipped to white
        assert abs(np.asarray(rgb)[..., 0].astype(int) - np.asarray(img.convert("L")).astype(int)).max() <= 1
    vec = embedder.embed([converted])[0]
    assert np.isfinite(vec).all() and abs(np.linalg.norm(vec) - 1) < 1e-5


def test_rgba_composited_on_white_like_the_reference(embedder, public):
    rgba = Image.open(MEDIA / "chelsea_rgba.png")
    assert rgba.mode == "RGBA"
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    a, b = embedder.embed([{"image": str(MEDIA / "chelsea_rgba.png")}, white])
    assert close(a, b)


def test_exif_orientation_is_honoured(embedder, tmp_path):
    upright = Image.open(MEDIA / "astronaut.jpg").convert("RGB")
    # Stored rotated, with an EXIF tag saying "rotate 90 CW to display" (orientation 6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    a, b, c = embedder.embed([{"image": str(path)}, upright, stored])
    assert close(a, b)
    assert not close(a, c, 1e-3)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb: tiny file, huge image)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_refused_before_decoding(embedder, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_size(60000, 60000))
    with pytest.raises(LimitError, match="too large") as info:  # a limit (413 on a server), naming it
        embedder.embed(["fine", {"image": str(path)}])
    assert info.value.index == 1 and info.value.field == "image" and info.value.limit == "max_image_pixels"
    with pytest.raises(LimitError, match="too large"):  # past Pillow's own refusal (178 M pixels) too
        embedder.embed([{"image": _png_with_size(50000, 50000)}])


# ---------------------------------------------------------------------------------------------------------------
# Videos


def test_video_file_with_fps_and_max_frames(embedder):
    a, b, c = embedder.embed(
        [
            {"video": str(VIDEO), "fps": 2.0, "max_frames": 8},
            {"video": f"file://{VIDEO}", "fps": 2.0, "max_frames": 8},
            {"video": str(VIDEO), "fps": 2.0, "max_frames": 4},
        ]
    )
    assert close(a, b)
    assert not close(a, c, 1e-4)


def test_video_url(embedder, media_server):
    a, b = embedder.embed(
        [{"video": str(VIDEO), "fps": 2.0}, {"video": f"{media_server}/moving_square.mp4", "fps": 2.0}]
    )
    assert close(a, b)


def test_frame_list_paths_and_pil_agree(embedder):
    same_size = [FRAMES[0], FRAMES[2]]
    a, b = embedder.embed([{"video": [str(p) for p in same_size]}, {"video": [Image.open(p) for p in same_size]}])
    assert close(a, b)


def test_frames_of_different_sizes_are_resized_not_dropped(embedder):
    frames = [Image.open(p).convert("RGB") for p in FRAMES]
    assert len({f.size for f in frames}) > 1
    size = frames[0].size
    resized = [f.resize(size, Image.Resampling.BICUBIC) for f in frames]
    a, b, c = embedder.embed([{"video": [str(p) for p in FRAMES]}, {"video": resized}, {"video": resized[:2]}])
    assert close(a, b)
    assert not close(a, c, 1e-4)  # all four frames count


def test_frame_list_thinned_to_max_frames(embedder):
    frames = [Image.open(FRAMES[0]).convert("RGB").rotate(10 * i) for i in range(9)]
    kept = [frames[i] for i in np.linspace(0, 8, 3, dtype=int)]
    a, b = embedder.embed([{"video": frames, "max_frames": 3}, {"video": kept}])
    assert close(a, b)


def test_mixed_objects_and_lists(embedder):
    items = [
        {"text": ["a chart", "of revenue"], "image": [str(CHELSEA), str(MEDIA / "coffee.jpg")]},
        {"text": "clip", "image": str(CHELSEA), "video": str(VIDEO), "fps": 2.0, "max_frames": 4},
        {"video": [str(VIDEO), [str(FRAMES[0]), str(FRAMES[2])]], "max_frames": 4},
    ]
    out = embedder.embed(items)
    assert out.shape == (3, embedder.hidden_size)
    one = np.stack([embedder.embed([x])[0] for x in items])
    assert close(out, one)


# ---------------------------------------------------------------------------------------------------------------
# Errors: typed, naming the item, the field and the reason; raised before any model work


@pytest.fixture
def forward_calls(embedder, monkeypatch):
    calls = []
    original = embedder._forward

    def counting(items):
        calls.append(len(items))
        return original(items)

    monkeypatch.setattr(embedder, "_forward", counting)
    return calls


def _expect(embedder, bad, match, field, forward_calls):
    with pytest.raises(InputError, match=match) as info:
        embedder.embed(["a good first item", bad])
    err = info.value
    assert isinstance(err, ValueError)
    assert err.index == 1 and err.field == field
    assert "input 1" in str(err)
    return err


def test_missing_file(embedder, forward_calls):
    _expect(embedder, {"image": "/no/such/file.png"}, "file not found", "image", forward_calls)
    _expect(embedder, {"video": "/no/such/clip.mp4"}, "file not found", "video", forward_calls)
    _expect(embedder, {"video": ["/no/such/f0.png", "/no/such/f1.png"]}, "file not found", "video", forward_calls)
    assert forward_calls == []


def test_corrupt_files(embedder, tmp_path, forward_calls):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    _expect(embedder, {"image": str(junk)}, "not a readable image", "image", forward_calls)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(CHELSEA.read_bytes()[:600])
    _expect(embedder, {"image": str(truncated)}, "truncated|corrupt|cannot read", "image", forward_calls)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    _expect(embedder, {"video": str(bad_video)}, "unreadable video", "video", forward_calls)
    _expect(embedder, {"image": "data:image/png;base64,@@notbase64@@"}, "base64", "image", forward_calls)


def test_zero_frame_video(embedder, tmp_path, forward_calls):
    import av

    path = tmp_path / "empty.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height = 64, 64
    container.start_encoding()  # header and trailer, no frame
    container.close()
    assert path.stat().st_size > 0
    _expect(embedder, {"video": str(path)}, "no frames|unreadable video", "video", forward_calls)
    assert forward_calls == []


def test_unsupported_and_wrong_types(embedder, forward_calls):
    _expect(embedder, 42, "unsupported input type int", None, forward_calls)
    _expect(embedder, {"txt": "typo"}, "unknown field", None, forward_calls)
    _expect(embedder, {"text": 7}, "expected a str or a list of str", "text", forward_calls)
    _expect(embedder, {"image": 3.5}, "unsupported image type float", "image", forward_calls)
    _expect(embedder, {"video": 12}, "expected a video", "video", forward_calls)
    _expect(embedder, {"video": []}, "at least one frame", "video", forward_calls)
    _expect(embedder, {"text": "x", "fps": -1}, "positive number", "fps", forward_calls)
    _expect(embedder, {"text": "x", "instruction": 5}, "expected a str", "instruction", forward_calls)
    assert forward_calls == []


def test_empty_and_non_list_inputs(embedder):
    with pytest.raises(InputError, match="empty"):
        embedder.embed([])
    with pytest.raises(InputError, match="expected a list"):
        embedder.embed("just a string")
    with pytest.raises(InputError, match="expected a list"):
        embedder.embed({"text": "a dict"})


def test_unreachable_and_failing_urls(embedder, media_server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(InputError, match="unreachable") as info:
        embedder.embed([{"image": f"http://127.0.0.1:{closed_port}/x.png"}])
    assert info.value.index == 0 and info.value.field == "image"
    with pytest.raises(InputError, match="HTTP 404"):
        embedder.embed([{"image": f"{media_server}/missing.png"}])


def test_url_timeout(public, media_server):
    from conftest import TINY

    from retrieval_pipeline import Qwen3VLEmbedder

    fast = Qwen3VLEmbedder(str(TINY), url_timeout=0.5, **public["settings"])
    with pytest.raises(InputError, match="timed out"):
        fast.embed([{"image": f"{media_server}/slow/chelsea.jpg"}])


def test_parse_reports_field_and_index():
    with pytest.raises(InputError) as info:
        parse_input({"image": ["/no/such.png"]}, index=7)
    assert (info.value.index, info.value.field) == (7, "image")
    assert str(info.value).startswith("input 7, field 'image': file not found")


def test_never_embeds_null_in_place_of_a_failed_input(embedder, tmp_path):
    junk = Path(tmp_path / "broken.jpg")
    junk.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.raises(InputError):
        embedder.embed([{"image": str(junk)}])
