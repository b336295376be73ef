"""A small model repository for gateway tests: tiny real ONNX graphs, real manifests.

Each family honours its task's tensor contract (ARCHITECTURE.md) and carries the assets the
task code reads, so requests run the real task code end to end. Graph outputs are simple and
predictable:

- ``digits`` (image-labels, 8x8 gray): a dark image is labelled "0", a bright one "9".
  Four published variants with distinct quality, memory and (declared) latency profiles plus
  one rejected, so routing decisions are deterministic.
- ``speech`` (audio-text): two graphs per variant (Whisper's ``encoder`` and ``decoder``,
  see ``whisper_fixture``); silence transcribes to "", sound to "a".
- ``translation`` (text-text): a copy model, so the output is the input text.
- ``busy`` (image-labels): ``fp32`` really costs tens of ms per item and its profile is
  measured when the fixture is built; ``small`` is fast. For load-driven routing.
- ``slow`` (image-labels): one variant whose profile claims 1 ms but whose graph is slow,
  for deadlines and shedding.
- ``flaky`` (image-labels): ``fp32`` works, ``int8``'s graph file is corrupt (unavailable),
  ``fp16`` returns logits of the wrong width (an internal error).
- ``broken``: a manifest that is not valid JSON.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sentencepiece as spm
from onnx import TensorProto, helper, numpy_helper

from gateway.layout import GRAPH_FILES, Runtime, graph_model_name, version_dir
from gateway.manifest import (
    Artifact,
    FamilyManifest,
    GraphSpec,
    LatencyPoint,
    MetricInfo,
    TensorSpec,
    Variant,
    model_name,
    write_manifest,
)

MIB = 1024 * 1024
OPSET = 17
DIGIT_LABELS = [str(i) for i in range(10)]
TRANSLATION_CORPUS = [
    "hello world",
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "good morning and good night",
    "open the window please",
    "where is the station",
    "this is a small test sentence",
]


def _model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def image_graph(num_labels: int = 10, heavy_rows: int = 0, heavy_layers: int = 0) -> bytes:
    """images [B,1,8,8] (0..16) → logits [B,num_labels]; dark → label 0, bright → last.

    With ``heavy_rows`` > 0 a branch of ``heavy_layers`` [B*rows,1024]x[1024,1024] matmuls
    is added (and multiplied by 0), so the cost per item is real and grows with the batch.
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["mean", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "ramp"], ["logits_base"]),
    ]
    inits = [
        _const("flat_shape", np.array([-1, 64], np.int64)),
        _const("centre", np.array([[8.0]], np.float32)),
        _const("ramp", np.arange(num_labels, dtype=np.float32)[None, :]),
    ]
    if heavy_rows:
        nodes += [
            helper.make_node("MatMul", ["flat", "w0"], ["h0"]),
            helper.make_node("Unsqueeze", ["h0", "axis1"], ["h1"]),
            helper.make_node("Expand", ["h1", "rows"], ["x0"]),
        ]
        inits += [
            _const("w0", (rng.standard_normal((64, 1024)) / 8).astype(np.float32)),
            _const("axis1", np.array([1], np.int64)),
            _const("rows", np.array([1, heavy_rows, 1], np.int64)),
            _const("w", (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)),
            _const("zero", np.array([[0.0]], np.float32)),
        ]
        for i in range(heavy_layers):
            nodes += [
                helper.make_node("MatMul", [f"x{i}", "w"], [f"m{i}"]),
                helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"]),
            ]
        nodes += [
            helper.make_node(
                "ReduceMean", [f"x{heavy_layers}"], ["heavy"], axes=[1, 2], keepdims=0
            ),
            helper.make_node("Unsqueeze", ["heavy", "axis1"], ["heavy2"]),
            helper.make_node("Mul", ["heavy2", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits_base", "nothing"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["logits_base"], ["logits"]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", num_labels])],
        inits,
    )


