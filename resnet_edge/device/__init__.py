"""Measuring on the target device itself.

Device side (standard library, numpy and onnxruntime only; bundled into the runner): :mod:`.runner` and
:mod:`.facts`. Host side: :mod:`.bundle` builds the runner file, :mod:`.targets` reaches a device (``ssh://`` or
``local``) and runs jobs there, :mod:`.fleet` turns ``benchmark``/``validate`` into jobs for one or many targets.
This ``__init__`` imports nothing, so that the runner carries only what it needs.
"""
