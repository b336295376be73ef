"""The task assets of a Whisper family: ``vocabulary.txt`` and ``whisper.json``.

Both come from the source checkpoint's tokenizer and generation settings (token suppression
lists), so the served decoding is the model's own. ``python -m builders.zoo.speech.assets``
rewrites the committed ones from the installed package.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builders.zoo.speech.model import WhisperDims
from builders.zoo.speech.sources import packaged_model_dir
from gateway.tasks.audio import MAX_AUDIO_S
from gateway.tasks.speech import SETTINGS_FILE, VOCABULARY_FILE

ASSETS_DIR = Path(__file__).with_name("assets")


def settings(tokens: Sequence[str], config: dict[str, Any], dims: WhisperDims) -> dict[str, Any]:
    """``whisper.json`` of an English-only Whisper vocabulary and its generation config."""
    index = {token: i for i, token in enumerate(tokens)}

    def special(name: str) -> int:
        if name not in index:
            raise ValueError(f"the vocabulary has no {name} token")
        return index[name]

    return {
        "n_mels": dims.n_mels,
        "n_text_ctx": dims.n_text_ctx,
        "sot_sequence": [special("<|startoftranscript|>")],
        "no_timestamps": special("<|notimestamps|>"),
        "eot": special("<|endoftext|>"),
        "no_speech": special("<|nocaptions|>"),
        "timestamp_begin": special("<|0.00|>"),
        "suppress_ids": sorted(set(config["suppress_ids"])),
        "suppress_ids_begin": sorted(set(config["suppress_ids_begin"])),
        "max_new_tokens": dims.n_text_ctx // 2,
        "window_batch": 4,
        "no_speech_threshold": 0.6,
        "log_prob_threshold": -1.0,
        "max_duration_s": MAX_AUDIO_S,
    }


def write_assets(model_dir: Path, out_dir: Path, dims: WhisperDims | None = None) -> None:
    """Write the task assets of a CTranslate2 Whisper directory into ``out_dir``."""
    tokens = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    tokens = tokens[:-1] if tokens and tokens[-1] == "" else tokens
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VOCABULARY_FILE).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    spec = settings(tokens, config, dims or WhisperDims())
    (out_dir / SETTINGS_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_assets(packaged_model_dir(), Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS_DIR)
