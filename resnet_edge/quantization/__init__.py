"""INT8: the per-target configurations, calibration, quantizing, its checks, mixed precision and the sensitivity
analysis. Built on the ONNX layer and the image sources; knows nothing of export, evaluation or the pipeline.
"""
