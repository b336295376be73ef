"""Conversions from ONNX to other runtimes' formats."""
