"""Backend settings, all from environment variables (documented in the README with their defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from model.acquisition import METHODS
from model.backbones import BACKBONES
from model.features import DTYPES
from model.selection import COVERAGE_METHODS


class SettingsError(ValueError):
    pass


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _number(name: str, default, kind):
    raw = _env(name, str(default))
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def _flag(name: str, default: bool) -> bool:
    raw = _env(name, "true" if default else "false").lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")
    return raw in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = "http://localhost:8080"
    label_studio_api_key: str = field(default="", repr=False)
    model_dir: Path = Path("model_dir")
    backbone: str = "imagenet256"
    diffusion_checkpoint: Path | None = None
    device: str = "auto"
    feature_dtype: str = "auto"  # UNet precision: auto (fp16 on CUDA, bf16 on CPUs with native bf16), fp32, bf16, fp16
    resolution: int = 256
    budget_factor: float = 0.1
    budget: int = 0  # clicks per round; 0: budget_factor x images
    local_k: int = 50
    local_sketch_dim: int = 0  # 0: exact local herding
    keep_global: float = 0.5
    candidates: int = 10_000
    coverage: str = "herding"
    acquisition: str = "edald"
    draws: int = 5
    seed: int = 0
    train_batch_size: int = 8
    train_max_epochs: int = 50
    auto_advance: bool = True
    suggest_classes: bool = False  # show the head's class beside each query point (region text, never its label)
    records_batch: int = 8
    expander: str = "superpixel"
    sam_checkpoint: Path | None = None
    sam_model_type: str = "vit_b"
    sam_tau: float = 0.85
    superpixel_tau: float = 0.5
    region_pixel_cap: int = 256
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    download_timeout: float = 60.0  # seconds for a whole task file: connect, redirects, body
    max_downloads: int = 4  # task files fetched at once, over all threads
    max_request_mb: int = 16  # largest request body (413 above it)
    host: str = "127.0.0.1"  # the Docker image sets HOST=0.0.0.0
    port: int = 9090
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> Settings:
        model_dir = Path(_env("MODEL_DIR", "model_dir")).expanduser()
        backbone = _env("BACKBONE", "imagenet256")
        if backbone not in BACKBONES:
            raise SettingsError(f"BACKBONE={backbone!r}; choose one of {', '.join(BACKBONES)}")
        default_ckpt = BACKBONES[backbone].checkpoint_file
        ckpt = _env("DIFFUSION_CHECKPOINT", str(model_dir / "checkpoints" / default_ckpt) if default_ckpt else "")
        acquisition = _env("ACQUISITION", "edald")
        if acquisition not in METHODS:
            raise SettingsError(f"ACQUISITION={acquisition!r}; choose one of {', '.join(METHODS)}")
        coverage = _env("COVERAGE", "herding")
        if coverage not in COVERAGE_METHODS:
            raise SettingsError(f"COVERAGE={coverage!r}; choose one of {', '.join(COVERAGE_METHODS)}")
        expander = _env("EXPANDER", "superpixel")
        if expander not in ("superpixel", "sam", "none"):
            raise SettingsError(f"EXPANDER={expander!r}; choose superpixel, sam or none")
        sam_ckpt = _env("SAM_CHECKPOINT", "")
        settings = cls(
            label_studio_url=_env("LABEL_STUDIO_URL", "http://localhost:8080").rstrip("/"),
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY", ""),
            model_dir=model_dir,
            backbone=backbone,
            diffusion_checkpoint=Path(ckpt).expanduser() if ckpt else None,
            device=_env("DEVICE", "auto"),
            feature_dtype=_env("FEATURE_DTYPE", "auto").lower(),
            resolution=_number("RESOLUTION", 256, int),
            budget_factor=_number("BUDGET_FACTOR", 0.1, float),
            budget=_number("BUDGET", 0, int),
            local_k=_number("LOCAL_K", 50, int),
            local_sketch_dim=_number("LOCAL_SKETCH_DIM", 0, int),
            keep_global=_number("KEEP_GLOBAL", 0.5, float),
            candidates=_number("CANDIDATES", 10_000, int),
            coverage=coverage,
            acquisition=acquisition,
            draws=_number("DRAWS", 5, int),
            seed=_number("SEED", 0, int),
            train_batch_size=_number("TRAIN_BATCH_SIZE", 8, int),
            train_max_epochs=_number("TRAIN_MAX_EPOCHS", 50, int),
            auto_advance=_flag("AUTO_ADVANCE", True),
            suggest_classes=_flag("SUGGEST_CLASSES", False),
            records_batch=_number("RECORDS_BATCH", 8, int),
            expander=expander,
            sam_checkpoint=Path(sam_ckpt).expanduser() if sam_ckpt else None,
            sam_model_type=_env("SAM_MODEL_TYPE", "vit_b"),
            sam_tau=_number("SAM_TAU", 0.85, float),
            superpixel_tau=_number("SUPERPIXEL_TAU", 0.5, float),
            region_pixel_cap=_number("REGION_PIXEL_CAP", 256, int),
            basic_auth_user=_env("BASIC_AUTH_USER", ""),
            basic_auth_pass=_env("BASIC_AUTH_PASS", ""),
            redis_url=_env("REDIS_URL", ""),
            download_timeout=_number("DOWNLOAD_TIMEOUT", 60.0, float),
            max_downloads=_number("MAX_DOWNLOADS", 4, int),
            max_request_mb=_number("MAX_REQUEST_MB", 16, int),
            host=_env("HOST", "127.0.0.1"),
            port=_number("PORT", 9090, int),
            log_level=_env("LOG_LEVEL", "INFO").upper(),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if self.feature_dtype not in ("auto", *DTYPES):
            problems.append(f"FEATURE_DTYPE={self.feature_dtype!r}; choose auto, {', '.join(DTYPES)}")
        if self.resolution < 32 or self.resolution % 32:
            problems.append(f"RESOLUTION={self.resolution} must be a positive multiple of 32")
        if not 0 < self.budget_factor:
            problems.append(f"BUDGET_FACTOR={self.budget_factor} must be positive")
        if self.budget < 0:
            problems.append(f"BUDGET={self.budget} must be 0 (use BUDGET_FACTOR) or a number of clicks per round")
        if not 0 < self.keep_global <= 1:
            problems.append(f"KEEP_GLOBAL={self.keep_global} must lie in (0, 1]")
        if self.local_k < 1 or self.candidates < 1 or self.draws < 1 or self.records_batch < 1:
            problems.append("LOCAL_K, CANDIDATES, DRAWS and RECORDS_BATCH must be at least 1")
        if self.local_sketch_dim < 0:
            problems.append(f"LOCAL_SKETCH_DIM={self.local_sketch_dim} must be 0 (exact) or a dimension")
        if self.sam_model_type not in ("vit_b", "vit_l", "vit_h"):
            problems.append(f"SAM_MODEL_TYPE={self.sam_model_type!r}; choose vit_b, vit_l or vit_h")
        if not (self.download_timeout > 0 and self.max_downloads >= 1 and self.max_request_mb >= 1):
            problems.append("DOWNLOAD_TIMEOUT must be positive, MAX_DOWNLOADS and MAX_REQUEST_MB at least 1")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            problems.append("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if problems:
            raise SettingsError("; ".join(problems))

    def public(self) -> dict:
        """Settings safe to show in /health and logs (no secrets)."""
        hidden = {"label_studio_api_key", "basic_auth_pass", "redis_url"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        out["label_studio_api_key_set"] = bool(self.label_studio_api_key)
        out["queue"] = "redis" if self.redis_url else "in-process"
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}
