"""The gateway on the real zoo models, driven by stock tritonclients on both protocols.

Uses the session's quick repository (built from the committed checkpoints). Held-out inputs
go in as a client would send them (JPEG/PNG bytes, uint8 pixels, WAV files, UTF-8 text) and
the answers are checked against the references: labels of the labelled photos and digits,
transcripts of real recordings (one of 44 s in one request), and, for translation, the same
graph run in-process plus a chrF floor against the human translations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sacrebleu
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builders.zoo.digits import data as digits_data
from builders.zoo.registry import get_family
from builders.zoo.speech import data as speech_data
from builders.zoo.speech.evaluation import error_rates
from builders.zoo.translation.corpus import read_split
from builders.zoo.vision import data as vision_data
from gateway.manifest import load_manifest
from gateway.tasks.onnx_runner import GraphSessions
from tests.support.wire import PROTOCOLS, Wire, objects, wav

pytestmark = pytest.mark.slow

DIGITS = 40
SENTENCES = 8


@pytest.fixture(scope="module")
def wires(
    quick_repository: Path, module_gateway_factory: Callable[..., Any]
) -> Iterator[dict[str, Wire]]:
    gateway = module_gateway_factory(quick_repository, request_timeout_s=120, task_threads=2)
    clients = {
        "grpc": grpcclient.InferenceServerClient(gateway.grpc_url),
        "http": httpclient.InferenceServerClient(gateway.http_url, network_timeout=300),
    }
    yield {protocol: Wire(protocol, client) for protocol, client in clients.items()}
    for client in clients.values():
        client.close()


def in_process(repository: Path, family_name: str, items: list[Any]) -> list[Any]:
    """What the family's fp32 graph answers when its task code runs it in this process."""
    family = get_family(family_name)
    manifest = load_manifest(repository / f"{family_name}.manifest.json")
    fp32 = manifest.variant("fp32")
    task = family.make_task(family.assets_dir)
    graphs = {g: fp32.graph_path(repository, g) for g in manifest.graph_names()}
    return list(task.run(items, GraphSessions(graphs)))


def texts(array: np.ndarray) -> list[str]:
    return [t.decode() if isinstance(t, bytes) else str(t) for t in array.reshape(-1)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_labelled_photos_get_their_labels(wires: dict[str, Wire], protocol: str) -> None:
    photos = [e for e in vision_data.load_eval_index() if e.accepted]
    assert len(photos) >= 5
    result = wires[protocol].infer(
        "vision", [("image", "BYTES", objects(*(p.read() for p in photos)))]
    )
    top1 = texts(result.outputs["labels"][:, 0])
    for photo, label in zip(photos, top1, strict=True):
        assert label in photo.accepted, (photo.file, label)
    assert result.parameters["served_model"].startswith("vision__")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_digits_get_their_labels(wires: dict[str, Wire], protocol: str) -> None:
    images, labels = digits_data.load_split("eval")
    pixels = images[:DIGITS, :, :, None].astype(np.uint8)
    result = wires[protocol].infer("digits__fp32", [("image", "UINT8", pixels)])
    top1 = [int(label) for label in texts(result.outputs["labels"][:, 0])]
    correct = sum(int(p == t) for p, t in zip(top1, labels[:DIGITS], strict=True))
    assert correct >= DIGITS - 1, f"{correct}/{DIGITS} digits right"
    assert result.parameters["served_model"] == "digits__fp32" and result.reason == "pinned"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_recordings_are_transcribed(
    quick_repository: Path, wires: dict[str, Wire], protocol: str
) -> None:
    recordings = speech_data.real_recordings()[:4]
    result = wires[protocol].infer(
        "speech__fp32", [("audio", "BYTES", objects(*(wav(u.waveform) for u in recordings)))]
    )
    got = texts(result.outputs["text"])
    assert got == in_process(quick_repository, "speech", [u.waveform for u in recordings])
    assert error_rates([u.text for u in recordings], got)["wer"] <= 12.0, got


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_44_second_recording_is_one_request(wires: dict[str, Wire], protocol: str) -> None:
    long = speech_data.long_recording()
    result = wires[protocol].infer("speech", [("audio", "FP32", long.waveform[None, :])])
    (text,) = texts(result.outputs["text"])
    assert error_rates([long.text], [text])["wer"] <= 15.0, text
    assert result.parameters["served_model"].startswith("speech__")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_sentences_are_translated(
    quick_repository: Path, wires: dict[str, Wire], protocol: str
) -> None:
    pairs = read_split("heldout")[:SENTENCES]
    english = [p.en for p in pairs]
    result = wires[protocol].infer(
        "translation__fp32", [("text", "BYTES", objects(*(t.encode() for t in english)))]
    )
    got = texts(result.outputs["text"])
    assert got == in_process(quick_repository, "translation", english)
    chrf = sacrebleu.corpus_chrf(got, [[p.de for p in pairs]]).score
    assert chrf >= 30.0, list(zip(english, got, strict=True))
