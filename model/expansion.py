"""Turning one clicked pixel into a labeled region (paper appendix C.6).

An expander takes an image, a clicked pixel and returns a boolean mask with a confidence; the
region is used only when the confidence passes the expander's threshold tau, otherwise the click
stays a single labeled pixel. Three expanders:

- `sam`: Segment Anything with the click as one positive point, three mask proposals, the one
  with the highest predicted IoU (the confidence). Image embeddings are cached by image content,
  so further clicks on an image cost only the prompt decoder.
- `superpixel`: the SLIC superpixel under the click; its confidence is the share of its pixels
  whose colour lies close to the click's (CIELAB distance), which falls when a superpixel
  straddles an object boundary. Needs no weights, so clicks expand out of the box.
- `none`: the single pixel (the paper's base setting).

segment-anything's package `__init__` imports torchvision for its automatic mask generator and
image transforms, and PyPI's torchvision cannot load beside a CPU-only torch build. The point-
prompt path needs neither: when that import fails we load `segment_anything.build_sam` and
`segment_anything.modeling` on their own and apply SamPredictor's resize, normalisation and
mask post-processing here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

SAM_DOWNLOADS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


@dataclass
class Expansion:
    mask: np.ndarray  # H x W bool, at the size of the image given
    confidence: float


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def subsample(pixels: np.ndarray, cap: int, salt: str) -> np.ndarray:
    """At most `cap` pixels, chosen reproducibly from the region's identity (`salt`)."""
    if len(pixels) <= cap:
        return pixels
    seed = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(seed).choice(pixels, cap, replace=False))


def pixels_beyond_click(region: np.ndarray, click: int, cap: int, salt: str) -> np.ndarray:
    """The flat pixels an expanded click adds to the training set besides itself: at most cap - 1,
    so that with the click (which always counts) a region gives at most `cap` pixels."""
    return subsample(region[region != click], max(0, cap - 1), salt)


