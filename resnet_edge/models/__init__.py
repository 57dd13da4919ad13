"""The PyTorch side: the ResNet definition, its registry and data defaults, checkpoints, gradient flow.

Independent of the ONNX layer: nothing here imports :mod:`resnet_edge.onnx`, and the reverse.
"""
