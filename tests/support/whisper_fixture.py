"""Tiny two-graph Whisper-shaped variants with predictable transcripts, for gateway tests.

They honour the speech family's graph contract (``gateway.tasks.speech``) and run the real
Whisper task code with the real vocabulary: a window with sound (any mel value above 0.25)
transcribes to "a", silence to "". The encoder's one cross-attention "key" is that sound
flag; the decoder emits the token " a" at the first step when the flag is set and the end of
text after it; without the flag it makes ``<|nocaptions|>`` near certain, so the task's
no-speech test drops the window, as it does for silence with the real model.
"""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper

from builders.zoo.speech.assets import ASSETS_DIR
from gateway.manifest import GraphSpec, TensorSpec
from tests.support.repo_fixture import _const, _model

VOCAB = 51864
EOT = 50256
NO_SPEECH = 50361
TOKEN_A = 257
"""Id of " a" (a space and the letter) in Whisper's vocabulary."""
CACHE = [1, 1, -1, 1]  # layers, heads, positions, head_dim


def encoder_graph() -> bytes:
    """mel [B,80,3000] → cross_keys/values [B,1,1,2,1] holding the sound flag."""
    nodes = [
        helper.make_node("ReduceMax", ["mel"], ["peak"], axes=[1, 2], keepdims=0),
        helper.make_node("Greater", ["peak", "threshold"], ["loud"]),
        helper.make_node("Cast", ["loud"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["flag", "shape"], ["flag5"]),
        helper.make_node("Expand", ["flag5", "expand"], ["cross_keys"]),
        helper.make_node("Identity", ["cross_keys"], ["cross_values"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["B", 80, 3000])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 1, 1, 2, 1])
            for n in ("cross_keys", "cross_values")
        ],
        [
            _const("threshold", np.array(0.25, np.float32)),
            _const("shape", np.array([-1, 1, 1, 1, 1], np.int64)),
            _const("expand", np.array([1, 1, 1, 2, 1], np.int64)),
        ],
    )


