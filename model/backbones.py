"""Named diffusion backbones and loading their checkpoints with errors a user can act on.

A pretrained backbone never silently falls back to random weights: a missing, truncated or
mismatched file raises `CheckpointError` naming the file, the configuration it must match and
where to download it. Only `tiny` may run without a checkpoint, and it says so loudly.

A checkpoint written by `python -m model pretrain` has a training record beside it (the same
name, `.json`): what it was trained on. `describe_weights` reads it, so that the CLI and the
backend report such a file as "pretrained on <dataset> (N images, S steps)" rather than as the
released ImageNet or LSUN model, and a `tiny` trained that way as pretrained at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.unet import GuidedDiffusionUNet, UNetConfig

log = logging.getLogger(__name__)

DOWNLOAD_BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"


@dataclass(frozen=True)
class Backbone:
    name: str
    unet: UNetConfig
    checkpoint_file: str | None  # the released file name, None for random-weight configurations
    description: str

    @property
    def pretrained(self) -> bool:
        return self.checkpoint_file is not None

    @property
    def url(self) -> str | None:
        return f"{DOWNLOAD_BASE}/{self.checkpoint_file}" if self.checkpoint_file else None


BACKBONES: dict[str, Backbone] = {
    "imagenet256": Backbone(
        "imagenet256", UNetConfig(), "256x256_diffusion_uncond.pt",
        "guided-diffusion ImageNet 256x256 unconditional (the paper's backbone for CamVid, "
        "Cityscapes, Pascal-Context)",
    ),
    "lsun_bedroom": Backbone(
        "lsun_bedroom", UNetConfig(dropout=0.1), "lsun_bedroom.pt",
        "guided-diffusion LSUN bedroom 256x256 (the paper's backbone for ADE-Bed)",
    ),
    "tiny": Backbone(
        "tiny", UNetConfig(model_channels=32, num_head_channels=32), None,
        "same topology with 32 base channels and RANDOM weights (for tests and CPU demos), unless given a "
        "checkpoint trained by `python -m model pretrain --backbone tiny`",
    ),
}

NOT_PRETRAINED_WARNING = (
    "BACKBONE 'tiny' HAS RANDOM WEIGHTS AND IS NOT PRETRAINED: its features and every number "
    "computed from them say nothing about the method's real accuracy."
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot serve the requested backbone."""


@dataclass(frozen=True)
class Weights:
    """What a backbone runs on: whether it is pretrained, and on what, in words."""

    pretrained: bool
    description: str


def training_record_path(checkpoint: str | Path) -> Path:
    """The training record `python -m model pretrain` writes beside its checkpoint."""
    return Path(checkpoint).with_suffix(".json")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_weights(backbone: Backbone, checkpoint: str | Path | None) -> Weights:
    """The weights `load_unet(backbone, checkpoint)` gives, in words fit for /health (no paths).

    A training record makes a file "pretrained on ..."; without one, a released backbone's file is
    taken to be the release, and a `tiny` file is not known to be pretrained."""
    if checkpoint is None or str(checkpoint) == "":
        if backbone.pretrained:
            return Weights(True, f"the released {backbone.checkpoint_file}: {backbone.description}")
        return Weights(False, "random weights, not pretrained")
    path = Path(checkpoint).expanduser()
    record_path = training_record_path(path)
    if not record_path.is_file():
        if backbone.pretrained:
            return Weights(True, f"the released {backbone.checkpoint_file}: {backbone.description}")
        return Weights(False, f"{path.name}, which has no training record ({record_path.name}): not known "
                              f"to be pretrained")
    try:
        record = json.loads(record_path.read_text())
        text = (f"pretrained on {record['dataset']} ({_count(record['images'], 'image')}, "
                f"{_count(record['steps'], 'step')} at {record['resolution']} px)")
        init = record.get("init")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Weights(False, f"{path.name}, whose training record {record_path.name} could not be read "
                              f"({type(exc).__name__}: {exc}): not known to be pretrained")
    return Weights(True, text + (f", fine-tuned from {init}" if init else ", from scratch"))


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def _describe(backbone: Backbone) -> str:
    c = backbone.unet
    return (f"backbone '{backbone.name}' ({backbone.description}; model_channels={c.model_channels}, "
            f"channel_mult={c.channel_mult}, num_res_blocks={c.num_res_blocks}, "
            f"attention_resolutions={c.attention_resolutions}, num_head_channels={c.num_head_channels})")


def _where_to_get(backbone: Backbone) -> str:
    if backbone.url:
        return (f"Download {backbone.checkpoint_file} from {backbone.url} and pass its path "
                f"(--checkpoint, or DIFFUSION_CHECKPOINT for the backend).")
    return "This configuration has no released checkpoint; omit the path to use random weights."


def _read_state_dict(path: Path, backbone: Backbone) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"Checkpoint {path} could not be read ({type(exc).__name__}: {exc}). It is truncated or "
            f"not a PyTorch state dict; {_describe(backbone)} expects the plain state dict of "
            f"guided-diffusion. {_where_to_get(backbone)}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"Checkpoint {path} is not a state dict of tensors; {_describe(backbone)} expects the "
            f"plain state dict of guided-diffusion. {_where_to_get(backbone)}"
        )
    return state


def _check_layout(path: Path, state: dict[str, torch.Tensor], unet: GuidedDiffusionUNet,
                  backbone: Backbone) -> None:
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: file {found[k]}, expected {expected[k]}" for k in expected
             if k in found and found[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
    raise CheckpointError(
        f"Checkpoint {path} does not match {_describe(backbone)}: {'; '.join(parts)}. "
        f"{_where_to_get(backbone)}"
    )


def resolve_device(name: str) -> torch.device:
    """The device a `--device` / DEVICE setting names: `auto` is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_unet(backbone: Backbone | str, checkpoint: str | Path | None = None,
              device: str | torch.device = "cpu", seed: int = 0) -> GuidedDiffusionUNet:
    """The backbone's UNet in eval mode with frozen float32 weights on `device`."""
    backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if checkpoint is None or str(checkpoint) == "":
        if backbone.pretrained:
            raise CheckpointError(
                f"No checkpoint given for {_describe(backbone)}; it needs {backbone.checkpoint_file}. "
                f"{_where_to_get(backbone)}"
            )
        log.warning(NOT_PRETRAINED_WARNING)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = GuidedDiffusionUNet(backbone.unet)
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"Checkpoint file {path} does not exist; {_describe(backbone)} expects "
                f"{backbone.checkpoint_file or 'a checkpoint written for it'}. {_where_to_get(backbone)}"
            )
        state = _read_state_dict(path, backbone)
        with torch.device("meta"):
            unet = GuidedDiffusionUNet(backbone.unet)
        _check_layout(path, state, unet, backbone)
        unet.load_state_dict(state, assign=True)
        weights = describe_weights(backbone, path)
        if weights.pretrained:
            log.info("backbone %s: %s", backbone.name, weights.description)
        else:
            log.warning("%s (%s)", NOT_PRETRAINED_WARNING, weights.description)
    unet = unet.float().to(device).eval()
    unet.requires_grad_(False)
    return unet
