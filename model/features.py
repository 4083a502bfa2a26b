"""Per-pixel diffusion features (paper eq. 2).

An image in [-1, 1] is noised with q_sample at each timestep, one noise image shared by all
timesteps; the chosen decoder blocks' outputs are upsampled bilinearly to the input resolution
and concatenated, timestep-major: [t1: blocks..., t2: blocks..., ...].

Noises are seeded and indexed: index 0 (`REFERENCE_NOISE`) gives the deterministic features used
for herding, training and prediction, and it is also eDALD's independent pass z(0); indices
1..M are the draws z(1..M) of the mutual-information term. Each index always gives the same
noise image, so features are reproducible and cacheable across rounds and processes.

`FeatureMaps` keeps the block activations at their native resolutions and samples pixels from
them with exactly the arithmetic of `F.interpolate(mode="bilinear", align_corners=False)`, so the
6144 x 256 x 256 tensor (1.6 GB) never exists: a few thousand pixels cost a few MB.

The UNet runs in float32 or under fp16 / bf16 autocast (`FeatureConfig.dtype`); the maps keep the
autocast dtype (half the memory) and pixels are interpolated in float32 from them. `auto` picks
fp16 on CUDA, as the reference runs the UNet, and bf16 on CPUs with native bf16 instructions
(docs/performance.md: its speed and how its selections agree with float32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.noise_schedule import LinearNoiseSchedule
from model.unet import GuidedDiffusionUNet, decoder_block_channels

REFERENCE_NOISE = 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them bf16
    autocast only adds conversions."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(name: str, device: str | torch.device) -> str:
    """The UNet precision for a setting: `auto` is fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"feature dtype {name!r}; choose auto, {', '.join(DTYPES)}")
        return name
    kind = torch.device(device).type
    if kind == "cuda":
        return "fp16"
    return "bf16" if kind == "cpu" and native_bf16_cpu() else "fp32"


@dataclass(frozen=True)
class FeatureConfig:
    timesteps: tuple[int, ...] = (50, 150, 250)
    blocks: tuple[int, ...] = (5, 8, 12, 17)
    resolution: int = 256
    draws: int = 5  # M, the noise draws of the mutual-information term
    seed: int = 0
    normalize: bool = True  # L2-normalise each pixel's vector, as the reference does
    batch_size: int = 6  # UNet inputs per forward pass
    dtype: str = "fp32"  # UNet precision: fp32, or bf16 / fp16 autocast (resolve_dtype turns "auto" into one)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"FeatureConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r} "
                             f"(resolve 'auto' with model.features.resolve_dtype)")
        if self.batch_size < 1:
            raise ValueError(f"FeatureConfig.batch_size must be at least 1, got {self.batch_size}")

    @property
    def draw_indices(self) -> tuple[int, ...]:
        return tuple(range(1, self.draws + 1))


def noise_image(seed: int, index: int, resolution: int) -> torch.Tensor:
    """The `index`-th seeded standard-normal image [3, R, R], identical on every machine."""
    state = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)
    generator = torch.Generator().manual_seed(state)
    return torch.randn(3, resolution, resolution, generator=generator)


