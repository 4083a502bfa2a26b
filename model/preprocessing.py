"""Bringing images and label maps to the backbone's square input size.

The reference squashes CamVid's 480x360 frames to 256x256 (PIL bilinear for images, nearest
for labels) and its table 3 agrees; the paper's text says center crop. `resize` squashes;
`center-crop` scales the shorter side to the size (the longer one truncated, as the reference's
Cityscapes script and torchvision's Resize do) and keeps the central square, which is what the
paper does for ADE-Bed and Cityscapes. Each dataset adapter names its paper's choice; the backend
always uses `resize`, so annotators are asked about every part of the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 80_000_000  # refuse decompression bombs, resize everything else


def _rgb_scaled(image: Image.Image | np.ndarray, width: int, height: int) -> Image.Image:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if pil.width * pil.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {pil.width}x{pil.height} pixels exceeds {MAX_IMAGE_PIXELS} pixels")
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    return pil.resize((width, height), resample=Image.BILINEAR)


def _labels_scaled(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((width, height), resample=Image.NEAREST))


def _shorter_side_to(width: int, height: int, size: int) -> tuple[int, int]:
    if width <= height:
        return size, int(height * size / width)
    return int(width * size / height), size


def _central(array: np.ndarray, size: int) -> np.ndarray:
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def resize_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Any image -> size x size x 3 uint8 RGB, bilinear (PIL's, antialiased when shrinking)."""
    return np.asarray(_rgb_scaled(image, size, size), dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """An HxW integer label map -> size x size, nearest neighbour (no invented classes)."""
    return _labels_scaled(labels, size, size)


def center_crop_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """The shorter side scaled to `size` (bilinear), then the central size x size square."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    scaled = _rgb_scaled(pil, *_shorter_side_to(pil.width, pil.height, size))
    return np.ascontiguousarray(_central(np.asarray(scaled, dtype=np.uint8), size))


def center_crop_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """The same square of a label map, scaled with nearest neighbour."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label map, got shape {labels.shape}")
    scaled = _labels_scaled(labels, *_shorter_side_to(labels.shape[1], labels.shape[0], size))
    return np.ascontiguousarray(_central(scaled, size))


def remap_void(labels: np.ndarray, void: int, ignore_index: int = 255) -> np.ndarray:
    out = labels.astype(np.uint8, copy=True)
    out[labels == void] = ignore_index
    return out


PREPROCESSING = {"resize": (resize_image, resize_labels), "center-crop": (center_crop_image, center_crop_labels)}
