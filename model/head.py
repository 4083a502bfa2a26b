"""The pixel classifier trained on labeled pixels only; the diffusion backbone stays frozen.

Architecture as in the reference (after LEDM): two hidden Linear layers, each followed by ReLU
and BatchNorm1d. Training follows the paper's appendix B.3 with the reference's intent rather
than its accidents: BatchNorm and the loss see labeled pixels only, pixels are reshuffled every
epoch, and early stopping needs both 50 non-improving iterations and a training pixel accuracy
above 95% as a fraction.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class SegmentationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, mc_dropout: float = 0.0):
        super().__init__()
        h1, h2 = (128, 32) if num_classes < 30 else (256, 128)
        self.dim, self.num_classes, self.mc_dropout = dim, num_classes, mc_dropout
        layers: list[nn.Module] = [
            nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1),
            nn.Linear(h1, h2), nn.ReLU(), nn.BatchNorm1d(h2),
        ]
        if mc_dropout > 0:
            layers.append(nn.Dropout(mc_dropout))
        layers.append(nn.Linear(h2, num_classes))
        self.layers = nn.Sequential(*layers)
        for m in self.modules():  # the reference's init: N(0, 0.02) weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def _device(self) -> torch.device:
        return self.layers[0].weight.device

    @torch.no_grad()
    def log_probs(self, features: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Deterministic log-softmax [P, C] (BatchNorm and dropout in eval mode), on the features'
        device whatever the head's (features from GPU maps, a head loaded on the CPU, or back)."""
        was_training = self.training
        self.eval()
        device = self._device()
        out = torch.cat([F.log_softmax(self(f.to(device)), dim=1).to(features.device)
                         for f in features.split(chunk)]) if len(features) else features.new_empty(0, self.num_classes)
        self.train(was_training)
        return out

    @torch.no_grad()
    def mc_dropout_log_probs(self, features: torch.Tensor, samples: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """[P, samples, C] log-softmax with dropout active and BatchNorm frozen (MC dropout)."""
        if self.mc_dropout <= 0:
            raise ValueError("this head was built without dropout; MC-dropout methods need mc_dropout > 0")
        self.eval()
        out = []
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            for m in self.modules():
                if isinstance(m, nn.Dropout):
                    m.train()
            for _ in range(samples):
                out.append(F.log_softmax(self(features.to(self._device())), dim=1).to(features.device))
        self.eval()
        return torch.stack(out, dim=1)

    def checkpoint(self) -> dict:
        return {"dim": self.dim, "num_classes": self.num_classes, "mc_dropout": self.mc_dropout,
                "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, data: dict) -> SegmentationHead:
        head = cls(data["dim"], data["num_classes"], data.get("mc_dropout", 0.0))
        head.load_state_dict(data["state_dict"])
        return head.eval()


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-5
    t_max: int = 5  # CosineAnnealingLR, stepped once per epoch
    eta_min: float = 1e-6
    batch_size: int = 8  # labeled pixels per iteration
    max_epochs: int = 50
    warmup_epochs: int = 4  # iterations of these epochs never count towards early stopping
    patience: int = 50  # non-improving iterations before the accuracy gate is checked
    target_accuracy: float = 0.95
    mc_dropout: float = 0.0
    seed: int = 0


@dataclass
class TrainReport:
    labeled_pixels: int
    epochs: int
    iterations: int
    final_loss: float
    final_accuracy: float
    early_stopped: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _batches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Consecutive slices of at least two pixels each (BatchNorm cannot normalise one): a batch size
    of 1 trains on pairs, and a lone trailing pixel joins the batch before it. Every pixel of
    `order` lands in exactly one batch; a single pixel stays a batch of one (train_head doubles it)."""
    parts = list(order.split(max(2, size)))
    if len(parts) > 1 and len(parts[-1]) == 1:
        last = parts.pop()
        parts[-1] = torch.cat([parts[-1], last])
    return parts


def train_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
               config: TrainConfig = TrainConfig(), ignore_index: int = 255) -> tuple[SegmentationHead, TrainReport]:
    """Train a fresh head on the labeled pixels; pixels whose label is `ignore_index` are dropped."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    keep = labels != ignore_index
    x, y = features[keep].float(), labels[keep]
    if len(x) == 0:
        raise ValueError("no labeled pixels to train on")
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (or be {ignore_index}), got {y.unique().tolist()}")
    if len(x) == 1:  # BatchNorm cannot normalise a single sample; two copies train the same objective
        x, y = x.repeat(2, 1), y.repeat(2)

    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = SegmentationHead(x.shape[1], num_classes, config.mc_dropout).to(x.device)
        head.train()
        optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.t_max, eta_min=config.eta_min)
        best, stale, iterations, stopped = float("inf"), 0, 0, False
        loss_value, accuracy = float("nan"), float("nan")
        epoch = 0
        for epoch in range(config.max_epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for batch in _batches(order, config.batch_size):
                logits = head(x[batch])
                loss = F.cross_entropy(logits, y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                iterations += 1
                loss_value = loss.item()
                accuracy = float((logits.argmax(1) == y[batch]).float().mean())
                if epoch < config.warmup_epochs:
                    continue
                if loss_value < best:
                    best, stale = loss_value, 0
                else:
                    stale += 1
                if stale > config.patience:
                    if accuracy > config.target_accuracy:
                        stopped = True
                        break
                    stale = 0
            scheduler.step()
            if stopped:
                break
    head.eval()
    report = TrainReport(int(keep.sum()), epoch + 1, iterations, loss_value, accuracy, stopped)
    log.debug("head trained: %s", report.as_dict())
    return head, report

