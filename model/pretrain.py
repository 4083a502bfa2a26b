"""Training a guided-diffusion UNet on a dataset's images (`python -m model pretrain`).

The DDPM objective as guided-diffusion trains it: x0 a random crop of an image scaled to [-1, 1],
t uniform over the 1000 steps of the linear schedule the features use (`LinearNoiseSchedule`),
x_t = q_sample(x0, t, eps), loss = MSE between eps and the UNet's epsilon channels. The backbones
learn sigma (6 output channels): guided-diffusion trains the variance half with the hybrid loss's
variational-bound term. That term is left out here: the features are decoder-block activations and
never read the output layer, so the variance half is dead weight for this project, and the bound
needs the whole posterior machinery to train it. Its channels get no gradient, so with the default
weight decay of 0 they keep their initial values (zero from scratch, the release's after `--init`),
and the file still loads as the backbone's checkpoint key for key.

From scratch the UNet is initialised as guided-diffusion does: the last convolution of every
residual block, every attention projection and the output layer start at zero, so each block starts
as the identity (the class's own initialisation, which `tiny`'s random features use, is left alone).
AdamW at a constant learning rate; an exponential moving average of the weights (`ema`, 0.9999 as
guided-diffusion) is what the final checkpoint holds.

A run resumes where it stopped: every `save_every` steps `state.pt` in the output folder (model,
EMA, optimizer, step, recent losses, the global RNG states that dropout draws from) is replaced
atomically (temp file, fsync, rename). The data order, crops, flips, timesteps and noises of step s
come from generators seeded by (seed, s), so a resumed run computes exactly what an uninterrupted
one does. At the end the EMA is written as `<backbone>-pretrained-<dataset>.pt`, a plain state dict
that `load_unet(backbone, checkpoint=...)` takes, with its training record beside it (`.json`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.backbones import get_backbone, load_unet, training_record_path
from model.noise_schedule import LinearNoiseSchedule
from model.unet import AttentionBlock, GuidedDiffusionUNet, ResBlock

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LOSS_WINDOW = 100  # steps in the running mean of the loss (the bar's, and the record's final loss)
MIN_CROP_FRACTION = 0.8  # guided-diffusion's random_crop_arr: the crop is 80-100% of the shorter side
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
_ORDER, _CROPS, _NOISE = 0, 1, 2  # independent random streams, each seeded by (seed, stream, index)


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str
    resolution: int
    steps: int
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema: float = 0.9999
    save_every: int = 1000
    seed: int = 0
    init: str | None = None  # a checkpoint of the backbone to fine-tune; None: from scratch
    dtype: str = "fp32"  # or bf16: the forward pass under bf16 autocast, weights and optimizer in float32

    def __post_init__(self):
        unet = get_backbone(self.backbone).unet
        multiple = 2 ** (len(unet.channel_mult) - 1)
        if self.resolution < multiple or self.resolution % multiple:
            raise ValueError(f"--resolution {self.resolution}: the {self.backbone} UNet halves its input "
                             f"{len(unet.channel_mult) - 1} times, so it must be a positive multiple of {multiple}")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            raise ValueError("--steps, --batch-size and --save-every must be at least 1")
        if not 0 <= self.ema < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"--ema must lie in [0, 1), --lr be positive and --weight-decay at least 0; got "
                             f"{self.ema}, {self.lr}, {self.weight_decay}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}; choose {', '.join(DTYPES)}")

    def resumable(self) -> dict:
        """What a saved state must share with this run to be continued by it (not steps or save_every)."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "save_every")}


