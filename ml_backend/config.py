"""Backend settings: environment variables (documented in docs/configuration.md with their defaults), and per
project the overrides Label Studio sends as the model's "Extra params".

Each setting is declared once, as a field; pydantic-settings reads it from the environment (empty means
unset) and converts it. A project may set only what leaves the shared backbone, its features and the
deployment alone (`PROJECT_SETTINGS`); both sources go through the same conversion and the same checks
(`_check`), so a value the environment would refuse is refused from a project too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

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
# Upper bounds, past which a setting would stop every round rather than shape it: numpy takes seeds
# of 32 bits, a budget factor is clicks per image (the paper's is 0.1), every other count fits 31 bits.
MAX_SEED = 2 ** 32 - 1
MAX_BUDGET_FACTOR = 100.0
MAX_COUNT = 2 ** 31 - 1
MAX_DOWNLOAD_TIMEOUT = 3600.0
# How pydantic's error types read in a message that names the setting and its value.
ERROR_KINDS = {"int": "is not a valid int", "float": "is not a valid float", "bool": "is not a boolean (true/false)",
               "string": "is not a string", "finite": "is not a finite number", "path": "is not a path"}


def _no_boolean(value):
    """pydantic takes true as 1; a count given as a boolean is a mistake."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "a boolean is not a count")
    return value


Count = Annotated[int, BeforeValidator(_no_boolean)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, populate_by_name=True, allow_inf_nan=False,
                                      extra="forbid")

    label_studio_url: str = Field("http://localhost:8080",
                                  validation_alias=AliasChoices("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"))
    label_studio_api_key: str = Field("", repr=False,
                                      validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"))
    model_dir: Path = Path("model_dir")
    backbone: str = "imagenet256"
    diffusion_checkpoint: Path | None = None  # unset: MODEL_DIR/checkpoints/<the backbone's file>
    device: str = "auto"
    feature_dtype: str = "auto"  # UNet precision: auto (fp16 on CUDA, bf16 on CPUs with native bf16), fp32, bf16, fp16
    resolution: Count = 256
    budget_factor: float = 0.1
    budget: Count = 0  # clicks per round; 0: budget_factor x images
    local_k: Count = 50
    local_sketch_dim: Count = 0  # 0: exact local herding
    keep_global: float = 0.5
    global_exact_max: Count = GLOBAL_EXACT_MAX  # pool points up to which global herding is exact; shards past it
    candidates: Count = 10_000
    coverage: str = "herding"
    acquisition: str = "edald"
    draws: Count = 5
    seed: Count = 0
    train_batch_size: Count = 8
    train_max_epochs: Count = 50
    auto_advance: bool = True
    suggest_classes: bool = False  # show the head's class beside each query point (region text, never its label)
    records_batch: Count = 8
    expander: str = "superpixel"
    sam_checkpoint: Path | None = None
    sam_model_type: str = "vit_b"
    sam_tau: float = 0.85
    superpixel_tau: float = 0.5
    region_pixel_cap: Count = 256
    stop_agreement: float = 0.9  # the stopping hint: point agreement at least this high ...
    stop_rounds: Count = 3  # ... for this many rounds in a row
    basic_auth_user: str = ""
    basic_auth_pass: str = Field("", repr=False)
    redis_url: str = Field("", repr=False)
    database_url: str = Field("", repr=False)  # PostgreSQL for the store; "": the SQLite file in model_dir
    download_timeout: float = 60.0  # seconds for a whole task file: connect, redirects, body
    max_downloads: Count = 4  # task files fetched at once, over all threads
    max_request_mb: Count = 16  # largest request body (413 above it)
    reconcile_seconds: float = 120.0  # how often an open round is read back from Label Studio; 0: never
    host: str = "127.0.0.1"  # the Docker image sets HOST=0.0.0.0
    port: Count = 9090
    workers: Count = 1  # gunicorn worker processes (the Docker image); more than 1 needs REDIS_URL
    threads: Count = 8  # gunicorn threads per worker
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> Settings:
        """The environment's settings; a bad value, or an alias set beside its name to something else,
        is a SettingsError that names them."""
        for alias, name in ALIASES.items():
            given = {n: os.environ[n] for n in (name, alias) if os.environ.get(n)}
            if len(set(given.values())) > 1:
                raise SettingsError(f"{' and '.join(given)} are both set, to different values; set one of them")
        return _checked(cls)

    @field_validator("label_studio_url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("feature_dtype")
    @classmethod
    def _lower(cls, text: str) -> str:
        return text.lower()

    @field_validator("log_level")
    @classmethod
    def _upper(cls, text: str) -> str:
        return text.upper()

    @field_validator("model_dir", "diffusion_checkpoint", "sam_checkpoint")
    @classmethod
    def _home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @model_validator(mode="before")
    @classmethod
    def _default_checkpoint(cls, data):
        """The backbone's checkpoint under MODEL_DIR unless one is given (the tiny backbone has none)."""
        if isinstance(data, dict) and not data.get("diffusion_checkpoint"):
            defaults = cls.model_fields
            backbone = BACKBONES.get(data.get("backbone", defaults["backbone"].default))
            if backbone is not None and backbone.checkpoint_file:
                model_dir = Path(data.get("model_dir", defaults["model_dir"].default)).expanduser()
                data = {**data, "diffusion_checkpoint": model_dir / "checkpoints" / backbone.checkpoint_file}
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"BACKBONE={quote(self.backbone)}; choose one of {', '.join(BACKBONES)}")
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
        too_large = [f"{name.upper()}={quote(value)}" for name, value in self
                     if type(value) is int and name != "seed" and value > MAX_COUNT]
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
            raise ValueError("; ".join(problems))
        return self

    def for_project(self, overrides: Mapping[str, object]) -> Settings:
        """These settings with a project's overrides (Label Studio's "Extra params": names as in the
        environment, any case; values as JSON numbers, booleans or strings). An unknown name, a
        per-backend one or a bad value is a SettingsError that says which and why."""
        if not isinstance(overrides, Mapping):
            raise SettingsError(f"extra params must be a JSON object of settings, not {type(overrides).__name__}")
        changes = {}
        for key, value in overrides.items():
            name = str(key).upper()
            if name in PROJECT_SETTINGS:
                changes[name.lower()] = value
            elif name.lower() in type(self).model_fields or name in ALIASES:
                raise SettingsError(f"{key} is a per-backend setting (shared by every project: backbone and features, "
                                    f"device, paths, credentials, the job queue, the database); set it in the backend's "
                                    f"environment. A project may set {', '.join(PROJECT_SETTINGS)}")
            else:
                raise SettingsError(f"unknown setting {quote(key)}; a project may set {', '.join(PROJECT_SETTINGS)}")
        settings = _checked(type(self).model_validate, {**dict(self), **changes})
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
        out = {name: value for name, value in self if name not in hidden}
        out["label_studio_api_key_set"] = bool(self.label_studio_api_key)
        out["queue"] = "redis" if self.redis_url else "in-process"
        out["database"] = "postgresql" if self.database_url else "sqlite"
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def _checked(make, *args) -> Settings:
    """make(*args), with pydantic's errors as one SettingsError whose parts name each setting and value."""
    try:
        return make(*args)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            if e["type"] == "value_error":  # _check's own message names its settings
                problems.append(str(e["ctx"]["error"]))
                continue
            name = str(e["loc"][0]).upper() if e["loc"] else "SETTINGS"
            kind = ERROR_KINDS.get(e["type"].split("_")[0], f"is refused: {e['msg']}")
            problems.append(f"{name}={quote(e['input'])} {kind}")
        raise SettingsError("; ".join(problems)) from None
