"""faster-whisper on the same CTranslate2 folder: the reference our transcripts must equal.

Only tests and benchmarks use it (``faster-whisper`` is a development dependency). Its
decoding is set to what the gateway does: greedy (beam 1, temperature 0, no fallback), no
timestamps, no previous-text prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from builders.zoo.speech.sources import packaged_model_dir


def reference_model(threads: int = 2) -> Any:
    """faster-whisper's ``WhisperModel`` over the packaged tiny.en, float32 on the CPU."""
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(packaged_model_dir()), device="cpu", compute_type="float32", cpu_threads=threads
    )


def reference_transcript(model: Any, waveform: npt.NDArray[np.float32]) -> str:
    """The reference's greedy transcript of a 16 kHz waveform."""
    segments, _ = model.transcribe(
        waveform,
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
    )
    return "".join(s.text for s in segments).strip()
