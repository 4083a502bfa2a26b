"""The backend's ML side: one frozen backbone shared by all projects, heads per project, expander.

The backbone and its features are the backend's (`self.settings`, from the environment); what a
round, a training run and the expander do comes from the project's effective settings, passed in
(`Services.settings_for`). The backbone loads on first use, not at import or /setup (Label Studio
gives /setup 3 seconds and the ImageNet checkpoint is 2.2 GB); a checkpoint problem is kept and
shown by /health and /setup.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from ml_backend.config import Settings
from model.acquisition import get_acquisition
from model.backbones import CheckpointError, Weights, describe_weights, get_backbone, load_unet, resolve_device
from model.embedding_cache import LRUCache
from model.expansion import Expander, build_expander
from model.features import DiffusionFeatureExtractor, FeatureConfig, ImageFeatureSource, resolve_dtype
from model.head import SegmentationHead, TrainConfig
from model.head_export import FeatureSetup
from model.prediction import ImageSegmentation, segment_image
from model.selection import RecordCache, RoundConfig, budget_for

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.backbone = get_backbone(settings.backbone)
        self._lock = threading.RLock()
        self._extractor: DiffusionFeatureExtractor | None = None
        self._expanders: dict[str, Expander] = {}  # by name, built with the environment's tau
        self.backbone_error: str | None = None
        self.expander_error: str | None = None
        self._heads = LRUCache(16)

    # configuration ------------------------------------------------------------------------------
    def feature_config(self) -> FeatureConfig:
        """The backend's features; their noise seed is the environment's SEED whatever a project sets."""
        s = self.settings
        return FeatureConfig(resolution=s.resolution, draws=s.draws, seed=s.seed,
                             dtype=resolve_dtype(s.feature_dtype, self.device))

    def feature_setup(self) -> FeatureSetup:
        """What a head trained here expects as input (recorded with it, for export)."""
        path = self.checkpoint_path()
        return FeatureSetup(self.backbone.name, self.settings.seed,
                            path.name if path else None, self.feature_config())

    def round_config(self, settings: Settings, num_images: int) -> RoundConfig:
        s = settings
        budget = min(s.budget, num_images * s.resolution ** 2) if s.budget else budget_for(num_images, s.budget_factor)
        return RoundConfig(budget=budget, candidates=s.candidates, local_k=s.local_k,
                           keep_global=s.keep_global, coverage=s.coverage, acquisition=s.acquisition, seed=s.seed,
                           local_sketch_dim=s.local_sketch_dim or None, global_exact_max=s.global_exact_max,
                           device=str(self.device))

    def train_config(self, settings: Settings) -> TrainConfig:
        return TrainConfig(batch_size=settings.train_batch_size, max_epochs=settings.train_max_epochs,
                           mc_dropout=get_acquisition(settings.acquisition).head_dropout, seed=settings.seed)

    def checkpoint_path(self) -> Path | None:
        return self.settings.diffusion_checkpoint

    def weights(self) -> Weights:
        """What the backbone runs on: the release, a checkpoint from `python -m model pretrain` (its
        training record says on what), or random weights."""
        return describe_weights(self.backbone, self.checkpoint_path())

    def checkpoint_problem(self) -> str | None:
        """A cheap check fit for /setup and /health: is the checkpoint file there at all? The answer
        names the one thing to do: where to download the file and the path it is expected at."""
        if self.backbone_error:
            return self.backbone_error
        path = self.checkpoint_path()
        if (path is None and not self.backbone.pretrained) or (path is not None and path.is_file()):
            return None
        if not self.backbone.pretrained:
            return (f"the diffusion checkpoint {path} for BACKBONE={self.backbone.name} is missing: set "
                    f"DIFFUSION_CHECKPOINT to a file written by `python -m model pretrain --backbone "
                    f"{self.backbone.name}`, or unset it for random weights")
        if path is None:
            return (f"the diffusion checkpoint for BACKBONE={self.backbone.name} is not configured: download "
                    f"{self.backbone.url} and set DIFFUSION_CHECKPOINT to its path")
        return (f"the diffusion checkpoint for BACKBONE={self.backbone.name} is missing: download "
                f"{self.backbone.url} to {path} (or set DIFFUSION_CHECKPOINT to where the file is)")

    def record_fingerprint(self, settings: Settings) -> dict:
        path = self.checkpoint_path()
        stat = path.stat() if path and path.is_file() else None
        return {"backbone": self.backbone.name, "checkpoint": str(path), "size": stat.st_size if stat else None,
                "mtime": stat.st_mtime if stat else None, "features": self.feature_config().__dict__,
                "candidates": settings.candidates, "local_k": settings.local_k,
                "local_sketch_dim": settings.local_sketch_dim, "coverage": settings.coverage, "seed": settings.seed}

    # components ---------------------------------------------------------------------------------
    def extractor(self) -> DiffusionFeatureExtractor:
        with self._lock:
            if self._extractor is None:
                try:
                    unet = load_unet(self.backbone, self.checkpoint_path(), device=self.device, seed=self.settings.seed)
                except CheckpointError as exc:
                    self.backbone_error = str(exc)
                    raise
                self.backbone_error = None
                self._extractor = DiffusionFeatureExtractor(unet, self.feature_config())
                log.info("backbone %s loaded on %s (feature dim %d, %s)", self.backbone.name, self.device,
                         self._extractor.dim, self._extractor.config.dtype)
            return self._extractor

    def source(self, load_image, keys: list[str]) -> ImageFeatureSource:
        return ImageFeatureSource(self.extractor(), load_image, keys)

    def records(self, settings: Settings, directory: Path) -> RecordCache:
        return RecordCache(self.record_fingerprint(settings), directory)

    def expander(self, settings: Settings | None = None) -> Expander:
        """The click expander a project's settings name (default: the environment's), with its tau. One
        of each kind is built and shared by every project (a project's tau is a view of it); its
        per-image work (SAM embeddings, segmentations) is shared on disk under MODEL_DIR/embeddings by
        every process: web workers, threads, and the RQ worker that prefetches."""
        s, base = settings or self.settings, self.settings
        with self._lock:
            if s.expander not in self._expanders:
                tau = base.sam_tau if s.expander == "sam" else base.superpixel_tau
                try:
                    self._expanders[s.expander] = build_expander(
                        s.expander, tau=tau, sam_checkpoint=base.sam_checkpoint, sam_model_type=base.sam_model_type,
                        device=str(self.device), cache_dir=base.model_dir / "embeddings")
                except (FileNotFoundError, ValueError, ImportError) as exc:
                    self.expander_error = str(exc)
                    raise
                self.expander_error = None
            shared = self._expanders[s.expander]
        tau = {"sam": s.sam_tau, "superpixel": s.superpixel_tau}.get(s.expander, shared.tau)
        if tau == shared.tau:
            return shared
        view = copy.copy(shared)  # the same model and caches, the project's threshold
        view.tau = tau
        return view

    def head(self, project: int, version: str, path: str) -> SegmentationHead:
        key = (project, version)
        head = self._heads.get(key)
        if head is None:
            head = SegmentationHead.from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
            self._heads.put(key, head.to(self.device))
        return head

    def remember_head(self, project: int, version: str, head: SegmentationHead) -> None:
        """Heads segment on the backend's device, where the feature maps are (a CPU head would pull a
        256 px image's 65,536 x 6,144 features across to the host)."""
        self._heads.put((project, version), head.to(self.device))

    def segment(self, head: SegmentationHead, image: np.ndarray) -> ImageSegmentation:
        """The head's segmentation of an image at its original size (model.prediction.segment_image,
        which `python -m model segment` runs on exported heads too)."""
        return segment_image(self.extractor(), head, image)

    def weights_status(self) -> dict:
        """Whether the features come from pretrained weights, and which; while the checkpoint is
        missing, the file the backbone expects, said to be missing (it is not pretrained yet)."""
        weights, problem = self.weights(), self.checkpoint_problem()
        return {"pretrained": weights.pretrained and problem is None,
                "weights": weights.description if problem is None else f"not there yet: {weights.description}"}

    def status(self) -> dict:
        loaded = self._extractor is not None
        problem = self.checkpoint_problem()
        built = self._expanders.get(self.settings.expander)
        expander = {"name": self.settings.expander, "loaded": built is not None, "error": self.expander_error}
        if built is not None:
            expander.update(built.describe())
        return {
            "backbone": self.backbone.name, **self.weights_status(), "loaded": loaded, "device": str(self.device),
            "checkpoint": str(self.checkpoint_path()) if self.checkpoint_path() else None,
            "error": problem, "feature_dim": self._extractor.dim if loaded else None, "expander": expander,
        }
