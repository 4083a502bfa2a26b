"""Command line: `python -m model info|simulate|bench ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from model.backbones import BACKBONES, NOT_PRETRAINED_WARNING, get_backbone
from model.features import FeatureConfig
from model.unet import GuidedDiffusionUNet, decoder_block_shapes


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(",", " ").split())


def info(args: argparse.Namespace) -> dict:
    """Decoder block shapes and the feature dimension, computed on the meta device (no weights)."""
    backbone = get_backbone(args.backbone)
    resolution = args.resolution or backbone.unet.image_size
    shapes = decoder_block_shapes(backbone.unet, resolution)
    with torch.device("meta"):
        params = sum(p.numel() for p in GuidedDiffusionUNet(backbone.unet).parameters())
    out = {
        "backbone": backbone.name,
        "description": backbone.description,
        "pretrained": backbone.pretrained,
        "checkpoint_file": backbone.checkpoint_file,
        "download_url": backbone.url,
        "parameters": params,
        "resolution": resolution,
        "decoder_blocks": {str(i): s for i, s in enumerate(shapes)},
        "feature_blocks": list(args.blocks),
        "timesteps": list(args.timesteps),
        "feature_dim": len(args.timesteps) * sum(shapes[b][0] for b in args.blocks),
    }
    if not backbone.pretrained:
        out["warning"] = NOT_PRETRAINED_WARNING
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = FeatureConfig()

    p = sub.add_parser("info", help="decoder block shapes and feature dimension of a backbone")
    p.add_argument("--backbone", default="imagenet256", choices=sorted(BACKBONES))
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the backbone's)")
    p.add_argument("--blocks", type=_ints, default=defaults.blocks)
    p.add_argument("--timesteps", type=_ints, default=defaults.timesteps)
    p.set_defaults(run=lambda a: print(json.dumps(info(a), indent=2)))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
