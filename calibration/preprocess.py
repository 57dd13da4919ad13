"""The one preprocessing implementation: an image (or raw uint8 array) to a model's input tensor.

The spec travels inside the ONNX file (``metadata_props["preprocessing"]``), so calibration, validation, benchmarking
and the pipeline all feed the model exactly as it was trained, and a user never repeats it.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from resnet_edge.errors import InputFileError, OptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10 channel statistics, the usual normalisation for the small-input ResNets when nothing better is known.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# The largest side an image is resized to: 8x torchvision's largest evaluation size, far beyond any ResNet input;
# a resize of millions (a corrupted or hostile model file) would allocate gigabytes per image.
MAX_SIDE = 4096


class ChannelOrder(enum.StrEnum):
    RGB = "RGB"
    BGR = "BGR"
    GRAY = "GRAY"

    @property
    def channels(self) -> int:
        return 1 if self is ChannelOrder.GRAY else 3


_INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input: resize the shorter side, centre-crop, scale, normalise, NCHW.

    Attributes:
        resize: length of the shorter side after resizing (torchvision's ``Resize(int)``).
        crop: side of the centre crop; the model's input is ``crop`` x ``crop``.
        mean, std: per-channel normalisation after scaling pixels to [0, 1].
        channel_order: RGB, BGR or GRAY (one channel).
        interpolation: bilinear, bicubic or nearest (PIL's filters, antialiased when shrinking).
        layout: always NCHW, recorded so that a reader need not assume it.
    """

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: ChannelOrder = ChannelOrder.RGB
    interpolation: str = "bilinear"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resize < self.crop:
            raise OptionError(f"preprocessing needs 1 <= crop <= resize, got crop={self.crop}, resize={self.resize}")
        if self.resize > MAX_SIDE:
            raise OptionError(f"preprocessing resize {self.resize} is over the {MAX_SIDE} pixels an image may have")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise OptionError(f"preprocessing mean and std must be finite numbers, got {self.mean} and {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise OptionError(
                f"unknown interpolation {self.interpolation!r}; choose one of: {', '.join(_INTERPOLATIONS)}"
            )
        channels = ChannelOrder(self.channel_order).channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise OptionError(f"{self.channel_order} preprocessing needs {channels} mean and std values")
        if any(s <= 0 for s in self.std):
            raise OptionError(f"std values must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return ChannelOrder(self.channel_order).channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        return (self.channels, self.crop, self.crop)

    def resized(self, crop: int | None) -> PreprocessSpec:
        """The same transform for a ``crop`` x ``crop`` input, keeping the resize-to-crop ratio (None: unchanged)."""
        if crop is None or crop == self.crop:
            return self
        return replace(self, resize=round(crop * self.resize / self.crop), crop=crop)

    def to_json(self) -> str:
        data = asdict(self)
        data["channel_order"] = ChannelOrder(self.channel_order).value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """A spec from its JSON record (a model's or a checkpoint's metadata).

        Raises:
            OptionError: not JSON, a key missing, a value that is not a number (or a list of numbers) where one is
                needed, or values the spec refuses.
        """
        try:
            data = json.loads(text)
            return cls(
                resize=int(data["resize"]),
                crop=int(data["crop"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                channel_order=ChannelOrder(data.get("channel_order", "RGB")),
                interpolation=data.get("interpolation", "bilinear"),
                layout=data.get("layout", "NCHW"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # json.JSONDecodeError is a ValueError
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
            raise OptionError(f"preprocessing record is malformed ({detail})") from None

    @classmethod
    def imagenet(cls, crop: int = 224, *, channels: int = 3) -> PreprocessSpec:
        """torchvision's ImageNet evaluation transform, scaled: resize to crop/0.875, centre crop."""
        return cls._standard(round(crop / 0.875), crop, IMAGENET_MEAN, IMAGENET_STD, channels)

    @classmethod
    def small(cls, crop: int = 32, *, channels: int = 3) -> PreprocessSpec:
        """CIFAR-style: the whole image resized to the input size, CIFAR-10 statistics."""
        return cls._standard(crop, crop, CIFAR_MEAN, CIFAR_STD, channels)

    @classmethod
    def _standard(
        cls, resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...], channels: int
    ) -> PreprocessSpec:
        if channels == 1:
            # Gray from RGB statistics: the luminance-weighted mean, the mean of the stds.
            return cls(
                resize, crop, (float(np.dot((0.299, 0.587, 0.114), mean)),), (float(np.mean(std)),), ChannelOrder.GRAY
            )
        if channels != 3:
            raise OptionError(f"default preprocessing exists for 1 or 3 channels, not {channels}")
        return cls(resize, crop, mean, std)


# 16-bit (and 32-bit integer) grey modes; Pillow's convert() clips them to 255, which turns a 16-bit PNG white.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WIDE_GREY_MAX = 65535  # PNG's 16-bit grey; the I mode of a 16-bit PNG holds the same 0..65535 range


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """An image of any mode as 8-bit ``L`` (one channel) or ``RGB`` (three), the way torchvision's ``decode_image``
    reads it (``ImageReadMode.GRAY``/``RGB``), with the EXIF orientation applied.

    16-bit grey is scaled to 8 bits (value / 257, torchvision scales by 65535), not clipped; 16-bit RGB keeps
    Pillow's high byte; a palette is expanded; alpha is dropped, not composited; CMYK becomes RGB as
    ``(255 - C)(255 - K) / 255``; grey becomes RGB by repetition and RGB grey by ITU-R 601 luma.

    Raises:
        InputFileError: the image has no pixels.
    """
    from PIL import ImageOps

    if image.width < 1 or image.height < 1:
        raise InputFileError(f"image of {image.width}x{image.height} pixels has nothing to preprocess")
    image = ImageOps.exif_transpose(image)  # a photo taken upright stays upright (camera JPEGs carry a rotation)
    mode = "L" if channels == 1 else "RGB"
    if image.mode in _WIDE_GREY_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide * 255.0 / _WIDE_GREY_MAX), 0, 255).astype(np.uint8), "L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette with transparency expands through RGBA, then alpha is dropped
    elif image.mode in ("LA", "La"):
        image = image.getchannel("L")
    if image.mode != mode:
        image = image.convert(mode)
    return image


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One PIL image to a float32 CHW array, as ``spec`` says (any mode: see :func:`to_model_mode`).

    Raises:
        InputFileError: the image has no pixels.
    """
    image = to_model_mode(image, spec.channels)
    width, height = image.size
    scale = spec.resize / min(width, height)
    size = (max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale)))
    if size != image.size:
        image = image.resize(size, _INTERPOLATIONS[spec.interpolation])
    left = (size[0] - spec.crop) // 2
    top = (size[1] - spec.crop) // 2
    image = image.crop((left, top, left + spec.crop, top + spec.crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if ChannelOrder(spec.channel_order) is ChannelOrder.BGR:
        pixels = pixels[:, :, ::-1]
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def preprocess_uint8(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A raw uint8 image, HW or HWC with 1, 3 or 4 channels, through :func:`preprocess_image`.

    Raises:
        InputFileError: the array is not an image of a supported shape.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputFileError(f"a uint8 image must be HW or HWC with 1, 3 or 4 channels, got shape {array.shape}")
    # Pillow infers L, RGB or RGBA from a uint8 array's shape.
    return preprocess_image(Image.fromarray(np.ascontiguousarray(array)), spec)
