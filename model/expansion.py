"""Turning a click into a labeled region (paper appendix C.6).

An expander takes an image and a prompt and returns a boolean mask with a confidence; the region
is used only when the confidence passes the expander's threshold tau, otherwise the click stays
a single labeled pixel. The loop expands each answered query as one positive point, as the paper
does. An annotator's interactive session gives a `Prompt`: every point placed on the object so
far, positive or negative (Alt-click in Label Studio), in order, and optionally a box. Three
expanders:

- `sam`: Segment Anything. One point: three mask proposals, the one with the highest predicted
  IoU (the confidence). More points or a box: the session is replayed click by click as SAM was
  trained for interaction, each step decoding all points so far with the previous step's
  low-resolution mask logits as `mask_input`. A process remembers the steps it decoded, so a
  session's next click costs one decoder pass there and a replay elsewhere, with the same answer:
  it depends only on the prompt, never on which process saw the earlier clicks.
- `superpixel`: the segment under the click (Felzenszwalb's graph segmentation by default, chosen
  over SLIC and quickshift on CamVid: see docs/expansion.md), segmented at about 256 x 256 pixels whatever
  the image's size, so that time and segment scale do not grow with it; its confidence is the
  share of the segment's pixels whose CIELAB colour lies close to the click's, which falls when a
  segment straddles an object boundary. Needs no weights. Several points: the union of the
  positive points' regions less the negative points', inside the box.
- `none`: the single pixel (the paper's base setting).

The per-image work (SAM's image embedding, the segmentation) lives in an `EmbeddingCache`: in
memory and, given a directory, on disk for every process.

segment-anything's package `__init__` imports torchvision for its automatic mask generator and
image transforms, and PyPI's torchvision cannot load beside a CPU-only torch build. The prompt
path needs neither: when that import fails we load `segment_anything.build_sam` and
`segment_anything.modeling` on their own and apply SamPredictor's resize, normalisation and
mask post-processing here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from model.embedding_cache import DEFAULT_DISK_BYTES, EmbeddingCache, LRUCache, image_digest

log = logging.getLogger(__name__)

SAM_DOWNLOADS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

# scikit-image segmentations, each tuned at WORKING_PIXELS to 230-290 segments per CamVid image.
# slic takes the RGB image: it scales it to [0, 1] and converts to CIELAB itself, so compactness
# weighs colour against distance as documented (handing it CIELAB with convert2lab=False had it
# rescale the CIELAB values to [0, 1], where colour hardly counts and the segments were a grid).
SEGMENTATIONS = {
    "felzenszwalb": {"scale": 50, "sigma": 0.5, "min_size": 50},
    "slic": {"n_segments": 300, "compactness": 10, "start_label": 0},
    "quickshift": {"kernel_size": 3, "max_dist": 6, "ratio": 0.5},
}
WORKING_PIXELS = 256 * 256


@dataclass
class Expansion:
    mask: np.ndarray  # H x W bool, at the size of the image given
    confidence: float


@dataclass(frozen=True)
class Prompt:
    """What an annotator gave for one object: points (row, col, positive) in the order placed and
    optionally a box (left, top, right, bottom) in pixel coordinates of the image."""

    points: tuple[tuple[int, int, bool], ...] = ()
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def click(cls, row: int, col: int) -> Prompt:
        return cls(((row, col, True),))

    @property
    def positives(self) -> list[tuple[int, int]]:
        return [(row, col) for row, col, positive in self.points if positive]

    def check(self, height: int, width: int) -> None:
        if not self.points and self.box is None:
            raise ValueError("an empty prompt: give a point or a box")
        for row, col, _ in self.points:
            if not (0 <= row < height and 0 <= col < width):
                raise ValueError(f"click ({row}, {col}) lies outside the {width}x{height} image")
        if self.box is not None:
            left, top, right, bottom = self.box
            if not (0 <= left < right <= width and 0 <= top < bottom <= height):
                raise ValueError(f"box {self.box} is empty or leaves the {width}x{height} image")

    def box_mask(self, height: int, width: int) -> np.ndarray:
        """Pixels whose centres lie inside the box (all pixels without one)."""
        if self.box is None:
            return np.ones((height, width), dtype=bool)
        left, top, right, bottom = self.box
        rows = (np.arange(height) + 0.5 >= top) & (np.arange(height) + 0.5 <= bottom)
        cols = (np.arange(width) + 0.5 >= left) & (np.arange(width) + 0.5 <= right)
        return rows[:, None] & cols[None, :]


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


class Expander:
    name = "base"

    def __init__(self, tau: float):
        self.tau = tau

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        """The region of one positive point, before tau."""
        raise NotImplementedError

    def accept(self, e: Expansion, prompt: Prompt, shape: tuple[int, int]) -> tuple[np.ndarray, float, bool]:
        """(mask, confidence, expanded): the expansion when its confidence passes tau and it holds a
        positive point (or, for a box alone, any pixel); else the positive points alone."""
        inside = [e.mask[row, col] for row, col in prompt.positives]
        if e.confidence > self.tau and (any(inside) if inside else e.mask.any()):
            return e.mask, e.confidence, True
        clicks = np.zeros(shape, dtype=bool)
        for row, col in prompt.positives:
            clicks[row, col] = True
        return clicks, e.confidence, False

    def region(self, image: np.ndarray, row: int, col: int) -> tuple[np.ndarray, float, bool]:
        """(mask, confidence, expanded) of one positive point: the loop's expansion of a query."""
        prompt = Prompt.click(row, col)
        prompt.check(*image.shape[:2])
        return self.accept(self.expand(image, row, col), prompt, image.shape[:2])

    def prompt_region(self, image: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float, bool]:
        """(mask, confidence, expanded) of an interactive prompt. Point by point: the union of the
        positive points' regions, less the negative points' regions (the positive pixels stay),
        inside the box; the confidence is the positive regions' mean."""
        h, w = image.shape[:2]
        prompt.check(h, w)
        mask, clicks = np.zeros((h, w), dtype=bool), np.zeros((h, w), dtype=bool)
        confidences = []
        for row, col in prompt.positives:
            region, confidence, _ = self.region(image, row, col)
            mask |= region
            clicks[row, col] = True
            confidences.append(confidence)
        for row, col, positive in prompt.points:
            if not positive:
                mask &= ~self.region(image, row, col)[0]
        mask = (mask | clicks) & prompt.box_mask(h, w)
        return mask, float(np.mean(confidences)) if confidences else 0.0, bool((mask & ~clicks).any())

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


