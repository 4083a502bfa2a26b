import re

import pytest

from ml_backend.config import Settings, SettingsError


def test_defaults_and_checkpoint_location(monkeypatch, tmp_path):
    for name in ("BACKBONE", "DIFFUSION_CHECKPOINT", "LABEL_STUDIO_API_KEY", "REDIS_URL", "DATABASE_URL", "HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    s = Settings.from_env()
    assert s.backbone == "imagenet256" and s.budget_factor == 0.1 and s.local_k == 50 and s.keep_global == 0.5
    assert s.acquisition == "edald" and s.expander == "superpixel" and s.port == 9090 and s.host == "127.0.0.1"
    assert (s.download_timeout, s.max_downloads, s.max_request_mb) == (60.0, 4, 16)
    assert s.diffusion_checkpoint == tmp_path / "checkpoints" / "256x256_diffusion_uncond.pt"
    assert s.public()["queue"] == "in-process" and "label_studio_api_key" not in s.public()
    assert s.public()["database"] == "sqlite" and s.database_url == ""


def test_the_database_url_is_read_and_never_shown(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://al:pw-123@db:5432/al")
    s = Settings.from_env()
    assert s.database_url == "postgresql://al:pw-123@db:5432/al" and s.public()["database"] == "postgresql"
    assert "pw-123" not in str(s.public()) + repr(s)
    monkeypatch.setenv("DATABASE_URL", "mysql://al:pw-123@db/al")
    with pytest.raises(SettingsError, match="DATABASE_URL must be a postgresql:// URL") as refused:
        Settings.from_env()
    assert "pw-123" not in str(refused.value)


@pytest.mark.parametrize("name,value,fragment", [
    ("BACKBONE", "resnet", "BACKBONE"), ("ACQUISITION", "edal", "ACQUISITION"), ("BUDGET_FACTOR", "lots", "float"),
    ("RESOLUTION", "100", "multiple of 32"), ("KEEP_GLOBAL", "1.5", "KEEP_GLOBAL"), ("AUTO_ADVANCE", "maybe", "boolean"),
    ("EXPANDER", "magic", "EXPANDER"), ("SAM_MODEL_TYPE", "vit_x", "SAM_MODEL_TYPE"), ("COVERAGE", "kmeans", "COVERAGE"),
    ("BASIC_AUTH_USER", "only-user", "BASIC_AUTH"), ("LOCAL_SKETCH_DIM", "-1", "LOCAL_SKETCH_DIM"),
    ("BUDGET", "-2", "BUDGET"), ("BUDGET", "3.5", "int"), ("DOWNLOAD_TIMEOUT", "0", "DOWNLOAD_TIMEOUT"),
    ("MAX_DOWNLOADS", "0", "MAX_DOWNLOADS"), ("MAX_REQUEST_MB", "lots", "int"), ("FEATURE_DTYPE", "int8", "FEATURE_DTYPE"),
    ("GLOBAL_EXACT_MAX", "0", "GLOBAL_EXACT_MAX"),
])
def test_bad_values_are_named(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env()


def test_an_absolute_budget_overrides_the_factor(tmp_path):
    from ml_backend.engine import Engine

    settings = Settings(model_dir=tmp_path, backbone="tiny")
    engine = Engine(settings)
    assert engine.round_config(settings, 20).budget == 2  # 0.1 x 20
    assert engine.round_config(settings.model_copy(update=dict(budget=7)), 20).budget == 7
    assert engine.round_config(settings.model_copy(update=dict(budget=7, resolution=32)), 0).budget == 0
    assert engine.round_config(settings.model_copy(update=dict(global_exact_max=5_000)), 20).global_exact_max == 5_000


@pytest.mark.parametrize("value", ["fp32", "BF16", "fp16", "auto", ""])
def test_feature_dtype_reaches_the_extractor(monkeypatch, tmp_path, value):
    import torch

    from ml_backend.engine import Engine
    from model.features import native_bf16_cpu

    for name, setting in (("MODEL_DIR", str(tmp_path)), ("BACKBONE", "tiny"), ("DEVICE", "cpu"),
                          ("RESOLUTION", "32"), ("FEATURE_DTYPE", value)):
        monkeypatch.setenv(name, setting)
    expected = value.lower() if value not in ("auto", "") else ("bf16" if native_bf16_cpu() else "fp32")
    engine = Engine(Settings.from_env())
    extractor = engine.extractor()
    assert extractor.config.dtype == expected
    assert extractor.amp_dtype == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    # records of one precision are not reused by another
    assert engine.record_fingerprint(engine.settings)["features"]["dtype"] == expected


def test_a_project_overrides_only_its_own_settings_with_the_environments_checks():
    base = Settings(budget=0, acquisition="edald")
    project = base.for_project({"BUDGET": 12, "acquisition": "margin", "AUTO_ADVANCE": "false", "SAM_TAU": 0.7,
                                "KEEP_GLOBAL": 1, "TRAIN_MAX_EPOCHS": "20"})
    assert (project.budget, project.acquisition, project.auto_advance, project.sam_tau) == (12, "margin", False, 0.7)
    assert project.keep_global == 1.0 and project.train_max_epochs == 20
    assert (base.budget, base.acquisition, base.auto_advance) == (0, "edald", True)  # the defaults stay
    assert base.for_project({}) == base
    assert project.project_view()["BUDGET"] == 12 and "BACKBONE" not in project.project_view()


@pytest.mark.parametrize("overrides,fragment", [
    ({"BUDGETT": 3}, "unknown setting 'BUDGETT'; a project may set BUDGET, BUDGET_FACTOR"),
    ({"BACKBONE": "tiny"}, "BACKBONE is a per-backend setting"), ({"RESOLUTION": 128}, "RESOLUTION is a per-backend"),
    ({"DRAWS": 3}, "per-backend"), ({"FEATURE_DTYPE": "fp32"}, "per-backend"), ({"label_studio_api_key": "x"}, "per-backend"),
    ({"LABEL_STUDIO_ACCESS_TOKEN": "x"}, "per-backend"), ({"RECORDS_BATCH": 2}, "per-backend"),
    ({"BUDGET": -1}, "BUDGET=-1"), ({"BUDGET": 2.5}, "not a valid int"), ({"BUDGET": True}, "not a valid int"),
    ({"BUDGET_FACTOR": "lots"}, "not a valid float"), ({"ACQUISITION": "edal"}, "ACQUISITION='edal'; choose one"),
    ({"COVERAGE": "kmeans"}, "COVERAGE"), ({"EXPANDER": "magic"}, "EXPANDER"), ({"AUTO_ADVANCE": 3}, "boolean"),
    ({"KEEP_GLOBAL": 0}, "KEEP_GLOBAL"), ({"LOCAL_K": 0}, "LOCAL_K"), ({"SUPERPIXEL_TAU": 1.5}, "SUPERPIXEL_TAU"),
    ({"STOP_AGREEMENT": 2}, "STOP_AGREEMENT"), ({"STOP_ROUNDS": 0}, "STOP_ROUNDS"), ({"TRAIN_BATCH_SIZE": 0}, "TRAIN"),
    ({"ACQUISITION": ["margin"]}, "not a string"),
])
def test_a_bad_project_setting_is_named(overrides, fragment):
    with pytest.raises(SettingsError, match=re.escape(fragment)):
        Settings().for_project(overrides)


def test_label_studios_generated_backend_names_are_aliases(monkeypatch):
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://ls.example:8080/")
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "token-123")
    s = Settings.from_env()
    assert (s.label_studio_url, s.label_studio_api_key) == ("http://ls.example:8080", "token-123")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token-123")  # both names, one value: fine
    assert Settings.from_env().label_studio_api_key == "token-123"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "another")
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY and LABEL_STUDIO_ACCESS_TOKEN are both set"):
        Settings.from_env()


def test_gunicorn_workers_need_redis(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("WORKERS", "4")
    with pytest.raises(SettingsError, match="WORKERS=4 needs REDIS_URL"):
        Settings.from_env()
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    assert Settings.from_env().workers == 4
    monkeypatch.setenv("THREADS", "0")
    with pytest.raises(SettingsError, match="THREADS=0"):
        Settings.from_env()


def test_a_project_may_choose_sam_only_where_the_backend_has_its_checkpoint(tmp_path):
    with pytest.raises(SettingsError, match="EXPANDER=sam needs a SAM checkpoint, which is per backend"):
        Settings().for_project({"EXPANDER": "sam"})
    with pytest.raises(SettingsError, match="EXPANDER=sam needs"):  # a path that holds no file
        Settings(sam_checkpoint=tmp_path / "sam_vit_b.pth").for_project({"EXPANDER": "sam"})
    (tmp_path / "sam_vit_b.pth").write_bytes(b"weights")
    assert Settings(sam_checkpoint=tmp_path / "sam_vit_b.pth").for_project({"EXPANDER": "sam"}).expander == "sam"
    sam = Settings(expander="sam")  # the environment's own choice is reported in /metrics, not refused here
    assert sam.for_project({}) == sam and sam.for_project({"EXPANDER": "none"}).expander == "none"


def test_the_configuration_page_lists_the_keys_a_project_may_set():
    from ml_backend.config import PROJECT_SETTINGS
    from tests.conftest import REPO

    page = (REPO / "docs" / "configuration.md").read_text()
    paragraph = page[page.index("The accepted keys"):].split("\n\n")[0]
    listed = set(re.findall(r"`([A-Z_]+)`", paragraph)) - {"SAM_CHECKPOINT"}
    assert listed == set(PROJECT_SETTINGS)


@pytest.mark.parametrize("name,value,fragment", [
    ("BUDGET_FACTOR", "inf", "BUDGET_FACTOR='inf' is not a finite number"), ("SAM_TAU", "nan", "not a finite number"),
    ("BUDGET_FACTOR", "1e308", "must lie in (0, 100]"), ("SEED", "-1", "SEED=-1 must lie in 0..4294967295"),
    ("SEED", "4294967296", "0..4294967295"), ("BUDGET", "\u0661\u0662", "not a valid int"),
    ("DOWNLOAD_TIMEOUT", "1e300", "must lie in (0, 3600] seconds"), ("PORT", "70000", "PORT=70000 must lie in 1..65535"),
    ("LOCAL_K", "9" * 5000, "LOCAL_K='99999999"),  # past int()'s 4,300 digits, and quoted short
])
def test_the_environment_gets_the_same_ranges(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert fragment in str(refused.value) and len(str(refused.value)) < 300


def test_the_largest_seed_numpy_takes_is_accepted():
    assert Settings().for_project({"SEED": 2 ** 32 - 1}).seed == 2 ** 32 - 1
