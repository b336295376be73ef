"""The ``speech`` zoo family: OpenAI Whisper tiny.en."""
