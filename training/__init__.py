"""Offline jobs that produce model artifacts (needs the `train` extra: PyTorch, onnx)."""