def image_to_model_input(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> [3, H, W] float in [-1, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0


class _BilinearTaps:
    """Source indices and weights of bilinear upsampling from size `src` to `dst`, per coordinate."""

    def __init__(self, coords: torch.Tensor, src: int, dst: int):
        pos = ((coords.double() + 0.5) * (src / dst) - 0.5).clamp(min=0.0)
        self.lo = pos.floor().long().clamp(max=src - 1)
        self.hi = (self.lo + 1).clamp(max=src - 1)
        self.frac = (pos - self.lo.double()).float()


class FeatureMaps:
    """Decoder activations of one image under one noise, sampled per pixel on demand."""

    def __init__(self, maps: Sequence[torch.Tensor], resolution: int, normalize: bool):
        self.maps = list(maps)  # [C, h, w] each, timestep-major
        self.resolution = resolution
        self.normalize = normalize
        self.dim = sum(m.shape[0] for m in self.maps)

    def at(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features [P, D] (float32) of flat pixel indices (y * R + x) at the output resolution."""
        p = torch.as_tensor(np.asarray(pixels), dtype=torch.long).reshape(-1)
        r = self.resolution
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= r * r):
            raise IndexError(f"pixel indices must lie in 0..{r * r - 1}")
        ys, xs = p // r, p % r
        parts = []
        for m in self.maps:
            c, h, w = m.shape
            ty, tx = _BilinearTaps(ys, h, r), _BilinearTaps(xs, w, r)
            flat = m.reshape(c, h * w)
            dev = m.device
            wy, wx = ty.frac.to(dev), tx.frac.to(dev)

            def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
                return flat[:, (yi * w + xi).to(dev)].float()

            top = tap(ty.lo, tx.lo) * (1 - wx) + tap(ty.lo, tx.hi) * wx
            bottom = tap(ty.hi, tx.lo) * (1 - wx) + tap(ty.hi, tx.hi) * wx
            parts.append(top * (1 - wy) + bottom * wy)
        feats = torch.cat(parts, dim=0).T.contiguous() if parts else torch.empty(0, 0)
        return F.normalize(feats, dim=1) if self.normalize else feats

    def dense(self, chunk: int = 8192) -> Iterator[torch.Tensor]:
        """All R*R pixels in row-major order, `chunk` pixels at a time."""
        total = self.resolution * self.resolution
        for start in range(0, total, chunk):
            yield self.at(torch.arange(start, min(start + chunk, total)))


class DiffusionFeatureExtractor:
    """Runs the frozen UNet on noised copies of an image and returns their `FeatureMaps`.

    `channels_last` (which converts the UNet's weights in place) and `compile` (torch.compile of the
    UNet pass) change speed, not features; `python -m model bench gpu` measures whether they pay."""

    def __init__(self, unet: GuidedDiffusionUNet, config: FeatureConfig = FeatureConfig(),
                 channels_last: bool = False, compile: bool = False):
        n = unet.config.num_decoder_blocks
        if not config.blocks or min(config.blocks) < 0 or max(config.blocks) >= n:
            raise ValueError(f"feature blocks must lie in 0..{n - 1}, got {config.blocks}")
        self.unet = unet.to(memory_format=torch.channels_last) if channels_last else unet
        self.config = config
        self.channels_last = channels_last
        self.schedule = LinearNoiseSchedule()
        self.device = next(unet.parameters()).device
        self.amp_dtype = None if config.dtype == "fp32" else DTYPES[config.dtype]
        self._forward = torch.compile(self.unet.decoder_features) if compile else self.unet.decoder_features
        channels = decoder_block_channels(unet.config)
        self.dim = len(config.timesteps) * sum(channels[b] for b in config.blocks)
        self._noises: dict[int, torch.Tensor] = {}

    def noise(self, index: int) -> torch.Tensor:
        if index not in self._noises:
            self._noises[index] = noise_image(self.config.seed, index, self.config.resolution).to(self.device)
        return self._noises[index]

    @torch.no_grad()
    def maps(self, image: np.ndarray, noises: Sequence[int] = (REFERENCE_NOISE,)) -> list[FeatureMaps]:
        """One `FeatureMaps` per noise index, from len(noises) x len(timesteps) batched forwards."""
        r = self.config.resolution
        if image.shape[:2] != (r, r):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, the extractor expects {r}x{r}; "
                             f"resize it first (model.preprocessing.resize_image)")
        x0 = image_to_model_input(image).to(self.device)[None]
        jobs = [(n, t) for n in noises for t in self.config.timesteps]
        outputs: dict[tuple[int, int], list[torch.Tensor]] = {}
        for start in range(0, len(jobs), self.config.batch_size):
            chunk = jobs[start:start + self.config.batch_size]
            t = torch.tensor([job[1] for job in chunk], device=self.device)
            eps = torch.stack([self.noise(job[0]) for job in chunk])
            x_t = self.schedule.q_sample(x0.expand(len(chunk), -1, -1, -1), t, eps)
            if self.channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                blocks = self._forward(x_t, t, self.config.blocks)
            for j, job in enumerate(chunk):
                outputs[job] = [b[j].contiguous() for b in blocks]  # channels_last outputs: gathered often
        return [
            FeatureMaps([m for t in self.config.timesteps for m in outputs[(n, t)]], r, self.config.normalize)
            for n in noises
        ]


class ImageFeatureSource:
    """Feature maps of a list of images, keeping the last image's maps so that the reference pass
    and the noise draws of one image are each computed once per round, and reading and writing an
    optional on-disk `FeatureMapCache`."""

    def __init__(self, extractor: DiffusionFeatureExtractor, load_image, keys: Sequence[str], map_cache=None):
        self.extractor = extractor
        self.load_image = load_image  # index -> HxWx3 uint8 at the extractor's resolution
        self._keys = list(keys)
        self.resolution = extractor.config.resolution
        self.draws = extractor.config.draws
        self.map_cache = map_cache
        self._last: tuple[int, dict[int, FeatureMaps]] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, image: int) -> str:
        return self._keys[image]

    def maps(self, image: int, noises: Sequence[int]) -> list[FeatureMaps]:
        if self._last is None or self._last[0] != image:
            self._last = (image, {})
        have = self._last[1]
        key, cfg = self._keys[image], self.extractor.config
        if self.map_cache is not None:
            for n in noises:
                if n not in have:
                    cached = self.map_cache.get(key, n, cfg.resolution, cfg.normalize)
                    if cached is not None:
                        have[n] = cached
        missing = [n for n in noises if n not in have]
        if missing:
            computed = self.extractor.maps(self.load_image(image), missing)
            have.update(zip(missing, computed))
            if self.map_cache is not None:
                for n, m in zip(missing, computed):
                    self.map_cache.put(key, n, m)
        return [have[n] for n in noises]