def _generator(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def random_crop(image: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """guided-diffusion's random crop: the shorter side scaled to a random length in [size, size / 0.8]
    (halved with a box filter while it is at least twice that, then bicubic), a random size x size window,
    and a horizontal flip half the time. HxWx3 uint8."""
    image = image.convert("RGB")
    shorter = int(rng.integers(size, math.ceil(size / MIN_CROP_FRACTION) + 1))
    while min(image.size) >= 2 * shorter:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = shorter / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = int(rng.integers(arr.shape[0] - size + 1))
    left = int(rng.integers(arr.shape[1] - size + 1))
    arr = arr[top:top + size, left:left + size]
    return np.ascontiguousarray(arr[:, ::-1] if rng.random() < 0.5 else arr)


class TrainingBatches:
    """The batch of every step: shuffled epochs over the images (as guided-diffusion's loader), random
    crops and flips, timesteps and noises, each a pure function of (seed, step)."""

    def __init__(self, images: Sequence[Path], resolution: int, batch_size: int, seed: int, num_timesteps: int):
        if not images:
            raise ValueError("no images to train on")
        self.images, self.resolution, self.batch_size = list(images), resolution, batch_size
        self.seed, self.num_timesteps = seed, num_timesteps
        self._orders: dict[int, np.ndarray] = {}

    def _image_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.images))
        if epoch not in self._orders:
            self._orders = {epoch: _generator(self.seed, _ORDER, epoch).permutation(len(self.images))}
        return int(self._orders[epoch][offset])

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x0 [B, 3, R, R] in [-1, 1], timesteps [B], noise [B, 3, R, R]."""
        rng = _generator(self.seed, _CROPS, step)
        crops = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            with Image.open(self.images[self._image_index(position)]) as im:
                crops.append(random_crop(im, self.resolution, rng))
        x0 = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        state = int(np.random.SeedSequence([self.seed, _NOISE, step]).generate_state(1, dtype=np.uint64)[0] >> 1)
        gen = torch.Generator().manual_seed(state)
        t = torch.randint(0, self.num_timesteps, (self.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        return x0, t, noise


def ddpm_loss(unet: GuidedDiffusionUNet, schedule: LinearNoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the noise and the UNet's epsilon channels (the first three)."""
    eps = unet(schedule.q_sample(x0, t, noise), t)[:, : x0.shape[1]]
    return F.mse_loss(eps.float(), noise)


