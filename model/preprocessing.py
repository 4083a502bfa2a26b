"""Bringing images and label maps to the backbone's square input size.

The reference squashes CamVid's 480x360 frames to 256x256 (PIL bilinear for images, nearest
for labels) and its table 3 agrees; the paper's text says center crop. We follow the code by
default (`resize`); `center-crop` (shorter side scaled to the size, then the central square) is
the paper's text, for datasets in the offline simulation. The backend always uses `resize`, so
annotators are asked about every part of the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 80_000_000  # refuse decompression bombs, resize everything else


def resize_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Any image -> size x size x 3 uint8 RGB, bilinear (PIL's, antialiased when shrinking)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if pil.width * pil.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {pil.width}x{pil.height} pixels exceeds {MAX_IMAGE_PIXELS} pixels")
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    return np.asarray(pil.resize((size, size), resample=Image.BILINEAR), dtype=np.uint8)


def _crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def center_crop_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """The central square of the image, scaled to size x size (bilinear)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return resize_image(pil.crop(_crop_box(pil.width, pil.height)), size)


def center_crop_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """The same central square of a label map, scaled with nearest neighbour."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    left, top, right, bottom = _crop_box(labels.shape[1], labels.shape[0])
    return resize_labels(labels[top:bottom, left:right], size)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """An HxW integer label map -> size x size, nearest neighbour (no invented classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((size, size), resample=Image.NEAREST))


def remap_void(labels: np.ndarray, void: int, ignore_index: int = 255) -> np.ndarray:
    out = labels.astype(np.uint8, copy=True)
    out[labels == void] = ignore_index
    return out


PREPROCESSING = {"resize": (resize_image, resize_labels), "center-crop": (center_crop_image, center_crop_labels)}
