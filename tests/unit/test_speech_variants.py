"""Whisper variants: int8 graphs with one tied table, and pruning with distillation."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from builders.zoo.speech import pruning
from builders.zoo.speech.export import export_graphs
from builders.zoo.speech.quantize import quantize_graph
from builders.zoo.speech.sources import load_hf
from gateway.tasks.onnx_runner import GraphSessions

VOCAB = 51864


@pytest.fixture(scope="module")
def tiny(tiny_hf_dir):
    return load_hf(tiny_hf_dir)


@pytest.fixture(scope="module")
def tiny_graphs(tiny, tmp_path_factory):
    return export_graphs(tiny, tmp_path_factory.mktemp("tiny-onnx"))


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"mel": rng.standard_normal((2, 80, 3000)).astype(np.float32)}


def _decode_logits(runner, mel: np.ndarray, tokens: list[int]) -> np.ndarray:
    enc = runner({"mel": mel}, "encoder")
    shape = (*enc["cross_keys"].shape[:3], 0, enc["cross_keys"].shape[4])
    empty = np.zeros(shape, np.float32)
    out = runner(
        {
            "tokens": np.tile(np.array(tokens, np.int64), (mel.shape[0], 1)),
            "self_keys": empty,
            "self_values": empty,
            "cross_keys": enc["cross_keys"],
            "cross_values": enc["cross_values"],
        },
        "decoder",
    )
    return np.asarray(out["logits"])


def test_int8_stores_the_tied_table_once_in_int8(tiny_graphs, tmp_path):
    target = tmp_path / "decoder.onnx"
    quantize_graph(tiny_graphs["decoder"], target)
    model = onnx.load(str(target))
    tables = [i for i in model.graph.initializer if VOCAB in i.dims]
    big = [i for i in tables if len(i.dims) == 2]
    assert len(big) == 1 and big[0].data_type == onnx.TensorProto.INT8
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeMatMul" in ops and "Gemm" not in ops
    ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])


def test_int8_logits_follow_fp32(tiny_graphs, tmp_path):
    int8 = {name: tmp_path / path.name for name, path in tiny_graphs.items()}
    for name, path in tiny_graphs.items():
        quantize_graph(path, int8[name])
    mel = _feeds()["mel"]
    tokens = [50257, 50362, 440, 2068]
    want = _decode_logits(GraphSessions(tiny_graphs), mel, tokens)
    got = _decode_logits(GraphSessions(int8), mel, tokens)
    assert got.shape == want.shape == (2, 4, VOCAB)
    correlation = np.corrcoef(got.reshape(-1), want.reshape(-1))[0, 1]
    assert correlation > 0.98


def test_pruning_shrinks_every_mlp_keeping_the_important_units(tiny):
    windows = [torch.from_numpy(_feeds(i)["mel"][:1]) for i in range(2)]
    pruned = pruning.prune(copy.deepcopy(tiny), 0.5, windows)
    assert (pruned.dims.audio_mlp, pruned.dims.text_mlp) == (16, 12)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in tiny.parameters())
    # Every kept unit is one of the teacher's, weights unchanged.
    old, new = tiny.decoder.blocks[0].mlp, pruned.decoder.blocks[0].mlp
    rows = {tuple(r.tolist()) for r in old[0].weight.detach()}
    assert all(tuple(r.tolist()) in rows for r in new[0].weight.detach())
    assert torch.equal(new[2].bias, old[2].bias)


def test_distillation_moves_the_student_towards_the_teacher(tiny):
    windows = [torch.from_numpy(_feeds(i)["mel"][:1]) for i in range(2)]
    student = pruning.prune(copy.deepcopy(tiny), 0.5, windows)
    tokens = pruning.greedy_tokens(tiny, windows[0])

    def gap(model) -> float:
        with torch.no_grad():
            return float(
                torch.nn.functional.kl_div(
                    torch.log_softmax(model.logits(windows[0], tokens)[0], -1),
                    torch.log_softmax(tiny.logits(windows[0], tokens)[0], -1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    before = gap(student)
    recovered = pruning.distil(student, tiny, windows, steps=12)
    assert gap(recovered) < before
    assert not recovered.training


def test_shape_ranges_read_the_model_sizes_from_its_graphs(tiny_graphs):
    from builders.gpu_memory import estimate_variant_gpu_memory
    from builders.measure import largest_shapes
    from builders.zoo.speech.family import SpeechFamily

    family = SpeechFamily()
    ranges = family.graph_shape_ranges(tiny_graphs, max_batch_size=8)
    cache = {"self_keys", "self_values", "cross_keys", "cross_values"}
    assert set(ranges) == {"mel", "tokens", *cache}
    batch, new, past = (family.axis_ranges()[a] for a in ("batch", "new", "past"))
    # 2 layers, 2 heads of width 8 in the tiny model; 1500 audio positions.
    assert ranges["cross_keys"].max == (batch[2], 2, 2, 1500, 8)
    assert ranges["self_keys"].max == (batch[2], 2, 2, past[2], 8)
    assert ranges["tokens"].max == (batch[2], new[2]) and ranges["mel"].min == (1, 80, 3000)
    estimate = estimate_variant_gpu_memory(tiny_graphs.values(), largest_shapes(ranges))
    assert estimate.unknown_tensors == 0 and estimate.activations_bytes > 0
