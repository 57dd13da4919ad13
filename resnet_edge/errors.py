"""The error family for what a user did wrong.

A :class:`ResnetEdgeError` means bad input: a missing or corrupt file, a bad option, an empty folder, a check that
failed on the user's model. The CLI prints it as one line and exits non-zero. Any other exception is a bug in
resnet-edge and keeps its traceback.
"""

from __future__ import annotations


class ResnetEdgeError(Exception):
    """Base class of every error caused by input, options or a failed check, never by a bug."""

    exit_code = 1


class InputFileError(ResnetEdgeError):
    """A file or folder given by the user is missing, empty, truncated, of the wrong kind or unwritable."""


class OutputWriteError(InputFileError):
    """An output could not be written (a full disk, a quota, a read-only or failing file system); the message names
    the file and the free space, and nothing half-written was kept."""


class OptionError(ResnetEdgeError):
    """An option or a combination of options is not allowed."""

    exit_code = 2


class CheckpointError(ResnetEdgeError):
    """A checkpoint does not fit the architecture it is loaded into."""


class ProviderError(ResnetEdgeError):
    """An execution provider was asked for strictly and is not available."""


class CheckFailedError(ResnetEdgeError):
    """A verification step (parity, BatchNorm folding, accuracy threshold) failed on the user's model."""


class StageError(ResnetEdgeError):
    """A pipeline stage failed; the message names the stage."""

    def __init__(self, stage: str, cause: ResnetEdgeError) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause
        self.exit_code = cause.exit_code


class ResnetEdgeWarning(UserWarning):
    """Something the user should see but that does not stop the command (a CPU fallback, a small calibration set)."""


class TargetError(ResnetEdgeError):
    """A target device cannot be reached or used (``--target``); the message names the target."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"{target}: {message}")
        self.target = target
