"""Video files: the frame-by-frame reader equals qwen-vl-utils, long videos fit max_length, limits and bad fields."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import MEDIA, TINY
from PIL import Image
from qwen_vl_utils import process_vision_info
from qwen_vl_utils import vision_process as qvu

from retrieval_pipeline import InputError, LimitError
from retrieval_pipeline.media import load_input, parse_input
from retrieval_pipeline.media.video import plan_video, probe, read_video
from retrieval_pipeline.models.encoding import MediaSettings, encode_conversation, rerank_conversation
from retrieval_pipeline.models.vision import fetch_vision

VIDEO = MEDIA / "moving_square.mp4"
FRAMES = [MEDIA / f"frame_{i}.png" for i in range(4)]


def make_video(path: Path, width: int, height: int, frames: int, rate: Fraction | int) -> Path:
    """An H.264 file of a gradient with a moving square: a few KB even at 720p (near-static content, crf 45)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "45"}
        base = np.zeros((height, width, 3), np.uint8)
        base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
        base[..., 2] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
        side = max(8, height // 8)
        for i in range(frames):
            img = base.copy()
            x = (width - side) * i // max(1, frames - 1)
            img[height // 3 : height // 3 + side, x : x + side] = (255, 255, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def long_720p(tmp_path_factory) -> Path:
    """30 s of 1280x720 at 4 fps: 15 frame pairs of 720 tokens each at fps 1 -- over the embedder's 8192."""
    return make_video(tmp_path_factory.mktemp("video") / "long_720p.mp4", 1280, 720, 120, 4)


@pytest.fixture(scope="module")
def processor(embedder):
    return embedder.processor


def _fetch_reference(ele: dict) -> tuple[torch.Tensor, dict]:
    return qvu.fetch_video(dict(ele), image_patch_size=16, return_video_metadata=True)


# ---------------------------------------------------------------------------------------------------------------
# The reader equals qwen-vl-utils exactly


@pytest.mark.parametrize(
    "which, settings",
    [
        ("parity", {"fps": 2.0, "max_frames": 8}),
        ("long", {"fps": 1.0, "max_frames": 64}),
        ("long", {"fps": 2.0, "max_frames": 16, "video_start": 3.3, "video_end": 20.1}),
        ("long", {"fps": 1.0, "max_frames": 64, "total_pixels": 3_000_000}),  # a budgeted plan
    ],
)
@pytest.mark.slow
def test_reader_equals_qwen_vl_utils(which, settings, long_720p):
    path = str(VIDEO if which == "parity" else long_720p)
    ele = {"video": path, **settings}
    expected, expected_meta = _fetch_reference(ele)
    plan = plan_video(probe(path), ele)
    got = read_video(plan)
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)
    assert plan.metadata() == expected_meta


def test_fetch_vision_equals_process_vision_info_when_it_fits(processor):
    """Video file, frame list and image together: identical tensors, metadata and kwargs (no budget binds)."""
    content = [
        {"type": "video", "video": str(VIDEO), "fps": 2.0, "max_frames": 8},
        {"type": "video", "video": [Image.open(f).convert("RGB").resize((192, 128)) for f in FRAMES]},
        {"type": "image", "image": str(MEDIA / "chelsea.jpg"), "min_pixels": 4096, "max_pixels": 65536},
        {"type": "text", "text": "a clip"},
    ]
    conversation = [{"role": "user", "content": content}]
    expected = process_vision_info(
        [conversation], image_patch_size=16, return_video_kwargs=True, return_video_metadata=True
    )
    got = fetch_vision(conversation, processor, token_limit=8192, truncation=True)
    assert got[2] == expected[2]
    assert [np.asarray(i).tolist() for i in got[0]] == [np.asarray(i).tolist() for i in expected[0]]
    for (tensor, meta), (ref_tensor, ref_meta) in zip(got[1], expected[1], strict=True):
        assert torch.equal(tensor, ref_tensor)
        assert meta == ref_meta


# ---------------------------------------------------------------------------------------------------------------
# Token budget


def _video_conversation(path: str, text: str = "a long clip") -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]},
        {
            "role": "user",
            "content": [
                {"type": "video", "video": path, "fps": 1.0, "max_frames": 64},
                {"type": "text", "text": text},
            ],
        },
    ]


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory) -> dict[str, Path]:
    """Sizes off the 32-pixel grid, frame rates that are not whole numbers, frame counts that are not even."""
    folder = tmp_path_factory.mktemp("odd-videos")
    return {
        "wide": make_video(folder / "wide.mp4", 330, 98, 45, 15),
        "tall": make_video(folder / "tall.mp4", 100, 250, 31, Fraction(30000, 1001)),
        "hd": make_video(folder / "hd.mp4", 1280, 720, 21, 7),
    }