def zero_init(unet: GuidedDiffusionUNet) -> GuidedDiffusionUNet:
    """guided-diffusion's zero_module: residual branches, attention projections and the output layer at zero."""
    for module in unet.modules():
        if isinstance(module, ResBlock):
            layers = [module.out_layers[-1]]
        elif isinstance(module, AttentionBlock):
            layers = [module.proj_out]
        else:
            continue
        for layer in layers:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    torch.nn.init.zeros_(unet.out[-1].weight)
    torch.nn.init.zeros_(unet.out[-1].bias)
    return unet


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * model, parameter by parameter (guided-diffusion's update_ema)."""
    for target, source in zip(ema.parameters(), model.parameters()):
        target.mul_(rate).add_(source, alpha=1 - rate)


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file beside `path`, flushed to disk, then renamed over it: a reader (or a
    resumed run) finds the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, bytes):
                f.write(obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def checkpoint_name(backbone: str, dataset: str) -> str:
    """`<backbone>-pretrained-<dataset>.pt`, the dataset's name reduced to letters, digits, '.', '_' and '-'."""
    return f"{backbone}-pretrained-{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset).strip('._') or 'images'}.pt"


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


class Pretraining:
    """One training run in `out_dir`: built from scratch or `config.init`, or resumed from the state there."""

    def __init__(self, config: PretrainConfig, images: Sequence[Path], dataset: str, out_dir: str | Path,
                 device: str | torch.device = "cpu", data: dict | None = None):
        self.config, self.dataset = config, dataset
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.backbone = get_backbone(config.backbone)
        self.schedule = LinearNoiseSchedule()
        self.batches = TrainingBatches(images, config.resolution, config.batch_size, config.seed,
                                       self.schedule.num_steps)
        names = hashlib.sha256("\n".join(Path(p).name for p in images).encode()).hexdigest()[:16]
        self.data = {"dataset": dataset, "images": len(images), "image_names_sha256": names, **(data or {})}
        self.state_path = self.out_dir / STATE_FILE
        self.step_seconds: list[float] = []
        if self.state_path.is_file():
            self._resume()
        else:
            self._start()

    def _build(self, state: dict[str, torch.Tensor]) -> GuidedDiffusionUNet:
        with torch.device("meta"):
            unet = GuidedDiffusionUNet(self.backbone.unet)
        unet.load_state_dict({k: v.to(self.device, torch.float32, copy=True) for k, v in state.items()},
                             assign=True)
        return unet

    def _start(self) -> None:
        if self.config.init:
            state = load_unet(self.backbone, self.config.init).state_dict()  # the layout is checked there
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                state = zero_init(GuidedDiffusionUNet(self.backbone.unet)).state_dict()
        self.model, self.ema = self._build(state), self._build(state)
        self.step, self.losses = 0, []
        self.saved_step = 0  # the step of the state on disk: a Ctrl-C can come after a step, before its save
        self.rng = self.optimizer_state = None  # the global RNG is seeded from config.seed when training starts

    def _resume(self) -> None:
        try:
            saved = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise RuntimeError(f"{self.state_path} could not be read ({type(exc).__name__}: {exc}); move it away "
                               f"to start over") from exc
        ours = {**self.config.resumable(), **self.data}
        theirs = {**saved["config"], **saved["data"]}
        differ = [f"{k}: saved {theirs.get(k)!r}, now {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]]
        if differ:
            raise ValueError(f"{self.state_path} is a run with other settings ({'; '.join(differ)}): use another "
                             f"--out, or the same settings to resume it")
        self.model, self.ema = self._build(saved["model"]), self._build(saved["ema"])
        self.step, self.losses, self.rng = int(saved["step"]), list(saved["losses"]), saved["rng"]
        self.saved_step = self.step
        if self.step > self.config.steps:
            raise ValueError(f"{self.state_path} is already at step {self.step}, past --steps {self.config.steps}: "
                             f"--steps {self.step} writes its checkpoint, a larger --steps trains on")
        self.step_seconds = list(saved.get("step_seconds", []))  # a run that only writes its checkpoint keeps them
        self.optimizer_state = saved["optimizer"]
        log.info("resuming %s at step %d of %d", self.out_dir, self.step, self.config.steps)

    def _optimizer(self) -> torch.optim.AdamW:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        return optimizer

    def _save_state(self, optimizer: torch.optim.Optimizer) -> None:
        _atomic_save({"config": self.config.resumable(), "data": self.data, "step": self.step,
                      "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                      "optimizer": optimizer.state_dict(), "losses": self.losses, "rng": _rng_states(),
                      "step_seconds": self.step_seconds[-LOSS_WINDOW:]},
                     self.state_path)
        self.saved_step = self.step

    @property
    def loss(self) -> float | None:
        """Mean DDPM loss over the last LOSS_WINDOW steps."""
        return statistics.fmean(self.losses) if self.losses else None

    def run(self, on_step: Callable[[int, float], None] | None = None) -> Path:
        """Train up to `config.steps` (saving the state every `save_every`) and write the final checkpoint."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        c = self.config
        if c.ema ** c.steps > 0.05:
            log.warning("after %d steps an EMA of %g still holds %.0f%% of the initial weights: train longer or "
                        "lower --ema", c.steps, c.ema, 100 * c.ema ** c.steps)
        self.model.train().requires_grad_(True)
        self.ema.eval().requires_grad_(False)
        optimizer = self._optimizer()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout's draws, restored on resume; the caller's kept
            if self.rng is None:
                torch.manual_seed(c.seed)
            else:
                torch.set_rng_state(self.rng["torch"])
                if "cuda" in self.rng and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(self.rng["cuda"])
            while self.step < c.steps:
                started = time.perf_counter()
                x0, t, noise = (v.to(self.device) for v in self.batches(self.step))
                with torch.autocast(self.device.type, dtype=DTYPES[c.dtype] or torch.float32,
                                    enabled=DTYPES[c.dtype] is not None):
                    loss = ddpm_loss(self.model, self.schedule, x0, t, noise)
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"the loss is {loss.item()} at step {self.step + 1}: lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                update_ema(self.ema, self.model, c.ema)
                self.losses = (self.losses + [loss.item()])[-LOSS_WINDOW:]
                self.step += 1
                self.step_seconds.append(time.perf_counter() - started)  # the step's work, not the state's save
                if self.step % c.save_every == 0 or self.step == c.steps:
                    self._save_state(optimizer)
                if on_step:
                    on_step(self.step, self.loss)
        return self._write_checkpoint()

    def _write_checkpoint(self) -> Path:
        path = self.out_dir / checkpoint_name(self.backbone.name, self.dataset)
        _atomic_save({k: v.detach().float().cpu().contiguous() for k, v in self.ema.state_dict().items()}, path)
        c = self.config
        record = {
            "backbone": c.backbone, **self.data, "resolution": c.resolution, "steps": self.step,
            "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay, "ema": c.ema, "seed": c.seed,
            "dtype": c.dtype, "init": Path(c.init).name if c.init else None,
            "final_loss": self.loss, "loss_window": min(LOSS_WINDOW, self.step),
            "objective": "DDPM epsilon MSE, t uniform over 1000 linear-schedule steps; variance channels untrained",
            "device": str(self.device),
            "median_step_seconds": statistics.median(self.step_seconds) if self.step_seconds else None,
        }
        _atomic_save(json.dumps(record, indent=2).encode() + b"\n", training_record_path(path))
        return path