def decoder_graph() -> bytes:
    """First step: " a" if the flag is set, else end of text; later steps: end of text."""
    onehot_a = np.zeros(VOCAB, np.float32)
    onehot_a[TOKEN_A] = 10.0
    onehot_eot = np.zeros(VOCAB, np.float32)
    onehot_eot[EOT] = 5.0
    onehot_quiet = np.zeros(VOCAB, np.float32)
    onehot_quiet[NO_SPEECH] = 20.0
    nodes = [
        # first = 1 when the cache is empty (P == 0)
        helper.make_node("Shape", ["self_keys"], ["kshape"]),
        helper.make_node("Gather", ["kshape", "three"], ["past"]),
        helper.make_node("Equal", ["past", "zero_i"], ["is_first"]),
        helper.make_node("Cast", ["is_first"], ["first"], to=TensorProto.FLOAT),
        # flag [B] from the cross keys
        helper.make_node("ReduceMax", ["cross_keys"], ["flag"], axes=[1, 2, 3, 4], keepdims=0),
        helper.make_node("Mul", ["flag", "first"], ["say_a"]),
        helper.make_node("Unsqueeze", ["say_a", "axes12"], ["say_a3"]),  # [B,1,1]
        helper.make_node("Mul", ["say_a3", "onehot_a"], ["a_part"]),  # [B,1,V]
        helper.make_node("Sub", ["one_f", "flag"], ["quiet"]),
        helper.make_node("Unsqueeze", ["quiet", "axes12"], ["quiet3"]),
        helper.make_node("Mul", ["quiet3", "onehot_quiet"], ["quiet_part"]),
        helper.make_node("Add", ["a_part", "onehot_eot"], ["speech_row"]),
        helper.make_node("Add", ["speech_row", "quiet_part"], ["row"]),
        helper.make_node("Shape", ["tokens"], ["tshape"]),
        helper.make_node("Concat", ["tshape", "vocab"], ["lshape"], axis=0),
        helper.make_node("Expand", ["row", "lshape"], ["logits"]),
        # the cache grows by T positions of zeros
        helper.make_node("Gather", ["tshape", "zero_i"], ["batch"]),
        helper.make_node("Gather", ["tshape", "one_i"], ["new"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Unsqueeze", ["new", "axis0"], ["new1"]),
        helper.make_node("Concat", ["batch1", "ones2", "new1", "ones1"], ["gshape"], axis=0),
        helper.make_node("ConstantOfShape", ["gshape"], ["grow"]),
        helper.make_node("Concat", ["self_keys", "grow"], ["self_keys_out"], axis=3),
        helper.make_node("Concat", ["self_values", "grow"], ["self_values_out"], axis=3),
    ]
    cache_in = ["B", 1, 1, "P", 1]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("self_keys", TensorProto.FLOAT, cache_in),
            helper.make_tensor_value_info("self_values", TensorProto.FLOAT, cache_in),
            helper.make_tensor_value_info("cross_keys", TensorProto.FLOAT, ["B", 1, 1, 2, 1]),
            helper.make_tensor_value_info("cross_values", TensorProto.FLOAT, ["B", 1, 1, 2, 1]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", VOCAB]),
            helper.make_tensor_value_info("self_keys_out", TensorProto.FLOAT, ["B", 1, 1, "Q", 1]),
            helper.make_tensor_value_info(
                "self_values_out", TensorProto.FLOAT, ["B", 1, 1, "Q", 1]
            ),
        ],
        [
            _const("three", np.array(3, np.int64)),
            _const("zero_i", np.array(0, np.int64)),
            _const("one_i", np.array(1, np.int64)),
            _const("axes12", np.array([1, 2], np.int64)),
            _const("axis0", np.array([0], np.int64)),
            _const("onehot_a", onehot_a[None, None, :]),
            _const("onehot_eot", onehot_eot[None, None, :]),
            _const("onehot_quiet", onehot_quiet[None, None, :]),
            _const("one_f", np.array(1.0, np.float32)),
            _const("vocab", np.array([VOCAB], np.int64)),
            _const("ones2", np.array([1, 1], np.int64)),
            _const("ones1", np.array([1], np.int64)),
        ],
    )


def graphs() -> dict[str, bytes]:
    """Both graphs by name."""
    return {"encoder": encoder_graph(), "decoder": decoder_graph()}


def graph_specs() -> list[GraphSpec]:
    """The manifest's description of the two graphs."""
    fp32 = "FP32"
    return [
        GraphSpec(
            name="encoder",
            inputs=[TensorSpec(name="mel", datatype=fp32, dims=[80, 3000])],
            outputs=[
                TensorSpec(name=n, datatype=fp32, dims=[1, 1, 2, 1])
                for n in ("cross_keys", "cross_values")
            ],
        ),
        GraphSpec(
            name="decoder",
            inputs=[
                TensorSpec(name="tokens", datatype="INT64", dims=[-1]),
                TensorSpec(name="self_keys", datatype=fp32, dims=CACHE),
                TensorSpec(name="self_values", datatype=fp32, dims=CACHE),
                TensorSpec(name="cross_keys", datatype=fp32, dims=[1, 1, 2, 1]),
                TensorSpec(name="cross_values", datatype=fp32, dims=[1, 1, 2, 1]),
            ],
            outputs=[
                TensorSpec(name="logits", datatype=fp32, dims=[-1, VOCAB]),
                TensorSpec(name="self_keys_out", datatype=fp32, dims=CACHE),
                TensorSpec(name="self_values_out", datatype=fp32, dims=CACHE),
            ],
        ),
    ]


def assets(max_duration_s: float = 120.0) -> dict[str, bytes]:
    """The real vocabulary and decoding settings, with a shorter audio limit."""
    settings = json.loads((ASSETS_DIR / "whisper.json").read_text())
    settings["max_duration_s"] = max_duration_s
    return {
        "vocabulary.txt": (ASSETS_DIR / "vocabulary.txt").read_bytes(),
        "whisper.json": json.dumps(settings).encode(),
    }
