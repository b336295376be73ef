"""Graph-level optimisations that derive variants from an fp32 ONNX graph."""
