"""A trained head as one file, for use outside the backend (`python -m ml_backend heads export`).

The file holds what it takes to segment an image the way the backend did: the head's weights,
its class names, the features it was trained on (backbone, the seed of its weights when it has
no checkpoint, the checkpoint's file name, and the feature configuration: resolution, timesteps,
decoder blocks, normalisation, noise seed) and its training report. The diffusion checkpoint
itself (2.2 GB) is not in it: `python -m model segment --checkpoint` names it. It is a plain
`torch.save` of tensors, numbers and strings, which `torch.load(weights_only=True)` reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from model.backbones import get_backbone, load_unet
from model.features import DiffusionFeatureExtractor, FeatureConfig
from model.head import SegmentationHead

FORMAT = "two-stage-edald-head"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureSetup:
    """Where a head's input features come from."""

    backbone: str
    backbone_seed: int  # the random weights of a backbone used without a checkpoint (`tiny`)
    checkpoint_file: str | None  # the diffusion checkpoint's file name; None: random weights
    config: FeatureConfig

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "backbone_seed": self.backbone_seed,
                "checkpoint_file": self.checkpoint_file, "config": asdict(self.config)}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSetup:
        known = {f.name for f in fields(FeatureConfig)}
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items() if k in known}
        return cls(data["backbone"], int(data["backbone_seed"]), data["checkpoint_file"], FeatureConfig(**config))

    def extractor(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
                  ) -> DiffusionFeatureExtractor:
        """The frozen backbone and feature extractor the head expects; `checkpoint` is required for a
        pretrained backbone (load_unet names the file and where to download it)."""
        unet = load_unet(get_backbone(self.backbone), checkpoint, device=device, seed=self.backbone_seed)
        return DiffusionFeatureExtractor(unet, self.config)


@dataclass(frozen=True)
class ExportedHead:
    version: str
    classes: tuple[str, ...]
    weights: dict  # SegmentationHead.checkpoint()
    features: FeatureSetup
    report: dict  # the training report: labeled pixels, epochs, final loss, ...
    details: dict  # project, round, created, labels digest

    def __post_init__(self):
        if self.weights["num_classes"] != len(self.classes):
            raise ValueError(f"head {self.version} has {self.weights['num_classes']} classes but {len(self.classes)} "
                             f"class names were given")

    def head(self) -> SegmentationHead:
        return SegmentationHead.from_checkpoint(self.weights)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
                        "classes": list(self.classes), "head": self.weights, "features": self.features.as_dict(),
                        "report": self.report, "details": self.details}, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # written and moved, or failed: never left behind
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExportedHead:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"head file {path} does not exist (write one with `python -m ml_backend heads "
                                    "export VERSION --out FILE`)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for foreign files
            raise ValueError(f"{path} is not a head file ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a head exported by `python -m ml_backend heads export`")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is a head file of format version {data.get('format_version')}; this code reads "
                             f"version {FORMAT_VERSION}")
        return cls(data["version"], tuple(data["classes"]), data["head"], FeatureSetup.from_dict(data["features"]),
                   data["report"], data["details"])
