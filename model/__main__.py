"""Command line: `python -m model info|pretrain|expansion|simulate|probe|compare|bench|segment ...`."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys

import torch

from model.backbones import (BACKBONES, NOT_PRETRAINED_WARNING, describe_weights, get_backbone, load_unet,
                             resolve_device)
from model.expansion import SEGMENTATIONS
from model.features import DTYPES, FeatureConfig
from model.unet import GuidedDiffusionUNet, decoder_block_shapes

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(",", " ").split())


def info(args: argparse.Namespace) -> dict:
    """Decoder block shapes and the feature dimension, computed on the meta device (no weights); with
    --checkpoint, that file's layout is checked and its weights described (pretrained on what)."""
    backbone = get_backbone(args.backbone)
    if args.checkpoint:
        load_unet(backbone, args.checkpoint)
    weights = describe_weights(backbone, args.checkpoint)
    resolution = args.resolution or backbone.unet.image_size
    shapes = decoder_block_shapes(backbone.unet, resolution)
    with torch.device("meta"):
        params = sum(p.numel() for p in GuidedDiffusionUNet(backbone.unet).parameters())
    out = {
        "backbone": backbone.name,
        "description": backbone.description,
        "pretrained": weights.pretrained,
        "weights": weights.description,
        "checkpoint": args.checkpoint,
        "checkpoint_file": backbone.checkpoint_file,
        "download_url": backbone.url,
        "parameters": params,
        "resolution": resolution,
        "decoder_blocks": {str(i): s for i, s in enumerate(shapes)},
        "feature_blocks": list(args.blocks),
        "timesteps": list(args.timesteps),
        "feature_dim": len(args.timesteps) * sum(shapes[b][0] for b in args.blocks),
    }
    if not weights.pretrained:
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
    p.add_argument("--checkpoint", default=None, help="a checkpoint of the backbone: its layout is checked and its "
                   "weights described (e.g. one written by `pretrain`)")
    p.set_defaults(run=lambda a: print(json.dumps(info(a), indent=2)))
    add_pretrain(sub)

    p = sub.add_parser("expansion", help="purity and pixels per click of expanders on a labeled split, side by side")
    add_dataset_arguments(p)
    p.add_argument("--split", default="val")
    p.add_argument("--expander", default="superpixel", choices=["superpixel", "sam", "none"])
    p.add_argument("--methods", nargs="+", default=list(SEGMENTATIONS), choices=list(SEGMENTATIONS),
                   help="superpixel segmentations to compare (the first is drawn first)")
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--sam-model-type", default="vit_b")
    p.add_argument("--clicks", type=int, default=500)
    p.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--tau", type=float, default=None, help="threshold drawn in the PNG (default: the expander's)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--region-cap", type=int, default=256,
                   help="training pixels a region gives at most (REGION_PIXEL_CAP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/expansion")
    p.set_defaults(run=expansion)
    add_simulate(sub)

    p = sub.add_parser("segment", help="label PNGs and colour overlays of a folder of images, with an exported head")
    p.add_argument("--head", required=True, help="a head file written by `python -m ml_backend heads export`")
    p.add_argument("--images", required=True, help="a folder of images (PNG, JPEG, BMP, TIFF, WebP)")
    p.add_argument("--out", required=True, help="writes labels/<image>.png (class index per pixel), "
                   "overlays/<image>.png and classes.txt")
    p.add_argument("--checkpoint", default=None,
                   help="the diffusion checkpoint of the head's backbone (the head file names the file)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=segment_folder)
    from model.experiments.bench import add_parser as add_bench

    add_bench(sub)
    return parser


def add_pretrain(sub) -> None:
    from model.datasets import ADAPTERS
    from model.pretrain import DTYPES as TRAIN_DTYPES

    p = sub.add_parser("pretrain", help="train a backbone's diffusion UNet on a dataset's images (labels ignored)")
    p.add_argument("--data", required=True, help="dataset root in any layout `simulate` reads")
    p.add_argument("--dataset", default=None, choices=list(ADAPTERS),
                   help="layout of --data (default: found from what the directory holds)")
    p.add_argument("--split", default="train", help="the split whose images are trained on")
    p.add_argument("--backbone", required=True, choices=sorted(BACKBONES))
    p.add_argument("--init", default=None, help="a checkpoint of the backbone to fine-tune (default: from scratch)")
    p.add_argument("--resolution", type=int, default=None, help="crop size (default: the backbone's, 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, required=True, help="optimizer steps in all (a resumed run counts its own)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (guided-diffusion's 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.9999, help="EMA rate of the weights the checkpoint holds")
    p.add_argument("--save-every", type=int, default=1000, help="steps between resumable states in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=list(TRAIN_DTYPES),
                   help="bf16: the forward pass under bf16 autocast (for GPUs); weights stay float32")
    p.add_argument("--out", required=True, help="folder of the run: state.pt (resumed when there) and the checkpoint")
    p.set_defaults(run=pretrain)


def pretrain(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tqdm import tqdm

    from model.datasets import load_dataset
    from model.backbones import training_record_path
    from model.pretrain import PretrainConfig, Pretraining

    backbone = get_backbone(args.backbone)
    dataset = load_dataset(args.data, args.split, args.dataset)
    config = PretrainConfig(
        backbone=backbone.name, resolution=args.resolution or backbone.unet.image_size, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, ema=args.ema,
        save_every=args.save_every, seed=args.seed, dtype=args.dtype,
        init=str(Path(args.init).expanduser().resolve()) if args.init else None)
    device = resolve_device(args.device)
    run = Pretraining(config, dataset.image_paths, dataset.name, args.out, device, data={"split": dataset.split})
    with tqdm(total=config.steps, initial=run.step, desc=f"pretrain {backbone.name} on {dataset.name}",
              unit="step") as bar:
        def on_step(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        try:
            path = run.run(on_step)
        except KeyboardInterrupt:
            path = None
    if path is None:  # after the bar's last line
        saved = run.saved_step
        kept = f"the state of step {saved} is in {run.state_path}" if saved else \
            f"no state was saved yet (every --save-every {config.save_every} steps)"
        print(f"interrupted at step {run.step}: {kept}; the same command continues from there", file=sys.stderr)
        raise SystemExit(130)
    weights = describe_weights(backbone, path)
    seconds = f", median {statistics.median(run.step_seconds):.3f} s per step" if run.step_seconds else ""
    print(f"wrote {path} ({weights.description}; final loss {run.loss:.4f}{seconds}) and its training record "
          f"{training_record_path(path).name}. Use it with `--backbone {backbone.name} --checkpoint {path}`, or "
          f"BACKBONE={backbone.name} DIFFUSION_CHECKPOINT={path} for the backend")


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    from model.datasets import ADAPTERS
    from model.preprocessing import PREPROCESSING

    p.add_argument("--data", required=True, help="dataset root, e.g. ../shared/datasets/camvid")
    p.add_argument("--dataset", default=None, choices=list(ADAPTERS),
                   help="layout of --data (default: found from what the directory holds)")
    p.add_argument("--preprocess", default=None, choices=list(PREPROCESSING),
                   help="resize: squash to the square; center-crop: shorter side to the size, central square "
                        "(default: the paper's choice for the dataset; see docs/simulation.md, Datasets)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The data, backbone and feature settings `simulate` and `probe` share (the same settings share a cache)."""
    add_dataset_arguments(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--backbone", default="imagenet256", choices=sorted(BACKBONES))
    p.add_argument("--checkpoint", default=None, help="diffusion checkpoint (required for pretrained backbones)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--feature-seed", type=int, default=0, help="seed of the feature noises (shared by all runs)")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--max-eval-images", type=int, default=None)
    p.add_argument("--map-cache-gb", type=float, default=8.0, help="disk budget for cached feature maps (0: off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="UNet precision: auto is fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    p.add_argument("--out", required=True)


def add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="replay active learning with the ground truth as the annotator")
    add_run_arguments(p)
    p.add_argument("--strategy", nargs="+", default=["two-stage-edald"],
                   help="one or more: random, herding, coreset, <acquisition>, two-stage-<acq>, coreset-<acq>")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--budget-factor", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--expand", default="none", choices=["none", "superpixel", "sam"])
    p.add_argument("--tau", type=float, default=None, help="expansion threshold (default: the expander's)")
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--sam-model-type", default="vit_b")
    p.add_argument("--region-cap", type=int, default=256)
    p.add_argument("--candidates", type=int, default=10_000)
    p.add_argument("--local-k", type=int, default=50)
    p.add_argument("--keep-global", type=float, default=0.5)
    p.add_argument("--local-sketch-dim", type=int, default=None,
                   help="dimension of the subspace sketch for per-image herding, e.g. 128 "
                        "(default: exact; see docs/performance.md)")
    p.add_argument("--switch-after", type=int, default=None,
                   help="late switch: after this many rounds use --switch-to alone (the paper's schedule)")
    p.add_argument("--switch-to", default="margin")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--train-epochs", type=int, default=50)
    p.set_defaults(run=simulate)

    p = sub.add_parser("probe", help="the head trained on every labeled pixel of a few training images: what the "
                                     "features alone are worth (compare backbones)")
    add_run_arguments(p)
    p.add_argument("--images", type=int, default=10, help="training images whose labeled pixels all train the head")
    p.add_argument("--image-seed", type=int, default=0, help="seed of the draw of those images")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="head seeds (one head each)")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--train-epochs", type=int, default=10)
    p.set_defaults(run=probe)

    p = sub.add_parser("compare", help="simulate and probe runs of variants side by side: a table and the curves")
    p.add_argument("--run", dest="variants", action="append", required=True, metavar="LABEL=FOLDER",
                   help="a variant's folder (written by simulate and/or probe), e.g. 'pretrained=runs/camvid-pre'; "
                        "repeat for each")
    p.add_argument("--out", required=True, help="writes comparison.md, comparison.png (simulations) and probes.png "
                                               "(probes)")
    p.set_defaults(run=compare)


def compare(args: argparse.Namespace) -> None:
    from model.experiments.comparison import compare as write_comparison, parse_variant

    text, written = write_comparison([parse_variant(v) for v in args.variants], args.out)
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))


def prepare_run(args: argparse.Namespace):
    """The checked splits, the feature extractor and the backbone's fingerprint of a simulate or probe run."""
    from pathlib import Path

    from model.datasets import load_dataset
    from model.features import DiffusionFeatureExtractor, resolve_dtype

    device = resolve_device(args.device)
    backbone = get_backbone(args.backbone)
    train_set = load_dataset(args.data, args.train_split, args.dataset, args.preprocess).head(args.max_train_images)
    eval_set = load_dataset(args.data, args.eval_split, args.dataset, args.preprocess).head(args.max_eval_images)
    for dataset in (train_set, eval_set):
        check_labels(dataset)
    unet = load_unet(backbone, args.checkpoint, device=device)
    weights = describe_weights(backbone, args.checkpoint)
    if not weights.pretrained:
        print(f"WARNING: {NOT_PRETRAINED_WARNING}", file=sys.stderr)
    features = FeatureConfig(resolution=args.resolution, draws=args.draws, seed=args.feature_seed,
                             dtype=resolve_dtype(args.dtype, device))
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    fingerprint = {"name": backbone.name, "checkpoint": str(checkpoint) if checkpoint else None,
                   "size": checkpoint.stat().st_size if checkpoint else None}
    return train_set, eval_set, DiffusionFeatureExtractor(unet, features), fingerprint, device, weights


def simulate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from model.expansion import build_expander
    from model.head import TrainConfig
    from model.experiments.simulate import Simulation, SimulationConfig, parse_strategy

    for name in args.strategy:
        parse_strategy(name)
    train_set, eval_set, extractor, fingerprint, device, _ = prepare_run(args)
    expander = None if args.expand == "none" else build_expander(
        args.expand, tau=args.tau, sam_checkpoint=args.sam_checkpoint, sam_model_type=args.sam_model_type, device=device)
    config = SimulationConfig(
        strategies=args.strategy, seeds=args.seeds, rounds=args.rounds, budget_factor=args.budget_factor,
        candidates=args.candidates, local_k=args.local_k,
        local_sketch_dim=args.local_sketch_dim, keep_global=args.keep_global,
        switch_after=args.switch_after, switch_to=args.switch_to, region_cap=args.region_cap,
        train=TrainConfig(batch_size=args.train_batch_size, max_epochs=args.train_epochs),
        map_cache_gb=args.map_cache_gb)
    sim = Simulation(config, train_set, eval_set, extractor, Path(args.out), expander, fingerprint)
    sim.run()
    print((Path(args.out) / "summary.md").read_text())
    print(f"wrote {args.out}/metrics.csv, summary.md, curves.png, selections.png, predictions.png")


def probe(args: argparse.Namespace) -> None:
    from model.head import TrainConfig
    from model.experiments.probe import PROBE_FILE, ProbeConfig, run_probe

    config = ProbeConfig(images=args.images, image_seed=args.image_seed, seeds=tuple(args.seeds),
                         train=TrainConfig(batch_size=args.train_batch_size, max_epochs=args.train_epochs),
                         map_cache_gb=args.map_cache_gb)  # checked before the data and the backbone load
    train_set, eval_set, extractor, fingerprint, _, weights = prepare_run(args)
    result = run_probe(extractor, train_set, eval_set, config, args.out, fingerprint, weights.description)
    print(f"probe, {weights.description}: {len(result['images'])} images, {result['labeled_pixels']} labeled pixels, "
          f"{len(config.seeds)} heads: mIoU {result['miou_mean']:.2f} ± {result['miou_std']:.2f}, pixel accuracy "
          f"{result['pixel_accuracy_mean']:.1f}%")
    print(f"wrote {args.out}/{PROBE_FILE}")


def check_labels(dataset) -> None:
    """Every label map read once before any feature is computed: a bad file stops the run here."""
    from tqdm import tqdm

    with tqdm(total=len(dataset), desc=f"check {dataset.name} {dataset.split} labels", unit="image") as bar:
        dataset.check(lambda done, total: bar.update(done - bar.n))
    print(f"{dataset.name} {dataset.split}: {len(dataset)} images, {dataset.num_classes} classes, "
          f"preprocessing {dataset.preprocess}", file=sys.stderr)


def expansion(args: argparse.Namespace) -> None:
    from pathlib import Path

    from model.datasets import load_dataset
    from model.expansion import SuperpixelExpander, build_expander
    from model.experiments.expansion_report import markdown, run_report

    dataset = load_dataset(args.data, args.split, args.dataset, args.preprocess)
    if args.expander == "superpixel":  # every image's segmentation stays in memory for the clicks
        expanders = [SuperpixelExpander(tau=0.5 if args.tau is None else args.tau, method=m, cache_size=len(dataset))
                     for m in args.methods]
    else:
        expanders = [build_expander(args.expander, tau=args.tau, sam_checkpoint=args.sam_checkpoint,
                                    sam_model_type=args.sam_model_type)]
    reports = run_report(dataset, expanders, args.clicks, args.taus, args.resolution, Path(args.out), args.seed,
                         args.region_cap)
    print(markdown(reports))
    print(f"wrote {args.out}/expansion.md, expansion.json and expansion.png")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def segment_folder(args: argparse.Namespace) -> None:
    """Segment every image of a folder as the backend did, with a head exported from it."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from model.head_export import ExportedHead
    from model.prediction import class_colors, overlay, segment_image

    exported = ExportedHead.load(args.head)
    folder, out = Path(args.images), Path(args.out)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems = [p.stem for p in images]
    if len(set(stems)) < len(stems):
        raise ValueError(f"{folder} holds images that share a name: {sorted({s for s in stems if stems.count(s) > 1})}")
    device = resolve_device(args.device)
    extractor = exported.features.extractor(args.checkpoint, device)
    if exported.features.checkpoint_file is None:
        print(f"WARNING: {NOT_PRETRAINED_WARNING}", file=sys.stderr)
    head = exported.head()
    colors = class_colors(len(exported.classes))
    for sub in ("labels", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for path in tqdm(images, desc=f"segment with {exported.version}", unit="image"):
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        labels = segment_image(extractor, head, image).full_size()
        Image.fromarray(labels).save(out / "labels" / f"{path.stem}.png")
        Image.fromarray(overlay(image, labels, colors)).save(out / "overlays" / f"{path.stem}.png")
    (out / "classes.txt").write_text("".join(f"{i} {name} {' '.join(map(str, colors[i]))}\n"
                                             for i, name in enumerate(exported.classes)))
    print(f"wrote {len(images)} label maps to {out / 'labels'}, overlays to {out / 'overlays'}, and classes.txt "
          f"(index, name, overlay colour)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
