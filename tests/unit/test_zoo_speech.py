"""Whisper tiny.en exported to ONNX: the same transcripts as torch and as faster-whisper."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from builders.zoo.speech import data
from builders.zoo.speech.assets import ASSETS_DIR
from builders.zoo.speech.evaluation import error_rates
from builders.zoo.speech.export import export_graphs, torch_runner
from builders.zoo.speech.reference import reference_model, reference_transcript
from builders.zoo.speech.sources import load_ct2, packaged_model_dir
from gateway.tasks.onnx_runner import GraphSessions
from gateway.tasks.speech import WhisperTask


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return load_ct2(packaged_model_dir())


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    return export_graphs(model, tmp_path_factory.mktemp("whisper-onnx"))


@pytest.fixture(scope="module")
def onnx_runner(graphs):
    return GraphSessions(graphs, intra_op_threads=2)


@pytest.fixture(scope="module")
def task():
    return WhisperTask(ASSETS_DIR)


def test_the_tied_embedding_is_stored_once(graphs):
    decoder = onnx.load(str(graphs["decoder"]))
    tables = [i.name for i in decoder.graph.initializer if 51864 in i.dims]
    assert tables == ["model.decoder.token_embedding.weight"]
    encoder = onnx.load(str(graphs["encoder"]))
    assert not [i for i in encoder.graph.initializer if 51864 in i.dims]
    # The encoder computes the cross-attention keys/values: the decoder holds none of them.
    assert not [i.name for i in decoder.graph.initializer if "cross_attn.key" in i.name]


def test_onnx_transcripts_equal_torch_transcripts(model, onnx_runner, task):
    waves = [u.waveform for u in data.real_recordings()[:3]]
    assert task.run(waves, onnx_runner) == task.run(waves, torch_runner(model))


def test_onnx_transcripts_equal_faster_whisper_greedy(onnx_runner, task):
    pytest.importorskip("faster_whisper")
    reference = reference_model(threads=2)
    recordings = data.real_recordings()
    ours = task.run([u.waveform for u in recordings], onnx_runner)
    for utterance, text in zip(recordings, ours, strict=True):
        assert text == reference_transcript(reference, utterance.waveform), utterance.name
    assert error_rates([u.text for u in recordings], ours)["wer"] <= 10.0


def test_batched_rows_decode_as_they_would_alone(onnx_runner, task):
    waves = [u.waveform for u in data.real_recordings()[5:9]]
    together = task.run(waves, onnx_runner)
    assert together == [task.run([w], onnx_runner)[0] for w in waves]


def test_silence_gives_no_text(onnx_runner, task):
    assert task.run([np.zeros(16000 * 3, np.float32)], onnx_runner) == [""]


def test_a_44_second_recording_is_transcribed_window_by_window(onnx_runner, task):
    long = data.long_recording()
    assert long.seconds == pytest.approx(44.0, abs=0.1)
    assert len(task.windows(long.waveform)) == 2
    (text,) = task.run([long.waveform], onnx_runner)
    assert error_rates([long.text], [text])["wer"] <= 12.0
