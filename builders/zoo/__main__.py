"""``python -m builders.zoo``: train, evaluate and export the zoo's source models.

python -m builders.zoo evaluate speech            # torch, on the committed held-out set
python -m builders.zoo evaluate speech --onnx     # the same through ONNX Runtime
python -m builders.zoo train digits --out DIR     # rerun the seeded recipe
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from builders.zoo.registry import FAMILY_NAMES, get_family


def _count_parameters(family_name: str) -> int:
    module = get_family(family_name).load()
    return sum(p.numel() for p in module.parameters())


def evaluate(name: str, onnx: bool, limit: int | None) -> dict[str, float]:
    """Score the committed checkpoint (torch, or its ONNX export) on the held-out set."""
    from builders.build import export_multi, is_multi_graph
    from gateway.tasks.base import single_graph
    from gateway.tasks.onnx_runner import GraphSessions

    family = get_family(name)
    module = family.load()
    if not onnx:
        return family.evaluate(single_graph(family.torch_runner(module)), limit)
    with tempfile.TemporaryDirectory() as tmp:
        if is_multi_graph(family):
            return family.evaluate(GraphSessions(export_multi(family, module, Path(tmp))), limit)
        graph = Path(tmp) / "model.onnx"
        family.export_onnx(module, graph)
        return family.evaluate(GraphSessions({"model": graph}), limit)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m builders.zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="print the metric of a committed model")
    ev.add_argument("family", choices=FAMILY_NAMES)
    ev.add_argument("--onnx", action="store_true", help="run the ONNX export in ONNX Runtime")
    ev.add_argument("--limit", type=int, default=None, help="first N held-out items only")
    tr = sub.add_parser("train", help="rerun a family's seeded training recipe")
    tr.add_argument("family", choices=FAMILY_NAMES)
    tr.add_argument("--out", type=Path, required=True, help="directory for the new checkpoint")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.command == "evaluate":
        metrics = evaluate(args.family, args.onnx, args.limit)
        result = {
            "family": args.family,
            "runtime": "onnxruntime" if args.onnx else "torch",
            "parameters": _count_parameters(args.family),
            **{k: round(v, 3) for k, v in metrics.items()},
        }
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"family": args.family, **get_family(args.family).train(args.out)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
