"""The image data package (installed as ``resnet_edge.calibration``): where images come from and how they become
tensors, for every command that feeds a model real images.

Not only calibration: ``validate``, ``benchmark``, ``analyze``, ``gradflow`` and ``quantize`` all read their images
here. :mod:`.sources` opens an image source (an image folder, NumPy arrays, the bundled photographs and digits) with
its labels in a model's classes, and draws from it: :func:`.sources.open_source` is the one data path; :mod:`.labels`
is the one rule that says which class each labelled image is; :mod:`.arrays` reads ``.npy``/``.npz`` files row by row;
:mod:`.preprocess` is the one preprocessing implementation (resize, crop, normalise); and :mod:`.calibration_reader`
feeds a source to onnxruntime's calibrators as a ``CalibrationDataReader``.
"""
