from pathlib import Path

import pytest
from google.protobuf import json_format

from builders.pareto import Point, frontier
from builders.repository import new_staging_dir, publish_family
from builders.spec import BuildSpec, ProfileSettings, pruned_name
from builders.triton.model_config import TritonModel, config_text, model_config, parse_config
from gateway.manifest import TensorSpec

IMAGES = TensorSpec(name="images", datatype="FP32", dims=[3, 224, 224])
LOGITS = TensorSpec(name="logits", datatype="FP32", dims=[1000])


@pytest.mark.parametrize(
    ("runtime", "flavour"), [("onnx", "production"), ("tensorrt", "production"), ("onnx", "python")]
)
def test_config_round_trips_through_triton_proto(runtime: str, flavour: str) -> None:
    model = TritonModel("vision__int8", runtime, (IMAGES,), (LOGITS,), 8)  # type: ignore[arg-type]
    config = model_config(model, flavour)  # type: ignore[arg-type]
    parsed = parse_config(config_text(config))
    assert parsed == config
    assert parsed.max_batch_size == 8
    assert list(parsed.input[0].dims) == [3, 224, 224]
    assert parsed.dynamic_batching.max_queue_delay_microseconds > 0
    if runtime == "tensorrt":
        assert parsed.platform == "tensorrt_plan"
    else:
        assert parsed.backend == ("python" if flavour == "python" else "onnxruntime")


def test_invalid_config_fails_at_build_time() -> None:
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(
            {"name": "x", "max_batch_sise": 1},
            type(model_config(TritonModel("x", "onnx", (IMAGES,), (LOGITS,), 1)))(),
        )
    with pytest.raises(Exception, match="unknown_field"):
        parse_config('name: "x"\nunknown_field: 3\n')


def test_publish_replaces_family_dirs_and_leaves_others(tmp_path: Path) -> None:
    (tmp_path / "vision__old" / "1").mkdir(parents=True)
    (tmp_path / "speech__fp32" / "1").mkdir(parents=True)
    staging = new_staging_dir(tmp_path, "vision")
    (staging / "vision__fp32" / "1").mkdir(parents=True)
    (staging / "vision__int8" / "1").mkdir(parents=True)
    names = publish_family(tmp_path, "vision", staging)
    assert names == ["vision__fp32", "vision__int8"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["speech__fp32", "vision__fp32", "vision__int8"]


def test_pareto_frontier() -> None:
    points = [
        Point("fp32", 100, 0.010, 90.0),
        Point("int8", 25, 0.008, 89.5),
        Point("fp16", 50, 0.012, 90.0),  # slower than fp32 but smaller: a real trade-off
        Point("worse", 30, 0.009, 80.0),  # dominated by int8 on every axis
    ]
    best = frontier(points)
    assert "int8" in best and "fp32" in best
    assert "worse" not in best
    assert "fp16" in best
    assert best == {"fp32", "int8", "fp16"}
    assert frontier([Point("a", 1, 1.0, 1.0), Point("b", 1, 1.0, 1.0)]) == {"a", "b"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variants": ("int8",)}, "fp32 is the baseline"),
        ({"variants": ("fp32", "int4")}, "unknown variant kinds"),
        ({"pruning_ratios": (1.5,)}, "pruning ratios"),
        ({"eval_limit": 0}, "eval_limit"),
        ({"max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_build_spec_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BuildSpec(family="vision", repository=Path("r"), **kwargs)


def test_profile_settings_validated() -> None:
    with pytest.raises(ValueError, match="batch_sizes"):
        ProfileSettings(batch_sizes=(0,))
    assert pruned_name(0.25) == "pruned-25" and pruned_name(0.5, int8=True) == "pruned-50-int8"
