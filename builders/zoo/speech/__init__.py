"""The speech zoo family: espeak-ng corpus, Conv1d + BiGRU CTC model and its recipe."""
