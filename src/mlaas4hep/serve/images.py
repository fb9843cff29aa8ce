"""Images for ``POST /image``: decode, resize and normalise as the model expects.

The model's metadata (``metadata.json`` or ``params.json``) may describe its
images under ``"image"``::

    {"image": {"width": 64, "height": 64, "channels": 3, "layout": "NHWC",
               "scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}

Pixels become ``(pixel * scale - mean) / std``. Without that description the
size, channels and layout come from the model's input shape (``[-1, H, W, C]``,
``[-1, C, H, W]`` or ``[-1, H, W]``) and the pixel values are used as they are
(0–255), as TFaaS did.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlaas4hep.serve.backends import Backend
from mlaas4hep.serve.errors import BadRequest

MAX_PIXELS = 40_000_000
"""Larger images are refused before they are decoded (decompression bombs)."""


@dataclass(frozen=True)
class ImageSpec:
    """What one model's image input looks like."""

    height: int
    width: int
    channels: int
    layout: str
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


def image_spec(backend: Backend) -> tuple[str, ImageSpec]:
    """The input name and image description of ``backend``."""
    if len(backend.inputs) != 1:
        raise BadRequest("/image needs a model with exactly one (image) input")
    info = backend.inputs[0]
    described = backend.metadata.get("image")
    shape = list(info.shape)
    if described is not None:
        return info.name, _described(described)
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        height, width, channels, layout = shape[1], shape[2], shape[3], "NHWC"
    elif len(shape) == 4 and shape[1] in (1, 3, 4):
        channels, height, width, layout = shape[1], shape[2], shape[3], "NCHW"
    elif len(shape) == 3:
        height, width, channels, layout = shape[1], shape[2], 1, "NHW"
    else:
        raise BadRequest(
            f"input {info.name!r} shaped {shape} is not an image; describe it under "
            "'image' in the model's metadata"
        )
    if height < 1 or width < 1:
        raise BadRequest(
            f"input {info.name!r} shaped {shape} has no fixed image size; describe it "
            "under 'image' in the model's metadata"
        )
    return info.name, ImageSpec(height, width, channels, layout)


def _described(value: Any) -> ImageSpec:
    try:
        spec = ImageSpec(
            height=int(value["height"]),
            width=int(value["width"]),
            channels=int(value.get("channels", 3)),
            layout=str(value.get("layout", "NHWC")),
            scale=float(value.get("scale", 1.0)),
            mean=tuple(float(m) for m in _list(value.get("mean", 0.0))),
            std=tuple(float(s) for s in _list(value.get("std", 1.0))),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BadRequest(f"the model's 'image' metadata is invalid: {error}") from None
    if spec.layout not in ("NHWC", "NCHW", "NHW") or spec.channels not in (1, 3, 4):
        raise BadRequest("the model's 'image' metadata needs layout NHWC/NCHW/NHW, channels 1/3/4")
    return spec


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def image_inputs(data: bytes, backend: Backend) -> dict[str, np.ndarray]:
    """The model input (a batch of one) for the PNG/JPEG bytes ``data``."""
    name, spec = image_spec(backend)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format not in ("PNG", "JPEG"):
                raise BadRequest(f"the image is {opened.format}, not PNG or JPEG")
            if opened.width * opened.height > MAX_PIXELS:
                raise BadRequest(f"the image has more than {MAX_PIXELS:,} pixels")
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[spec.channels]
            picture = opened.convert(mode).resize(
                (spec.width, spec.height), Image.Resampling.BILINEAR
            )
    except (UnidentifiedImageError, OSError) as error:
        raise BadRequest(f"the image cannot be decoded as PNG or JPEG: {error}") from None
    raw = np.asarray(picture, dtype=np.float32).reshape(spec.height, spec.width, spec.channels)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    pixels = (raw * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    elif spec.layout == "NHW":
        pixels = pixels[..., 0]
    return {name: np.ascontiguousarray(pixels[np.newaxis], dtype=np.float32)}
