"""Users' own models as build sources: torch factory + weights, TorchScript, ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from builders.build import build_family
from builders.cli import main as builders_main
from builders.sources import ModelSource, SourceError
from builders.spec import BuildSpec
from builders.zoo.registry import get_family
from tests.support.quick_repository import QUICK_PROFILE


class TinyDigits(nn.Module):
    """A user's own digits classifier, following the family's tensor contract."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images / 16.0)


def tiny_digits() -> nn.Module:
    """Factory the build imports as ``tests.integration.test_builders_sources:tiny_digits``."""
    torch.manual_seed(0)
    return TinyDigits()


def _spec(repository: Path, variants: tuple[str, ...]) -> BuildSpec:
    return BuildSpec(
        family="digits",
        repository=repository,
        variants=variants,
        eval_limit=60,
        profile=QUICK_PROFILE,
        max_quality_drop=100.0,
    )


def _export(module: nn.Module, path: Path, input_name: str = "images") -> Path:
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "b"}, "logits": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_torch_factory_source(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    save_file(tiny_digits().state_dict(), str(weights))
    source = ModelSource("torch", weights, "tests.integration.test_builders_sources:tiny_digits")
    result = build_family(
        _spec(tmp_path / "repo", ("fp32", "int8", "pruned")), get_family("digits"), source
    )
    assert result.manifest.source.startswith("torch:tiny.safetensors")
    assert {v.name for v in result.manifest.variants} == {"fp32", "int8"}
    assert any("TinyDigits" in s for s in result.skipped)
    assert result.manifest.variant("fp32").parameters == 64 * 32 + 32 + 32 * 10 + 10


def test_torchscript_source(tmp_path: Path) -> None:
    scripted = torch.jit.script(tiny_digits().eval())
    path = tmp_path / "tiny.pt"
    scripted.save(str(path))
    result = build_family(
        _spec(tmp_path / "repo", ("fp32", "fp16")),
        get_family("digits"),
        ModelSource("torchscript", path),
    )
    assert {v.name for v in result.manifest.published()} == {"fp32", "fp16"}


def test_onnx_source_and_its_limits(tmp_path: Path) -> None:
    graph = _export(tiny_digits(), tmp_path / "tiny.onnx")
    result = build_family(
        _spec(tmp_path / "repo", ("fp32", "int8", "pruned")),
        get_family("digits"),
        ModelSource("onnx", graph),
    )
    assert {v.name for v in result.manifest.variants} == {"fp32", "int8"}
    assert any(
        s.startswith("pruned: structured pruning needs a torch model") for s in result.skipped
    )


def test_wrong_contract_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    bad = _export(tiny_digits(), tmp_path / "bad.onnx", input_name="pixels")
    with pytest.raises(SourceError, match="does not match the family"):
        build_family(
            _spec(tmp_path / "repo", ("fp32",)), get_family("digits"), ModelSource("onnx", bad)
        )
    with pytest.raises(SourceError, match="not found"):
        ModelSource("onnx", tmp_path / "missing.onnx")
    with pytest.raises(SourceError, match="factory"):
        ModelSource("torch", bad)


def test_cli_reports_bad_input_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = builders_main(
        [
            "build",
            "--family",
            "digits",
            "--source",
            "onnx",
            "--model-path",
            str(tmp_path / "x.onnx"),
            "--repository",
            str(tmp_path / "repo"),
        ]
    )
    assert code == 2
    assert "model file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        builders_main(["build", "--family", "nosuch"])


def test_whisper_builds_from_a_hugging_face_directory(tmp_path: Path) -> None:
    from tests.support.tiny_whisper import write_tiny_whisper

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    write_tiny_whisper(hf_dir)
    spec = BuildSpec(
        family="speech",
        repository=tmp_path / "repo",
        variants=("fp32", "int8"),
        max_quality_drop=1000.0,  # random weights: any transcript is as bad as another
        eval_limit=1,
        profile=QUICK_PROFILE,
    )
    source = ModelSource(kind="directory", path=hf_dir)
    result = build_family(spec, get_family("speech"), source)
    manifest = result.manifest
    assert manifest.source.startswith("directory:hf")
    assert manifest.graph_names() == ["encoder", "decoder"]
    for variant in manifest.published():
        for graph in manifest.graph_names():
            assert variant.graph_path(tmp_path / "repo", graph).is_file()
    assert manifest.variant("fp32").parameters < 2_000_000  # the tiny model, not tiny.en


def test_a_directory_that_is_no_whisper_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    spec = BuildSpec(family="speech", repository=tmp_path / "repo", variants=("fp32",))
    with pytest.raises(SourceError, match="not 'whisper'"):
        build_family(spec, get_family("speech"), ModelSource(kind="directory", path=tmp_path))