def _placeholder_ids(processor, conversation) -> list[int]:
    text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
    return processor.tokenizer(text)["input_ids"][0]


@pytest.mark.parametrize(
    "which, settings",
    [
        ("parity", {"fps": 2.0, "max_frames": 8}),
        ("parity", {"fps": 0.5, "max_frames": 64}),
        ("wide", {"fps": 1.0, "max_frames": 64}),
        ("wide", {"fps": 3.0, "max_frames": 10}),
        ("tall", {"fps": 2.5, "max_frames": 64}),
        ("tall", {"fps": 1.0, "max_frames": 64, "total_pixels": 200_000}),
        ("hd", {"fps": 7.0, "max_frames": 64}),
        ("hd", {"fps": 1.0, "max_frames": 4, "video_start": 0.5}),
    ],
)
def test_predicted_tokens_and_grid_equal_the_processors_output(processor, odd_videos, which, settings):
    """The budget's prediction (VisionTokens over the frame plan) against what the installed processor makes of the
    same conversation: the whole length, the video grid, and the tokens after the last pad."""
    from retrieval_pipeline.models.vision import vision_tokens

    path = str(VIDEO if which == "parity" else odd_videos[which])
    ele = {"video": path, **settings}
    plan = plan_video(probe(path), ele)
    conversation = [{"role": "user", "content": [{"type": "video", **ele}, {"type": "text", "text": "a clip"}]}]
    out = encode_conversation(processor, conversation, max_length=None, truncation=False)
    expansion = vision_tokens(processor).plan(plan)
    prompt = _placeholder_ids(processor, conversation)
    assert len(out) == len(prompt) - 3 + expansion.tokens
    patch = processor.video_processor.patch_size
    assert out.video_grid_thw[0].tolist() == [math.ceil(plan.nframes / 2), plan.height // patch, plan.width // patch]
    ids = out.input_ids.tolist()
    last_pad = max(i for i, t in enumerate(ids) if t == processor.video_token_id)
    after_placeholder = len(prompt) - prompt.index(processor.video_token_id) - 2  # text after the placeholder
    assert len(ids) - 1 - last_pad - after_placeholder == expansion.tail


@pytest.mark.parametrize("count", [1, 3, 4])
def test_predicted_tokens_of_a_frame_list_equal_the_processors_output(processor, count):
    """A video given as frames (an odd count is padded to whole frame pairs by the processor)."""
    from retrieval_pipeline.models.vision import vision_tokens

    frames = [Image.open(f).convert("RGB").resize((200, 90)) for f in FRAMES[:count]]
    conversation = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "x"}]}]
    _images, videos, _kwargs = fetch_vision(conversation, processor, token_limit=None, truncation=False)
    ((video, meta),) = videos
    out = encode_conversation(processor, conversation, max_length=None, truncation=False)
    expansion = vision_tokens(processor).video(
        video.shape[0], video.shape[2], video.shape[3], meta["frames_indices"], meta["fps"]
    )
    assert len(out) == len(_placeholder_ids(processor, conversation)) - 3 + expansion.tokens


@pytest.mark.parametrize("size", [(64, 64), (96, 320), (410, 130), (1000, 1000)])
def test_predicted_image_tokens_equal_the_processors_output(processor, embedder, size):
    """Images: the header check's count (qwen-vl-utils' resize, the processor's expansion) equals the processor's."""
    from retrieval_pipeline.models.encoding import image_tokens

    image = Image.new("RGB", size, (120, 30, 200))
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "x"}]}]
    out = encode_conversation(processor, conversation, max_length=None, truncation=False)
    prompt = _placeholder_ids(processor, conversation)
    # the conversation's image item carries qwen-vl-utils' default pixel bounds; the check uses the embedder's
    settings = MediaSettings(min_pixels=qvu.IMAGE_MIN_TOKEN_NUM * 1024, max_pixels=qvu.IMAGE_MAX_TOKEN_NUM * 1024)
    assert len(out) == len(prompt) - 3 + image_tokens(*size, settings, processor)
    assert image_tokens(*size, embedder.media, processor) == image_tokens(*size, embedder.media)  # the estimate agrees


