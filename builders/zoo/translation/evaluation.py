"""Graph runners (torch and ONNX Runtime), the ONNX export, and BLEU/chrF on held-out pairs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch
from torch import nn

from builders.zoo.translation.corpus import Pair, read_split
from builders.zoo.translation.tokenizer import ASSETS_DIR
from gateway.tasks.base import RunGraph, Tensor
from gateway.tasks.translation import TranslationTask

OPSET = 17
EVAL_BATCH = 64
TEST_SUBSET = 200
"""Held-out pairs the unit tests translate; metrics.json records this subset too."""


def torch_runner(module: nn.Module) -> RunGraph:
    """A runner over a torch module with the graph's tensors (puts the module in eval mode)."""
    module.eval()

    def run(inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        src = torch.from_numpy(np.ascontiguousarray(inputs["src_ids"], dtype=np.int64))
        tgt = torch.from_numpy(np.ascontiguousarray(inputs["tgt_ids"], dtype=np.int64))
        with torch.inference_mode():
            logits = module(src, tgt)
        return {"logits": logits.numpy()}

    return run


def export_onnx(module: nn.Module, path: Path) -> None:
    """Export to one self-contained ONNX graph: ``src_ids``, ``tgt_ids`` → ``logits``."""
    module.eval()
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    tgt = torch.tensor([[2, 10, 11], [2, 12, 0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module,
        (src, tgt),
        str(path),
        input_names=["src_ids", "tgt_ids"],
        output_names=["logits"],
        dynamic_axes={
            "src_ids": {0: "batch", 1: "src_len"},
            "tgt_ids": {0: "batch", 1: "tgt_len"},
            "logits": {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )


def translate(
    task: TranslationTask, run_graph: RunGraph, texts: list[str], batch_size: int = EVAL_BATCH
) -> list[str]:
    """Translate texts in batches of similar length; results come back in input order."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, text in zip(chunk, task.run([texts[i] for i in chunk], run_graph), strict=True):
            out[index] = text
    return out


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults), in points."""
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    return {"bleu": round(float(bleu), 3), "chrf": round(float(chrf), 3)}


def evaluate(
    run_graph: RunGraph,
    limit: int | None = None,
    assets_dir: Path = ASSETS_DIR,
    pairs: list[Pair] | None = None,
) -> dict[str, Any]:
    """BLEU and chrF of greedy translations of the first ``limit`` held-out pairs."""
    pairs = (pairs if pairs is not None else read_split("heldout"))[:limit]
    hypotheses = translate(TranslationTask(assets_dir), run_graph, [p.en for p in pairs])
    return score(hypotheses, [p.de for p in pairs])