def copy_graph(vocab: int) -> bytes:
    """src_ids [B,S], tgt_ids [B,T] → logits [B,V] preferring src[:, T-1]: it copies."""
    nodes = [
        helper.make_node("Shape", ["tgt_ids"], ["tshape"]),
        helper.make_node("Gather", ["tshape", "one"], ["t"]),
        helper.make_node("Sub", ["t", "one"], ["pos"]),
        helper.make_node("Shape", ["src_ids"], ["sshape"]),
        helper.make_node("Gather", ["sshape", "one"], ["s"]),
        helper.make_node("Sub", ["s", "one"], ["last"]),
        helper.make_node("Min", ["pos", "last"], ["idx"]),
        helper.make_node("Gather", ["src_ids", "idx"], ["token"], axis=1),
        helper.make_node("OneHot", ["token", "depth", "values"], ["logits"], axis=-1),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("src_ids", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("tgt_ids", TensorProto.INT64, ["B", "T"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", vocab])],
        [
            _const("one", np.array(1, np.int64)),
            _const("depth", np.array(vocab, np.int64)),
            _const("values", np.array([0.0, 10.0], np.float32)),
        ],
    )


def points(p50_s: float, batches: tuple[int, ...] = (1, 4, 8)) -> list[LatencyPoint]:
    """A profile: p95 = 1.2 x p50; latency grows in proportion to batch and concurrency."""

    def point(batch: int, concurrency: int) -> LatencyPoint:
        p50 = p50_s * batch * concurrency
        return LatencyPoint(
            batch_size=batch,
            concurrency=concurrency,
            runs=20,
            p50_s=p50,
            p95_s=1.2 * p50,
            p99_s=1.3 * p50,
            throughput_per_s=batch / p50_s,
        )

    return [point(b, 1) for b in batches] + [point(1, c) for c in (2, 4)]


@dataclass(frozen=True)
class Spec:
    """One variant to write: its graph and the numbers the manifest declares."""

    name: str
    graph: bytes | dict[str, bytes]
    """The one graph, or every graph of a multi-graph variant by name."""
    quality: float
    gpu_memory_mb: float
    p50_s: float
    status: str = "published"
    precision: str = "fp32"
    runtime: Runtime = "onnx"


def write_family(
    repo: Path,
    family: str,
    task: str,
    assets: dict[str, bytes],
    specs: list[Spec],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int = 8,
    graphs: list[GraphSpec] | None = None,
) -> FamilyManifest:
    variants = []
    for spec in specs:
        name = model_name(family, spec.name)
        files = spec.graph if isinstance(spec.graph, dict) else {"model": spec.graph}
        artifacts = []
        for graph, content in files.items():
            directory = name if graph == "model" else graph_model_name(name, graph)
            version = version_dir(repo, directory)
            version.mkdir(parents=True, exist_ok=True)
            path = version / GRAPH_FILES[spec.runtime]
            path.write_bytes(content)
            for file, asset in assets.items():
                (version / file).write_bytes(asset)
            artifacts.append(
                Artifact(
                    path=path.relative_to(repo).as_posix(),
                    sha256=hashlib.sha256(content).hexdigest(),
                    size_bytes=len(content),
                )
            )
        size = sum(len(c) for c in files.values())
        variants.append(
            Variant(
                name=spec.name,
                model_name=name,
                status=spec.status,  # type: ignore[arg-type]
                rejection_reason=None if spec.status == "published" else "quality drop too large",
                recommended=spec.status == "published",
                runtime=spec.runtime,
                precision=spec.precision,  # type: ignore[arg-type]
                pruning_ratio=0.5 if "pruned" in spec.name else 0.0,
                artifacts=artifacts,
                size_bytes=size,
                parameters=size // 4,
                metrics={"score": spec.quality},
                quality=spec.quality,
                quality_drop=max(0.0, specs[0].quality - spec.quality),
                latency=points(spec.p50_s, (1, 4, 8) if max_batch_size else (1,)),
                resident_memory_bytes=size * 2,
                gpu_memory_bytes=int(spec.gpu_memory_mb * MIB),
            )
        )
    manifest = FamilyManifest(
        family=family,
        task=task,  # type: ignore[arg-type]
        metric=MetricInfo(name="score", higher_is_better=True),
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        graphs=graphs or [],
        assets=sorted(assets),
        built_at="2026-01-01T00:00:00Z",
        source="tests/support/repo_fixture.py",
        variants=variants,
    )
    write_manifest(repo, manifest)
    return manifest


def image_assets() -> dict[str, bytes]:
    """Assets of an 8x8 gray digits-like image family."""
    preprocess = {
        "color": "gray",
        "size_px": 8,
        "resize_shorter_px": None,
        "resample": "box",
        "mean": [0.0],
        "std": [255.0 / 16.0],
    }
    return {
        "preprocess.json": json.dumps(preprocess).encode(),
        "labels.txt": ("\n".join(DIGIT_LABELS) + "\n").encode(),
    }


IMAGE_IN = [TensorSpec(name="images", datatype="FP32", dims=[1, 8, 8])]
IMAGE_OUT = [TensorSpec(name="logits", datatype="FP32", dims=[10])]


def measure_p50_s(graph: bytes, runs: int = 7) -> float:
    """Median latency of one batch-1 run of an image graph (one ORT thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    feed = {"images": np.full((1, 1, 8, 8), 4.0, np.float32)}
    session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _translation_assets(workdir: Path) -> tuple[dict[str, bytes], int]:
    prefix = workdir / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRANSLATION_CORPUS * 4),
        model_prefix=str(prefix),
        vocab_size=60,
        model_type="bpe",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        character_coverage=1.0,
        minloglevel=2,
    )
    settings = {
        "pad_id": 0,
        "bos_id": 2,
        "eos_id": 3,
        "max_source_tokens": 64,
        "max_target_tokens": 96,
        "output_ratio": 1.5,
        "output_margin": 4,
    }
    model = prefix.with_suffix(".model").read_bytes()
    vocab = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model"))).vocab_size()
    return {"spm.model": model, "tokenizer.json": json.dumps(settings).encode()}, vocab


def build_repository(root: Path) -> Path:
    """Write the whole fixture repository under ``root / "repo"``; returns its path."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    tiny = image_graph()
    write_family(
        repo,
        "digits",
        "image-labels",
        image_assets(),
        [
            Spec("fp32", tiny, 98.0, 64, 0.020),
            Spec("fp16", tiny, 97.5, 32, 0.010, precision="fp16"),
            Spec("int8", tiny, 96.0, 16, 0.005, precision="int8"),
            Spec("pruned-50-int8", tiny, 90.0, 8, 0.002, precision="int8"),
            Spec("pruned-75", tiny, 70.0, 32, 0.008, status="rejected"),
        ],
        IMAGE_IN,
        IMAGE_OUT,
    )
    from tests.support import whisper_fixture  # builds its graphs with this module's helpers

    speech = whisper_fixture.graphs()
    write_family(
        repo,
        "speech",
        "audio-text",
        whisper_fixture.assets(),
        [Spec("fp32", speech, 95.0, 64, 0.010), Spec("int8", speech, 93.0, 16, 0.004)],
        [],
        [],
        graphs=whisper_fixture.graph_specs(),
    )
    assets, vocab = _translation_assets(root)
    copy = copy_graph(vocab)
    write_family(
        repo,
        "translation",
        "text-text",
        assets,
        [Spec("fp32", copy, 30.0, 64, 0.020), Spec("int8", copy, 28.0, 16, 0.010)],
        [
            TensorSpec(name="src_ids", datatype="INT64", dims=[-1]),
            TensorSpec(name="tgt_ids", datatype="INT64", dims=[-1]),
        ],
        [TensorSpec(name="logits", datatype="FP32", dims=[vocab])],
    )
    heavy = image_graph(heavy_rows=128, heavy_layers=16)
    write_family(
        repo,
        "busy",
        "image-labels",
        image_assets(),
        [
            Spec("fp32", heavy, 99.0, 64, measure_p50_s(heavy)),
            Spec("small", tiny, 90.0, 8, 0.001, precision="int8"),
        ],
        IMAGE_IN,
        IMAGE_OUT,
    )
    slow = image_graph(heavy_rows=256, heavy_layers=60)
    write_family(
        repo,
        "slow",
        "image-labels",
        image_assets(),
        [Spec("fp32", slow, 99.0, 64, 0.001)],
        IMAGE_IN,
        IMAGE_OUT,
        max_batch_size=0,
    )
    write_family(
        repo,
        "flaky",
        "image-labels",
        image_assets(),
        [
            Spec("fp32", tiny, 95.0, 64, 0.002),
            Spec("fp16", image_graph(num_labels=7), 90.0, 32, 0.002, precision="fp16"),
            Spec("int8", b"this is not an onnx graph", 80.0, 16, 0.001, precision="int8"),
        ],
        IMAGE_IN,
        IMAGE_OUT,
    )
    (repo / "broken.manifest.json").write_text("{not json", encoding="utf-8")
    return repo
