"""Where images come from and how they become tensors (installed as ``resnet_edge.calibration``).

Sources (an image folder, NumPy arrays, the bundled photographs and digits), the one preprocessing implementation,
and the onnxruntime ``CalibrationDataReader``.
"""