class LRUCache:
    """A small thread-safe LRU map with hit/miss counters."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items


class Expander:
    name = "base"

    def __init__(self, tau: float):
        self.tau = tau

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        raise NotImplementedError

    def region(self, image: np.ndarray, row: int, col: int) -> tuple[np.ndarray, float, bool]:
        """(mask, confidence, expanded): the expansion when its confidence passes tau, else the pixel."""
        h, w = image.shape[:2]
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"click ({row}, {col}) lies outside the {w}x{h} image")
        e = self.expand(image, row, col)
        if e.confidence > self.tau and e.mask[row, col]:
            return e.mask, e.confidence, True
        single = np.zeros((h, w), dtype=bool)
        single[row, col] = True
        return single, e.confidence, False

    def prefetch(self, image: np.ndarray) -> None:
        """Do the per-image work ahead of the first click (a no-op where there is none)."""

    def describe(self) -> dict:
        return {"name": self.name, "tau": self.tau}


class SinglePixelExpander(Expander):
    name = "none"

    def __init__(self):
        super().__init__(tau=0.0)

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[row, col] = True
        return Expansion(mask, 1.0)


class SuperpixelExpander(Expander):
    name = "superpixel"

    def __init__(self, tau: float = 0.5, segments: int = 300, compactness: float = 10.0,
                 color_tolerance: float = 8.0, cache_size: int = 64):
        super().__init__(tau)
        self.segments = segments  # per image, whatever its size: regions scale with the scene
        self.compactness = compactness
        self.color_tolerance = color_tolerance
        self.cache = LRUCache(cache_size)

    def _segments(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from skimage.color import rgb2lab
        from skimage.segmentation import slic

        key = image_digest(image)
        cached = self.cache.get(key)
        if cached is None:
            lab = rgb2lab(image)
            seg = slic(lab, n_segments=self.segments, compactness=self.compactness, start_label=0, convert2lab=False,
                       enforce_connectivity=True)
            cached = (seg, lab.astype(np.float32))
            self.cache.put(key, cached)
        return cached

    def prefetch(self, image: np.ndarray) -> None:
        self._segments(image)

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        seg, lab = self._segments(image)
        mask = seg == seg[row, col]
        distance = np.linalg.norm(lab[mask] - lab[row, col], axis=1)
        return Expansion(mask, float((distance <= self.color_tolerance).mean()))

    def describe(self) -> dict:
        return {**super().describe(), "segments": self.segments,
                "color_tolerance": self.color_tolerance, "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses}


def import_segment_anything() -> types.ModuleType:
    """`segment_anything.build_sam`, importing the package normally when torchvision loads and
    otherwise its torch-only modules without the package `__init__` (see the module docstring)."""
    try:
        return importlib.import_module("segment_anything.build_sam")
    except ImportError as exc:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("segment-anything is not installed: pip install segment-anything==1.0") from exc
        log.info("segment_anything's package init failed (%s); loading its model modules directly", exc)
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["segment_anything"] = package
        return importlib.import_module("segment_anything.build_sam")


class SamExpander(Expander):
    """Segment Anything on one positive point, the reference point-prompt pipeline of SamPredictor."""

    name = "sam"

    def __init__(self, sam: torch.nn.Module, tau: float = 0.85, cache_size: int = 16, model_type: str = "custom"):
        super().__init__(tau)
        self.sam = sam.eval()
        self.model_type = model_type
        self.device = next(sam.parameters()).device
        self.cache = LRUCache(cache_size)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None, model_type: str = "vit_b", tau: float = 0.85,
                        device: str = "cpu", cache_size: int = 16) -> SamExpander:
        if model_type not in SAM_DOWNLOADS:
            raise ValueError(f"SAM_MODEL_TYPE={model_type!r}; choose one of {', '.join(SAM_DOWNLOADS)}")
        where = f"Download it from {SAM_DOWNLOADS[model_type]} and set SAM_CHECKPOINT to its path."
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"SAM checkpoint {checkpoint} not found for SAM_MODEL_TYPE={model_type}. {where}")
        build = import_segment_anything()
        with torch.device("meta"):
            sam = build.sam_model_registry[model_type]()
        try:
            state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:
            raise ValueError(f"SAM checkpoint {checkpoint} could not be read ({type(exc).__name__}: {exc}). {where}") from exc
        expected = sam.state_dict()
        if not isinstance(state, dict) or set(state) != set(expected) or any(
                tuple(state[k].shape) != tuple(v.shape) for k, v in expected.items()):
            raise ValueError(f"SAM checkpoint {checkpoint} does not match SAM_MODEL_TYPE={model_type} (keys or shapes "
                             f"differ; is it another model size?). {where}")
        sam.load_state_dict(state, assign=True)
        return cls(sam.float().to(device), tau=tau, cache_size=cache_size, model_type=model_type)

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        scale = self.sam.image_encoder.img_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    @torch.no_grad()
    def embedding(self, image: np.ndarray) -> torch.Tensor:
        key = image_digest(image)
        features = self.cache.get(key)
        if features is None:
            h, w = image.shape[:2]
            nh, nw = self._input_size(h, w)
            resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
            with self._lock:
                features = self.sam.image_encoder(self.sam.preprocess(x))
            self.cache.put(key, features)
        return features

    def prefetch(self, image: np.ndarray) -> None:
        self.embedding(image)

    @torch.no_grad()
    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        h, w = image.shape[:2]
        features = self.embedding(image)
        nh, nw = self._input_size(h, w)
        point = torch.tensor([[[(col + 0.5) * nw / w, (row + 0.5) * nh / h]]], dtype=torch.float, device=self.device)
        label = torch.ones(1, 1, dtype=torch.int, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=(point, label), boxes=None, masks=None)
        low_res, iou = self.sam.mask_decoder(image_embeddings=features, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)
        masks = self.sam.postprocess_masks(low_res, (nh, nw), (h, w)) > self.sam.mask_threshold
        best = int(iou[0].argmax())
        return Expansion(masks[0, best].cpu().numpy(), float(iou[0, best]))

    def describe(self) -> dict:
        return {**super().describe(), "model_type": self.model_type, "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses}


def build_expander(name: str, *, tau: float | None = None, sam_checkpoint: str | Path | None = None,
                   sam_model_type: str = "vit_b", device: str = "cpu") -> Expander:
    if name == "none":
        return SinglePixelExpander()
    if name == "superpixel":
        return SuperpixelExpander(tau=0.5 if tau is None else tau)
    if name == "sam":
        return SamExpander.from_checkpoint(sam_checkpoint, sam_model_type, tau=0.85 if tau is None else tau,
                                           device=device)
    raise ValueError(f"unknown expander {name!r}; choose sam, superpixel or none")
