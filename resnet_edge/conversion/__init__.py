"""PyTorch to ONNX and ONNX to its simplified form: the export and simplify stages."""
