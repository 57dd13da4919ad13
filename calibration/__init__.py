"""The image data package (installed as ``resnet_edge.calibration``): where images come from and how they become
tensors, for every command that feeds a model real images.

Not only calibration: ``validate``, ``benchmark``, ``analyze``, ``gradflow`` and ``quantize`` all read their images
here. :mod:`.sources` opens an image source (an image folder, NumPy arrays, the bundled photographs and digits) and
draws from it; :mod:`.preprocess` is the one preprocessing implementation (resize, crop, normalise); and
:mod:`.calibration_reader` feeds a source to onnxruntime's calibrators as a ``CalibrationDataReader``.
"""
