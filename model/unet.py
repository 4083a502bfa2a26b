"""The guided-diffusion UNet (Dhariwal & Nichol, 2021), rebuilt in the project.

Its module tree mirrors openai/guided-diffusion so that `load_state_dict` takes the released
checkpoints (`256x256_diffusion_uncond.pt`, `lsun_bedroom.pt`) key for key. Only the variant those
checkpoints use is built: residual blocks that up/down-sample, scale-shift (FiLM) timestep
conditioning, fixed-width attention heads with the legacy q/k/v layout, no class conditioning.
We build it ourselves rather than convert to diffusers' UNet2DModel because diffusers has no
resblock up/down-sampling with this skip layout, and a converter would be a second place for the
checkpoint's layout to drift.

`decoder_features` returns the outputs of chosen decoder blocks (`output_blocks[i]`, the paper's
"block i") and stops after the last one asked for; the final `out` layer is never needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture flags, named as in guided-diffusion's `script_util`."""

    image_size: int = 256
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 6  # learn_sigma: mean and variance channels

    @property
    def attention_rates(self) -> set[int]:
        """Down-sampling rates (1, 2, 4, ...) at which attention is used."""
        return {self.image_size // r for r in self.attention_resolutions}

    @property
    def num_decoder_blocks(self) -> int:
        return len(self.channel_mult) * (self.num_res_blocks + 1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over 32 groups, computed in float32 whatever the activations' dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding: cosines then sines, as guided-diffusion orders them."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class _Resample(nn.Module):
    """Parameter-free 2x nearest up-sampling or 2x average-pool down-sampling."""

    def __init__(self, up: bool):
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """Residual block with scale-shift timestep conditioning, optionally resampling."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if self.updown:
            self.h_upd = _Resample(up)
            self.x_upd = _Resample(up)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy layout: q, k, v interleaved per head in `qkv`."""

    def __init__(self, channels: int, num_head_channels: int):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}")
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        head = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head, length).split(head, dim=1)
        # [batch*heads, tokens, head]: softmax(q k^T / sqrt(head)) v, as the einsum version computes.
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """Sequential container that hands the timestep embedding to the residual blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedDiffusionUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = config.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]
        rate = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, config.dropout)]
                ch = mult * mc
                if rate in config.attention_rates:
                    layers.append(AttentionBlock(ch, config.num_head_channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(
                    TimestepSequential(ResBlock(ch, emb_dim, ch, config.dropout, down=True))
                )
                skip_channels.append(ch)
                rate *= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_dim, ch, config.dropout),
            AttentionBlock(ch, config.num_head_channels),
            ResBlock(ch, emb_dim, ch, config.dropout),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc, config.dropout)]
                ch = mult * mc
                if rate in config.attention_rates:
                    layers.append(AttentionBlock(ch, config.num_head_channels))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, config.dropout, up=True))
                    rate //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(config.channel_mult[0] * mc, config.out_channels, 3, padding=1)
        )

    def _embed(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(timesteps, self.config.model_channels))

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), skips

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The full denoiser output (epsilon and variance channels)."""
        emb = self._embed(timesteps)
        h, skips = self._encode(x, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def decoder_features(self, x: torch.Tensor, timesteps: torch.Tensor,
                         blocks: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of `output_blocks[i]` for each i in `blocks`, in the order given."""
        n = self.config.num_decoder_blocks
        if not blocks or min(blocks) < 0 or max(blocks) >= n:
            raise ValueError(f"decoder blocks must lie in 0..{n - 1}, got {blocks}")
        emb = self._embed(timesteps)
        h, skips = self._encode(x, emb)
        found: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.output_blocks[: max(blocks) + 1]):
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
            if i in blocks:
                found[i] = h
        return [found[i] for i in blocks]


def decoder_block_shapes(config: UNetConfig, resolution: int | None = None) -> list[list[int]]:
    """[channels, height, width] of every decoder block, computed on the meta device (no weights)."""
    size = resolution or config.image_size
    with torch.device("meta"):
        unet = GuidedDiffusionUNet(config)
        x = torch.empty(1, config.in_channels, size, size)
        outs = unet.decoder_features(x, torch.zeros(1), tuple(range(config.num_decoder_blocks)))
    return [list(o.shape[1:]) for o in outs]


def decoder_block_channels(config: UNetConfig) -> list[int]:
    """Output channels of every decoder block, by arithmetic (no model built)."""
    per_level = config.num_res_blocks + 1
    return [config.model_channels * config.channel_mult[len(config.channel_mult) - 1 - i // per_level]
            for i in range(config.num_decoder_blocks)]
