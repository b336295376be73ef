"""``builders``: build variant ladders into a Triton repository and report on them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

DEFAULT_REPOSITORY = Path("model_repo")
DEMO_FAMILIES = ("digits", "vision", "speech", "translation")


def _spec_default(name: str) -> Any:
    """The default of a ``BuildSpec`` field: the CLI never repeats the spec's defaults."""
    from builders.spec import BuildSpec

    return getattr(BuildSpec(family="any", repository=DEFAULT_REPOSITORY), name)


def _parser() -> argparse.ArgumentParser:
    from builders.spec import VARIANT_KINDS
    from builders.zoo.registry import FAMILY_NAMES

    parser = argparse.ArgumentParser(prog="builders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build one family's variants")
    build.add_argument("--family", required=True, choices=FAMILY_NAMES)
    build.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    build.add_argument(
        "--variants", nargs="+", default=list(_spec_default("variants")), choices=VARIANT_KINDS
    )
    build.add_argument(
        "--pruning-ratios",
        nargs="+",
        type=float,
        default=list(_spec_default("pruning_ratios")),
        help="structured pruning ratios (default: %(default)s)",
    )
    build.add_argument(
        "--recover-budget-s",
        type=float,
        default=_spec_default("recover_budget_s"),
        help="recovery fine-tune of each pruned model, in seconds of a 2-core CPU; each family "
        "turns it into a fixed step count, so results do not depend on the machine "
        "(default: the family's own, e.g. 120 for speech and translation)",
    )
    build.add_argument(
        "--max-quality-drop",
        type=float,
        default=None,
        help="points of the metric a variant may lose vs fp32 (default: the family's, 2 for "
        "most; 2.5 for speech, two word errors on its real recordings)",
    )
    build.add_argument(
        "--eval-limit",
        type=int,
        default=_spec_default("eval_limit"),
        help="evaluate on the first N held-out items only",
    )
    build.add_argument(
        "--calibration-items",
        type=int,
        default=_spec_default("calibration_items"),
        help="int8 calibration inputs, ONNX and TensorRT alike (default %(default)s)",
    )
    build.add_argument(
        "--max-batch-size",
        type=int,
        default=_spec_default("max_batch_size"),
        help="rows one graph run may take (default %(default)s)",
    )
    build.add_argument(
        "--tensorrt",
        action=argparse.BooleanOptionalAction,
        default=_spec_default("tensorrt"),
        help="also build TensorRT engines (fp16, int8, 2:4-sparse pruned) where TensorRT and "
        "a GPU exist; elsewhere the build says once why they were skipped (default: on)",
    )
    build.add_argument(
        "--source",
        choices=["zoo", "torch", "torchscript", "onnx", "directory"],
        default="zoo",
        help="where the fp32 model comes from (default: the zoo checkpoint)",
    )
    build.add_argument(
        "--model-path",
        type=Path,
        help="weights / TorchScript / ONNX file, or a model directory (speech: a Hugging Face "
        "or CTranslate2 Whisper folder)",
    )
    build.add_argument("--factory", help="package.module:callable building the torch module")

    demo = sub.add_parser("build-demo", help="build every demo family")
    demo.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    demo.add_argument(
        "--if-missing", action="store_true", help="do nothing for families whose manifest exists"
    )

    report = sub.add_parser("report", help="rewrite reports from manifests and print a summary")
    report.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)

    flavour = sub.add_parser(
        "python-flavour", help="write the python-backend flavour of a repository"
    )
    flavour.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    flavour.add_argument("--out", type=Path, required=True)
    flavour.add_argument("--copy", action="store_true", help="copy graphs instead of linking")

    triton = sub.add_parser(
        "serve-triton",
        help="serve a repository through the local Triton (nvidia-pytriton) with the gateway "
        "in front of it (--backend triton)",
    )
    triton.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    triton.add_argument("--host", default="127.0.0.1", help="gateway address (Triton: loopback)")
    for name, default in (
        ("http-port", 8000),
        ("grpc-port", 8001),
        ("triton-http-port", 8010),
        ("triton-grpc-port", 8011),
        ("triton-metrics-port", 8012),
    ):
        triton.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    return parser


def _build(args: argparse.Namespace) -> int:
    from builders.build import build_family
    from builders.report import write_report
    from builders.sources import ModelSource
    from builders.spec import BuildSpec
    from builders.zoo.registry import get_family

    spec = BuildSpec(
        family=args.family,
        repository=args.repository,
        variants=tuple(args.variants),
        pruning_ratios=tuple(args.pruning_ratios),
        recover_budget_s=args.recover_budget_s,
        max_quality_drop=args.max_quality_drop,
        eval_limit=args.eval_limit,
        calibration_items=args.calibration_items,
        max_batch_size=args.max_batch_size,
        tensorrt=args.tensorrt,
    )
    source = ModelSource(kind=args.source, path=args.model_path, factory=args.factory)
    result = build_family(spec, get_family(args.family), source, tqdm.write, show_progress=True)
    md, png = write_report(args.repository, result.manifest, result.skipped)
    print(
        f"{args.family}: {len(result.manifest.published())} variants published in "
        f"{result.seconds:.0f} s; manifest {result.manifest_path}; report {md}, plot {png}"
    )
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from builders.build import build_family
    from builders.report import write_report
    from builders.spec import VARIANT_KINDS, BuildSpec
    from builders.zoo.registry import get_family
    from gateway.manifest import manifest_path

    for name in tqdm(DEMO_FAMILIES, desc="families", unit="family"):
        if args.if_missing and manifest_path(args.repository, name).exists():
            tqdm.write(f"{name}: manifest present, not rebuilt")
            continue
        family = get_family(name)
        # A family whose whole ladder takes long (speech) builds a part of it for the demo.
        variants = tuple(getattr(family, "demo_variants", VARIANT_KINDS))
        spec = BuildSpec(family=name, repository=args.repository, variants=variants)
        result = build_family(spec, family, progress=tqdm.write, show_progress=True)
        write_report(args.repository, result.manifest, result.skipped)
        tqdm.write(f"{name}: built in {result.seconds:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from builders.report import markdown, write_report
    from gateway.manifest import find_manifests, load_manifest

    paths = find_manifests(args.repository)
    if not paths:
        print(
            f"no manifests in {args.repository}; run 'builders build-demo' first", file=sys.stderr
        )
        return 1
    for path in paths:
        manifest = load_manifest(path)
        write_report(args.repository, manifest)
        print(markdown(manifest))
    return 0


def _python_flavour(args: argparse.Namespace) -> int:
    from builders.triton.flavour import write_python_flavour

    names = write_python_flavour(args.repository, args.out, link=not args.copy)
    print(f"wrote {len(names)} python-backend models to {args.out}")
    return 0


def _serve_triton(args: argparse.Namespace) -> int:
    from builders.triton.serve import Ports, serve_triton

    ports = Ports(
        args.http_port,
        args.grpc_port,
        args.triton_http_port,
        args.triton_grpc_port,
        args.triton_metrics_port,
    )
    return serve_triton(args.repository, args.host, ports)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``builders`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    commands = {
        "build": _build,
        "build-demo": _build_demo,
        "report": _report,
        "python-flavour": _python_flavour,
        "serve-triton": _serve_triton,
    }
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input (unknown family, missing file, wrong shapes): say what, not a traceback.
        print(f"builders {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
