"""The ONNX layer: what a model file is and how it runs, without torch.

:mod:`.graph` reads a graph (op counts, MACs, which node makes which tensor), :mod:`.metadata` the self-description a
file carries, :mod:`.runtime` opens every onnxruntime session (providers, placement audit), :mod:`.parity` compares
outputs, :mod:`.inspection` describes a file. Imports nothing above it; :mod:`.runtime` ships to devices.
"""
