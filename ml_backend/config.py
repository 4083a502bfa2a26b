"""Backend settings: environment variables (documented in docs/configuration.md with their defaults), and per
project the overrides Label Studio sends as the model's "Extra params".

A project may set only what leaves the shared backbone, its features and the deployment alone
(`PROJECT_SETTINGS`); both sources go through the same conversion (`_convert`) and the same checks
(`Settings.validate`), so a value the environment would refuse is refused from a project too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ml_backend.web.echo import quote
from model.acquisition import METHODS
from model.backbones import BACKBONES
from model.features import DTYPES
from model.global_herding import GLOBAL_EXACT_MAX
from model.selection import COVERAGE_METHODS


class SettingsError(ValueError):
    pass


# What a project may set in Label Studio's "Extra params" (JSON, e.g. {"BUDGET": 20, "ACQUISITION": "margin"}).
# Everything else changes what all projects share (backbone, resolution, noise draws, device, paths,
# credentials, the job queue, the database) and stays per backend.
PROJECT_SETTINGS = ("BUDGET", "BUDGET_FACTOR", "ACQUISITION", "COVERAGE", "CANDIDATES", "LOCAL_K", "LOCAL_SKETCH_DIM",
                    "KEEP_GLOBAL", "SEED", "TRAIN_BATCH_SIZE", "TRAIN_MAX_EPOCHS", "AUTO_ADVANCE", "SUGGEST_CLASSES",
                    "EXPANDER", "SAM_TAU", "SUPERPIXEL_TAU", "REGION_PIXEL_CAP", "STOP_AGREEMENT", "STOP_ROUNDS")
# Names Label Studio's generated backends use for the same two settings.
ALIASES = {"LABEL_STUDIO_HOST": "LABEL_STUDIO_URL", "LABEL_STUDIO_ACCESS_TOKEN": "LABEL_STUDIO_API_KEY"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Upper bounds, past which a setting would stop every round rather than shape it: numpy takes seeds
# of 32 bits, a budget factor is clicks per image (the paper's is 0.1), every other count fits 31 bits.
MAX_SEED = 2 ** 32 - 1
MAX_BUDGET_FACTOR = 100.0
MAX_COUNT = 2 ** 31 - 1
MAX_DOWNLOAD_TIMEOUT = 3600.0


def _env(name: str, default: str) -> str:
    """The variable's value, or its alias's (LABEL_STUDIO_HOST for LABEL_STUDIO_URL, ...)."""
    values = {n: os.environ.get(n) or "" for n in (name, *[a for a, target in ALIASES.items() if target == name])}
    given = {n: v for n, v in values.items() if v}
    if len(set(given.values())) > 1:
        raise SettingsError(f"{' and '.join(given)} are both set, to different values; set one of them")
    return next(iter(given.values()), default)


def _convert(name: str, raw, kind):
    """One setting's value as `kind`, from the environment's text or from JSON (a number, a boolean,
    a string); the error names the setting and the value. Text numbers take ASCII digits only (int()
    and float() also read other scripts' digits, "١٢" as 12), and a float must be finite (JSON's
    1e999 arrives as inf)."""
    if kind is bool:
        text = str(raw).lower() if not isinstance(raw, bool) else ("true" if raw else "false")
        if text not in TRUE + FALSE:
            raise SettingsError(f"{name}={quote(raw)} is not a boolean (true/false)")
        return text in TRUE
    if kind in (int, float):
        invalid = SettingsError(f"{name}={quote(raw)} is not a valid {kind.__name__}")
        if isinstance(raw, bool) or (isinstance(raw, str) and not raw.isascii()):
            raise invalid
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise invalid
        try:
            value = kind(raw)
        except (TypeError, ValueError, OverflowError):
            raise invalid from None
        if kind is float and not math.isfinite(value):
            raise SettingsError(f"{name}={quote(raw)} is not a finite number")
        return value
    if not isinstance(raw, str):
        raise SettingsError(f"{name}={quote(raw)} is not a string")
    return raw


def _number(name: str, default, kind):
    return _convert(name, _env(name, str(default)), kind)


def _flag(name: str, default: bool) -> bool:
    return _convert(name, _env(name, "true" if default else "false"), bool)


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
    global_exact_max: int = GLOBAL_EXACT_MAX  # pool points up to which global herding is exact; shards past it
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
    stop_agreement: float = 0.9  # the stopping hint: point agreement at least this high ...
    stop_rounds: int = 3  # ... for this many rounds in a row
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    database_url: str = field(default="", repr=False)  # PostgreSQL for the store; "": the SQLite file in model_dir
    download_timeout: float = 60.0  # seconds for a whole task file: connect, redirects, body
    max_downloads: int = 4  # task files fetched at once, over all threads
    max_request_mb: int = 16  # largest request body (413 above it)
    reconcile_seconds: float = 120.0  # how often an open round is read back from Label Studio; 0: never
    host: str = "127.0.0.1"  # the Docker image sets HOST=0.0.0.0
    port: int = 9090
    workers: int = 1  # gunicorn worker processes (the Docker image); more than 1 needs REDIS_URL
    threads: int = 8  # gunicorn threads per worker
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> Settings:
        model_dir = Path(_env("MODEL_DIR", "model_dir")).expanduser()
        backbone = _env("BACKBONE", "imagenet256")
        if backbone not in BACKBONES:
            raise SettingsError(f"BACKBONE={quote(backbone)}; choose one of {', '.join(BACKBONES)}")
        default_ckpt = BACKBONES[backbone].checkpoint_file
        ckpt = _env("DIFFUSION_CHECKPOINT", str(model_dir / "checkpoints" / default_ckpt) if default_ckpt else "")
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
            global_exact_max=_number("GLOBAL_EXACT_MAX", GLOBAL_EXACT_MAX, int),
            candidates=_number("CANDIDATES", 10_000, int),
            coverage=_env("COVERAGE", "herding"),
            acquisition=_env("ACQUISITION", "edald"),
            draws=_number("DRAWS", 5, int),
            seed=_number("SEED", 0, int),
            train_batch_size=_number("TRAIN_BATCH_SIZE", 8, int),
            train_max_epochs=_number("TRAIN_MAX_EPOCHS", 50, int),
            auto_advance=_flag("AUTO_ADVANCE", True),
            suggest_classes=_flag("SUGGEST_CLASSES", False),
            records_batch=_number("RECORDS_BATCH", 8, int),
            expander=_env("EXPANDER", "superpixel"),
            sam_checkpoint=Path(sam_ckpt).expanduser() if sam_ckpt else None,
            sam_model_type=_env("SAM_MODEL_TYPE", "vit_b"),
            sam_tau=_number("SAM_TAU", 0.85, float),
            superpixel_tau=_number("SUPERPIXEL_TAU", 0.5, float),
            region_pixel_cap=_number("REGION_PIXEL_CAP", 256, int),
            stop_agreement=_number("STOP_AGREEMENT", 0.9, float),
            stop_rounds=_number("STOP_ROUNDS", 3, int),
            basic_auth_user=_env("BASIC_AUTH_USER", ""),
            basic_auth_pass=_env("BASIC_AUTH_PASS", ""),
            redis_url=_env("REDIS_URL", ""),
            database_url=_env("DATABASE_URL", ""),
            download_timeout=_number("DOWNLOAD_TIMEOUT", 60.0, float),
            max_downloads=_number("MAX_DOWNLOADS", 4, int),
            max_request_mb=_number("MAX_REQUEST_MB", 16, int),
            reconcile_seconds=_number("RECONCILE_SECONDS", 120.0, float),
            host=_env("HOST", "127.0.0.1"),
            port=_number("PORT", 9090, int),
            workers=_number("WORKERS", 1, int),
            threads=_number("THREADS", 8, int),
            log_level=_env("LOG_LEVEL", "INFO").upper(),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if self.feature_dtype not in ("auto", *DTYPES):
            problems.append(f"FEATURE_DTYPE={quote(self.feature_dtype)}; choose auto, {', '.join(DTYPES)}")
        if self.acquisition not in METHODS:
            problems.append(f"ACQUISITION={quote(self.acquisition)}; choose one of {', '.join(METHODS)}")
        if self.coverage not in COVERAGE_METHODS:
            problems.append(f"COVERAGE={quote(self.coverage)}; choose one of {', '.join(COVERAGE_METHODS)}")
        if self.expander not in ("superpixel", "sam", "none"):
            problems.append(f"EXPANDER={quote(self.expander)}; choose superpixel, sam or none")
        if self.resolution < 32 or self.resolution % 32:
            problems.append(f"RESOLUTION={quote(self.resolution)} must be a positive multiple of 32")
        if not 0 < self.budget_factor <= MAX_BUDGET_FACTOR:
            problems.append(f"BUDGET_FACTOR={quote(self.budget_factor)} must lie in (0, {MAX_BUDGET_FACTOR:g}] "
                            "(clicks per image)")
        if self.budget < 0:
            problems.append(f"BUDGET={quote(self.budget)} must be 0 (use BUDGET_FACTOR) or a number of clicks "
                            "per round")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"SEED={quote(self.seed)} must lie in 0..{MAX_SEED} (numpy takes 32-bit seeds)")
        too_large = [f"{f.name.upper()}={quote(getattr(self, f.name))}" for f in fields(self)
                     if type(getattr(self, f.name)) is int and f.name != "seed" and getattr(self, f.name) > MAX_COUNT]
        if too_large:
            problems.append(f"{', '.join(too_large)}: at most {MAX_COUNT}")
        if not 0 < self.keep_global <= 1:
            problems.append(f"KEEP_GLOBAL={quote(self.keep_global)} must lie in (0, 1]")
        if self.local_k < 1 or self.candidates < 1 or self.draws < 1 or self.records_batch < 1:
            problems.append("LOCAL_K, CANDIDATES, DRAWS and RECORDS_BATCH must be at least 1")
        if self.global_exact_max < 1:
            problems.append(f"GLOBAL_EXACT_MAX={quote(self.global_exact_max)} must be at least 1 (pool points)")
        if self.train_batch_size < 1 or self.train_max_epochs < 1 or self.region_pixel_cap < 0:
            problems.append("TRAIN_BATCH_SIZE and TRAIN_MAX_EPOCHS must be at least 1, REGION_PIXEL_CAP at least 0")
        if not (0 <= self.sam_tau <= 1 and 0 <= self.superpixel_tau <= 1):
            problems.append(f"SAM_TAU={quote(self.sam_tau)} and SUPERPIXEL_TAU={quote(self.superpixel_tau)} "
                            "must lie in [0, 1]")
        if not 0 <= self.stop_agreement <= 1 or self.stop_rounds < 1:
            problems.append(f"STOP_AGREEMENT={quote(self.stop_agreement)} must lie in [0, 1] and STOP_ROUNDS="
                            f"{quote(self.stop_rounds)} be at least 1")
        if self.local_sketch_dim < 0:
            problems.append(f"LOCAL_SKETCH_DIM={quote(self.local_sketch_dim)} must be 0 (exact) or a dimension")
        if self.sam_model_type not in ("vit_b", "vit_l", "vit_h"):
            problems.append(f"SAM_MODEL_TYPE={quote(self.sam_model_type)}; choose vit_b, vit_l or vit_h")
        if not (0 < self.download_timeout <= MAX_DOWNLOAD_TIMEOUT and self.max_downloads >= 1
                and self.max_request_mb >= 1):
            problems.append(f"DOWNLOAD_TIMEOUT={quote(self.download_timeout)} must lie in "
                            f"(0, {MAX_DOWNLOAD_TIMEOUT:g}] seconds, MAX_DOWNLOADS and MAX_REQUEST_MB be at least 1")
        if not 0 <= self.reconcile_seconds <= 86400:
            problems.append(f"RECONCILE_SECONDS={quote(self.reconcile_seconds)} must lie in [0, 86400] (0: only at "
                            "start, on /setup and before a round)")
        if not 0 < self.port < 65536:
            problems.append(f"PORT={quote(self.port)} must lie in 1..65535")
        if self.workers < 1 or self.threads < 1:
            problems.append(f"WORKERS={quote(self.workers)} and THREADS={quote(self.threads)} must be at least 1")
        elif self.workers > 1 and not self.redis_url:
            problems.append(f"WORKERS={quote(self.workers)} needs REDIS_URL: without it the job runner lives in "
                            "the web process, and each worker would run jobs of its own")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            # not quoted: the URL carries the database's password
            problems.append("DATABASE_URL must be a postgresql:// URL (unset: the store is MODEL_DIR/state.sqlite3)")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            problems.append("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if problems:
            raise SettingsError("; ".join(problems))

    def for_project(self, overrides: Mapping[str, object]) -> Settings:
        """These settings with a project's overrides (Label Studio's "Extra params": names as in the
        environment, any case; values as JSON numbers, booleans or strings). An unknown name, a
        per-backend one or a bad value is a SettingsError that says which and why."""
        if not isinstance(overrides, Mapping):
            raise SettingsError(f"extra params must be a JSON object of settings, not {type(overrides).__name__}")
        kinds = {f.name: type(f.default) for f in fields(self)}
        changes = {}
        for key, value in overrides.items():
            name = str(key).upper()
            if name in PROJECT_SETTINGS:
                changes[name.lower()] = _convert(name, value, kinds[name.lower()])
            elif name.lower() in kinds or name in ALIASES:
                raise SettingsError(f"{key} is a per-backend setting (shared by every project: backbone and features, "
                                    f"device, paths, credentials, the job queue, the database); set it in the backend's "
                                    f"environment. A project may set {', '.join(PROJECT_SETTINGS)}")
            else:
                raise SettingsError(f"unknown setting {quote(key)}; a project may set {', '.join(PROJECT_SETTINGS)}")
        settings = replace(self, **changes)
        settings.validate()
        if changes.get("expander") == "sam" and not (self.sam_checkpoint and self.sam_checkpoint.is_file()):
            # the environment's EXPANDER=sam reports a missing file in /metrics; a project's would break its rounds
            raise SettingsError("EXPANDER=sam needs a SAM checkpoint, which is per backend (SAM_CHECKPOINT), and this "
                                "backend has none; choose superpixel or none")
        return settings

    def project_view(self) -> dict:
        """The settings a project may override, by their environment names (for /health and /metrics)."""
        return {name: getattr(self, name.lower()) for name in PROJECT_SETTINGS}

    def public(self) -> dict:
        """Settings safe to show in /health and logs (no secrets)."""
        hidden = {"label_studio_api_key", "basic_auth_pass", "redis_url", "database_url"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        out["label_studio_api_key_set"] = bool(self.label_studio_api_key)
        out["queue"] = "redis" if self.redis_url else "in-process"
        out["database"] = "postgresql" if self.database_url else "sqlite"
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}
