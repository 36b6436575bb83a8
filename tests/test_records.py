"""The stored payload's schema in one place: building, reading back (older layouts too), the model input a point
stands for, its description, and what hits, the generator and the command line make of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from retrieval_pipeline.records import HIT_FIELDS, Record, item_for, sources_of
from retrieval_pipeline.retriever import Hit
from retrieval_pipeline.testing import make_text_pdf


def test_payload_round_trip_keeps_the_layout_and_unknown_keys():
    record = Record(
        "text",
        source="/a.md",
        text="chunk",
        file_name="a.md",
        metadata={"lang": "en"},
        chunk=2,
        span=[10, 20],
        sources=["/a.md", "/b.md"],
        files={"/a.md": {"chunk": 2}, "/b.md": {"chunk": 0}},
        content_hash="h",
    )
    payload = record.to_payload()
    assert payload == {
        "modality": "text",
        "source": "/a.md",
        "text": "chunk",
        "file_name": "a.md",
        "metadata": {"lang": "en"},
        "chunk": 2,
        "span": [10, 20],
        "sources": ["/a.md", "/b.md"],
        "files": {"/a.md": {"chunk": 2}, "/b.md": {"chunk": 0}},
        "content_hash": "h",
    }
    assert Record.from_payload(payload) == record
    future = {**payload, "added_later": [1, 2]}
    assert Record.from_payload(future).to_payload() == future  # unknown keys survive a read and a write
    assert record.file_fields() == {"file_name": "a.md", "metadata": {"lang": "en"}, "chunk": 2, "span": [10, 20]}


def test_older_payloads_without_sources_or_files_read_fine():
    old = {"modality": "image", "source": "/photo.jpg", "text": ""}
    record = Record.from_payload(old)
    assert record.sources == ["/photo.jpg"] == sources_of(old) and record.files == {}
    assert Record.from_payload({}).modality == "" and Record.from_payload({}).sources == []


def test_to_input_for_every_modality(tmp_path):
    assert Record("text", text="hello").to_input() == {"text": "hello"}
    assert Record("image", source="/p.jpg").to_input() == {"image": "/p.jpg"}
    assert Record("video", source="/v.mp4").to_input() == {"video": "/v.mp4"}
    segment = Record("video", source="/v.mp4", segment=[2.0, 4.5]).to_input()
    assert segment == {"video": "/v.mp4", "video_start": 2.0, "video_end": 4.5}
    mixed = {"text": "a", "image": ["/1.jpg", "/2.jpg"]}
    assert Record("mixed", item=mixed).to_input() == mixed
    pdf = make_text_pdf(tmp_path / "doc.pdf", ["first", "second"])
    page = Record("pdf-page", source=str(pdf), page=2, text="second").to_input()
    assert isinstance(page["image"], Image.Image) and page["image"].size[0] > 0
    with pytest.raises(ValueError, match="no usable item"):
        Record("hologram", source="/x").to_input()
    assert item_for({"modality": "text", "text": "t"}) == {"text": "t"}


def test_describe_and_what_a_generator_sees(tmp_path):
    assert Record("text", source="/a.md", chunk=0).describe() == "/a.md (chunk 0)"
    assert Record("pdf-page", source="/r.pdf", page=3).describe() == "/r.pdf (page 3)"
    assert Record("video", source="/v.mp4", segment=[0.0, 2.5]).describe() == "/v.mp4 (0-2.5s)"
    assert Record("text", text="t").context() == [{"text": "t"}]  # the text is the input: not repeated
    assert Record("image", source="/p.jpg").context() == [{"image": "/p.jpg"}]
    pdf = make_text_pdf(tmp_path / "doc.pdf", ["Revenue grew."])
    parts = Record("pdf-page", source=str(pdf), page=1, text="Revenue grew.").context()
    assert isinstance(parts[0]["image"], Image.Image) and parts[1] == {"text": "Page text: Revenue grew."}


def _hit(payload):
    return Hit("id", 0.9, 0.8, 0.9, payload, rank=1)


def test_hits_read_their_payload_through_the_record(tmp_path):
    payload = {
        "modality": "text",
        "source": "/a.md",
        "sources": ["/a.md"],
        "text": "x" * 400,
        "chunk": 1,
        "span": [0, 400],
        "metadata": {"k": 1},
        "files": {"/a.md": {"chunk": 1}},
        "content_hash": "h",
    }
    hit = _hit(payload)
    assert (hit.modality, hit.source, hit.describe(), hit.item) == (
        "text",
        "/a.md",
        "/a.md (chunk 1)",
        {"text": hit.text},
    )
    data = hit.to_dict()
    assert data == {
        "rank": 1,
        "id": "id",
        "score": 0.9,
        "vector_score": 0.8,
        "rerank_score": 0.9,
        "stage_one_rank": 0,
        "modality": "text",
        "source": "/a.md",
        "chunk": 1,
        "metadata": {"k": 1},
        "text": "x" * 300,
    }
    scores = {"rank", "id", "score", "vector_score", "rerank_score", "stage_one_rank", "text"}
    assert set(data) - scores <= set(HIT_FIELDS)


def test_the_generator_prompt_shows_each_hit_as_its_record_says(tmp_path):
    from retrieval_pipeline.models.generator import Qwen3VLGenerator

    pdf = make_text_pdf(tmp_path / "doc.pdf", ["Revenue grew."])
    hits = [
        _hit({"modality": "pdf-page", "source": str(pdf), "page": 1, "text": "Revenue grew."}),
        _hit({"modality": "text", "source": "/a.md", "text": "The cat sleeps.", "chunk": 0}),
    ]
    messages = Qwen3VLGenerator._rag_chat(SimpleNamespace(system_prompt="S"), "How did revenue do?", hits)
    content = messages[1]["content"]
    assert content[0] == {"text": f"[1] {pdf} (page 1)\n"}
    assert isinstance(content[1]["image"], Image.Image)
    assert content[2] == {"text": "Page text: Revenue grew."}
    assert content[3:6] == [{"text": "\n"}, {"text": "[2] /a.md (chunk 0)\n"}, {"text": "The cat sleeps."}]
    assert content[-2:] == [{"text": "Question: "}, {"text": "How did revenue do?"}]
