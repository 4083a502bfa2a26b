"""The forward (noising) process q(x_t | x_0) of the checkpoints: linear betas, 1000 steps."""

from __future__ import annotations

import numpy as np
import torch


class LinearNoiseSchedule:
    def __init__(self, num_steps: int = 1000):
        scale = 1000 / num_steps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
        self.num_steps = num_steps
        self.alphas_cumprod = np.cumprod(1.0 - betas)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, one t per batch row (coefficients in float32)."""
        if int(t.min()) < 0 or int(t.max()) >= self.num_steps:
            raise ValueError(f"timesteps must lie in 0..{self.num_steps - 1}, got {t.tolist()}")
        abar = torch.from_numpy(self.alphas_cumprod)[t.cpu()].float().to(x0.device)[:, None, None, None]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