def working_size(height: int, width: int) -> tuple[int, int]:
    """The size an image is segmented at: about WORKING_PIXELS pixels, aspect kept, never enlarged."""
    scale = min(1.0, math.sqrt(WORKING_PIXELS / (height * width)))
    return max(1, round(height * scale)), max(1, round(width * scale))


def superpixels(image: np.ndarray, method: str) -> np.ndarray:
    """Segment ids of an RGB image by one of SEGMENTATIONS, at the image's own size."""
    import skimage.segmentation

    return getattr(skimage.segmentation, method)(image, **SEGMENTATIONS[method])


class SuperpixelExpander(Expander):
    name = "superpixel"

    def __init__(self, tau: float = 0.5, method: str = "felzenszwalb", color_tolerance: float = 8.0,
                 cache_size: int = 64, cache_dir: str | Path | None = None, cache_bytes: int = DEFAULT_DISK_BYTES):
        if method not in SEGMENTATIONS:
            raise ValueError(f"unknown superpixel method {method!r}; choose {', '.join(SEGMENTATIONS)}")
        super().__init__(tau)
        self.method = method
        self.color_tolerance = color_tolerance
        settings = json.dumps([SEGMENTATIONS[method], WORKING_PIXELS])
        namespace = f"superpixel-{method}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"
        self.cache = EmbeddingCache(cache_size, Path(cache_dir) / namespace if cache_dir else None, cache_bytes)

    def _segment(self, image: np.ndarray) -> dict[str, np.ndarray]:
        from skimage.color import rgb2lab

        size = working_size(*image.shape[:2])
        small = image if size == image.shape[:2] else np.asarray(
            Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
        return {"segments": superpixels(small, self.method).astype(np.int32), "lab": rgb2lab(small)}

    def segments(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment ids, CIELAB) at the working size."""
        arrays = self.cache.fetch(image, self._segment)
        return arrays["segments"], arrays["lab"]

    def prefetch(self, image: np.ndarray) -> None:
        self.segments(image)

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        segments, lab = self.segments(image)
        h, w = image.shape[:2]
        sh, sw = segments.shape
        r, c = row * sh // h, col * sw // w
        pieces, _ = ndimage.label(segments == segments[r, c])
        small = pieces == pieces[r, c]  # the connected piece of the segment that holds the click
        distance = np.linalg.norm(lab[small].astype(np.float32) - lab[r, c].astype(np.float32), axis=1)
        mask = small[(np.arange(h) * sh // h)[:, None], (np.arange(w) * sw // w)[None, :]]
        return Expansion(mask, float((distance <= self.color_tolerance).mean()))

    def describe(self) -> dict:
        return {**super().describe(), "method": self.method, "color_tolerance": self.color_tolerance,
                "cache": self.cache.describe()}


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
    """Segment Anything on point and box prompts, the reference pipeline of SamPredictor."""

    name = "sam"

    def __init__(self, sam: torch.nn.Module, tau: float = 0.85, model_type: str = "custom", cache_size: int = 16,
                 cache_dir: str | Path | None = None, cache_bytes: int = DEFAULT_DISK_BYTES):
        super().__init__(tau)
        self.sam = sam.eval()
        self.model_type = model_type
        self.device = next(sam.parameters()).device
        # two checkpoints of one model type never share embeddings
        weights = sam.image_encoder.patch_embed.proj.weight.detach().cpu().numpy().tobytes()
        namespace = f"sam-{model_type}-{hashlib.sha1(weights).hexdigest()[:12]}"
        self.cache = EmbeddingCache(cache_size, Path(cache_dir) / namespace if cache_dir else None, cache_bytes)
        self.steps = LRUCache(64)  # (image, points so far, box) -> that step's low-resolution logits

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None, model_type: str = "vit_b", tau: float = 0.85,
                        device: str = "cpu", cache_dir: str | Path | None = None,
                        cache_bytes: int = DEFAULT_DISK_BYTES) -> SamExpander:
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
        return cls(sam.float().to(device), tau=tau, model_type=model_type, cache_dir=cache_dir,
                   cache_bytes=cache_bytes)

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        scale = self.sam.image_encoder.img_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        nh, nw = self._input_size(*image.shape[:2])
        resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        return {"embedding": self.sam.image_encoder(self.sam.preprocess(x)).cpu().numpy()}

    def embedding(self, image: np.ndarray) -> torch.Tensor:
        stored = self.cache.fetch(image, self._encode)["embedding"]
        return torch.from_numpy(stored).to(self.device, torch.float32)

    def prefetch(self, image: np.ndarray) -> None:
        self.embedding(image)

    @torch.no_grad()
    def _decode(self, features: torch.Tensor, size: tuple[int, int], points: tuple, box: tuple | None,
                previous: torch.Tensor | None) -> tuple[Expansion, torch.Tensor]:
        """One decoder pass: the mask, its predicted IoU and its low-resolution logits. A single point
        is ambiguous (part or whole?): SAM's three proposals, the best kept; otherwise one mask."""
        h, w = size
        nh, nw = self._input_size(h, w)
        sx, sy = nw / w, nh / h
        sparse_points = None
        if points:
            coords = torch.tensor([[[(col + 0.5) * sx, (row + 0.5) * sy] for row, col, _ in points]],
                                  dtype=torch.float, device=self.device)
            labels = torch.tensor([[int(positive) for _, _, positive in points]], dtype=torch.int, device=self.device)
            sparse_points = (coords, labels)
        boxes = None if box is None else torch.tensor(
            [[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]], dtype=torch.float, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=sparse_points, boxes=boxes, masks=previous)
        low_res, iou = self.sam.mask_decoder(image_embeddings=features, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=len(points) == 1 and box is None)
        best = int(iou[0].argmax())
        logits = low_res[:, best:best + 1]
        mask = self.sam.postprocess_masks(logits, (nh, nw), (h, w))[0, 0] > self.sam.mask_threshold
        return Expansion(mask.cpu().numpy(), float(iou[0, best])), logits

    def expand_prompt(self, image: np.ndarray, prompt: Prompt) -> Expansion:
        """The session replayed: step k decodes points 1..k (and the box) with step k-1's logits. The
        steps this process decoded before are remembered, so a session's next click costs one pass."""
        size = image.shape[:2]
        prompt.check(*size)
        features = self.embedding(image)
        digest = image_digest(image)
        start, logits = 0, None
        for k in range(len(prompt.points) - 1, 0, -1):  # the longest part of the session decoded before
            logits = self.steps.get((digest, prompt.points[:k], prompt.box))
            if logits is not None:
                start = k
                break
        for k in range(start + 1, len(prompt.points) + 1) if prompt.points else [0]:  # [0]: the box alone
            e, logits = self._decode(features, size, prompt.points[:k], prompt.box, logits)
            self.steps.put((digest, prompt.points[:k], prompt.box), logits)
        return e

    def expand(self, image: np.ndarray, row: int, col: int) -> Expansion:
        return self.expand_prompt(image, Prompt.click(row, col))

    def prompt_region(self, image: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, float, bool]:
        return self.accept(self.expand_prompt(image, prompt), prompt, image.shape[:2])

    def describe(self) -> dict:
        return {**super().describe(), "model_type": self.model_type, "cache": self.cache.describe()}


def build_expander(name: str, *, tau: float | None = None, sam_checkpoint: str | Path | None = None,
                   sam_model_type: str = "vit_b", device: str = "cpu", cache_dir: str | Path | None = None,
                   cache_bytes: int = DEFAULT_DISK_BYTES) -> Expander:
    if name == "none":
        return SinglePixelExpander()
    if name == "superpixel":
        return SuperpixelExpander(tau=0.5 if tau is None else tau, cache_dir=cache_dir, cache_bytes=cache_bytes)
    if name == "sam":
        return SamExpander.from_checkpoint(sam_checkpoint, sam_model_type, tau=0.85 if tau is None else tau,
                                           device=device, cache_dir=cache_dir, cache_bytes=cache_bytes)
    raise ValueError(f"unknown expander {name!r}; choose sam, superpixel or none")