@pytest.mark.slow
def test_token_count_is_exact_and_budget_binds_only_past_the_limit(processor, long_720p):
    """The predicted length equals the processor's; a limit one token short of it makes the budget bind."""
    conversation = _video_conversation(str(long_720p))
    free = encode_conversation(processor, conversation, max_length=None, truncation=False)
    length = len(free)  # the reference's plan, unbudgeted: 15 pairs of 720 tokens
    assert length > 8192
    assert int(free.video_grid_thw[0].prod()) // 4 == 15 * 720

    at_limit = encode_conversation(processor, conversation, max_length=None, truncation=False, text_budget=length - 5)
    assert torch.equal(at_limit.input_ids, free.input_ids)  # the reranker keeps max_length + 5 tokens untouched
    assert torch.equal(at_limit.pixel_values_videos, free.pixel_values_videos)

    over = encode_conversation(processor, conversation, max_length=None, truncation=False, text_budget=length - 6)
    assert len(over) <= length - 6
    assert over.video_grid_thw[0, 0] == free.video_grid_thw[0, 0]  # every frame kept, smaller
    assert int(over.video_grid_thw[0, 1:].prod()) < int(free.video_grid_thw[0, 1:].prod())


@pytest.mark.slow
def test_long_video_embeds_within_max_length(embedder, long_720p):
    """Issue 10.1: a 30-s 720p file used to stop indexing (its video tokens were truncated)."""
    parsed = parse_input({"video": str(long_720p)})
    enc = embedder.encode_input(parsed, 0, None)
    assert len(enc) <= embedder.max_length
    merge = embedder.processor.image_processor.merge_size**2
    assert int((enc.input_ids == embedder.processor.video_token_id).sum()) == int(enc.video_grid_thw.prod()) // merge
    out = embedder.embed([{"video": str(long_720p), "text": "a moving square"}])
    assert out.shape == (1, 64) and np.isfinite(out).all()


@pytest.mark.slow
def test_embedder_keeps_text_truncation_of_the_reference(processor, long_720p):
    """When the video fits but long text does not, the reference truncates the text: the video is not budgeted."""
    conversation = _video_conversation(str(long_720p))
    free = encode_conversation(processor, conversation, max_length=None, truncation=False)
    limit = len(free) - 3  # cuts only the end of the prompt, after the video
    enc = encode_conversation(processor, conversation, max_length=limit, truncation=True, text_budget=limit)
    assert torch.equal(enc.pixel_values_videos, free.pixel_values_videos)
    assert torch.equal(enc.input_ids, free.input_ids[:limit])


@pytest.mark.slow
def test_reranker_pair_fits_its_max_length(reranker, long_720p):
    query = {"text": "a yellow square moving right"}
    document = {"video": str(long_720p), "text": "screen recording"}
    media = MediaSettings()
    conversation = rerank_conversation(
        [{"type": "text", "text": query["text"]}],
        [
            {"type": "video", "video": str(long_720p), "fps": media.fps, "max_frames": media.max_frames},
            {"type": "text", "text": document["text"]},
        ],
        "Given a search query, retrieve relevant candidates that answer the query.",
    )
    enc = encode_conversation(
        reranker.processor, conversation, max_length=None, truncation=False, text_budget=reranker.max_length
    )
    assert len(enc) <= reranker.max_length
    scores = reranker.score(query, [document])
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0


def test_budget_lowers_frames_when_frames_are_already_smallest(processor, long_720p):
    conversation = _video_conversation(str(long_720p))
    enc = encode_conversation(processor, conversation, max_length=1200, truncation=True, text_budget=1200)
    assert len(enc) <= 1200
    assert int(enc.video_grid_thw[0, 0]) < 15  # fewer frame pairs than the reference's 15
    with pytest.raises(InputError, match="max_length") as info:
        encode_conversation(processor, conversation, max_length=60, truncation=True, text_budget=60)
    assert info.value.field == "video"


# ---------------------------------------------------------------------------------------------------------------
# Bad fields: clear errors naming the field


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"max_frames": 1}, "max_frames"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"video_start": float("nan")}, "video_start"),
        ({"video_start": float("inf")}, "video_start"),
        ({"video_end": float("inf")}, "video_end"),
        ({"video_start": 3.0}, "video_start"),  # the parity video lasts 3 s
        ({"video_start": 50.0, "video_end": 60.0}, "video_start"),
    ],
)
def test_bad_video_fields_name_the_field(embedder, extra, field):
    with pytest.raises(InputError) as info:
        embedder.embed([{"video": str(VIDEO), **extra}])
    assert info.value.field == field
    assert info.value.index == 0


def test_segment_too_short_and_max_frames_one_for_frames(embedder):
    with pytest.raises(InputError, match="fewer than 2 frames") as info:
        embedder.embed([{"video": str(VIDEO), "video_start": 2.95}])
    assert info.value.field == "video_start"
    # max_frames 1 stays valid for a frame list (thinned to one frame, as the reference does)
    out = embedder.embed([{"video": [str(f) for f in FRAMES], "max_frames": 1}])
    assert out.shape == (1, 64)


def test_plan_checks_the_segment_of_a_fetched_video():
    """A URL's header is known only after download: plan_video itself refuses a start past the end."""
    header = probe(str(VIDEO))
    with pytest.raises(InputError) as info:
        plan_video(header, {"video": str(VIDEO), "fps": 1.0, "max_frames": 8, "video_start": 10.0})
    assert info.value.field == "video_start"
    with pytest.raises(InputError) as info:
        plan_video(header, {"video": str(VIDEO), "fps": 1.0, "max_frames": 1})
    assert info.value.field == "max_frames"


def test_load_keeps_segment_fields():
    loaded = load_input(parse_input({"video": str(VIDEO), "video_start": 0.5, "video_end": 2.5}))
    assert (loaded.video_start, loaded.video_end) == (0.5, 2.5)


# ---------------------------------------------------------------------------------------------------------------
# Header limits and memory
@pytest.mark.slow
def test_frame_size_limit_refused_from_the_header(embedder, tmp_path):
    path = make_video(tmp_path / "huge.mp4", 8704, 4352, 2, 1)  # 37.9 M pixels a frame, above DCI 8K
    with pytest.raises(LimitError) as info:
        embedder.embed([{"video": str(path)}])
    assert info.value.limit == "max_video_frame_pixels" and info.value.field == "video"


def test_duration_limit_refused_from_the_header(embedder, tmp_path):
    path = make_video(tmp_path / "slow.mp4", 64, 64, 3, Fraction(1, 60000))  # 3 frames, 50 hours
    with pytest.raises(LimitError) as info:
        embedder.embed([{"video": str(path)}])
    assert info.value.limit == "max_video_seconds"


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    from retrieval_pipeline import Qwen3VLEmbedder
    embedder = Qwen3VLEmbedder(sys.argv[1])
    embedder.embed(["warm up"])
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak
    idle = status("VmRSS")
    out = embedder.embed([{"video": sys.argv[2], "fps": 8.0}])
    print(json.dumps({"over_idle": status("VmHWM") - idle, "shape": list(out.shape)}))
    """
)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_8k_video_embeds_in_bounded_memory(tmp_path):
    """Issue 10.11: qwen-vl-utils decodes all 16 sampled 8K frames at full size and resizes them as floats (about
    8 GiB); frame-by-frame decoding at the model's size stays far under 2 GiB over idle."""
    path = make_video(tmp_path / "8k.mp4", 7680, 4320, 16, 8)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(TINY), str(path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 64]
    assert report["over_idle"] < 1.5 * 2**30, f"{report['over_idle'] / 2**20:.0f} MiB over idle"


def test_header_is_cheap_and_exact(long_720p):
    header = probe(str(long_720p))
    assert (header.width, header.height, header.frames) == (1280, 720, 120)
    assert math.isclose(header.fps, 4.0) and math.isclose(header.duration, 30.0)


def test_the_projects_pixels_per_token_is_the_one_qwen_vl_utils_implies():
    from retrieval_pipeline import settings
    from retrieval_pipeline.media import video

    assert video.PIXELS_PER_TOKEN == settings.PIXELS_PER_TOKEN == 32 * 32
