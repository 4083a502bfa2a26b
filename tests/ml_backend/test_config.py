import pytest

from ml_backend.config import Settings, SettingsError


def test_defaults_and_checkpoint_location(monkeypatch, tmp_path):
    for name in ("BACKBONE", "DIFFUSION_CHECKPOINT", "LABEL_STUDIO_API_KEY", "REDIS_URL", "HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    s = Settings.from_env()
    assert s.backbone == "imagenet256" and s.budget_factor == 0.1 and s.local_k == 50 and s.keep_global == 0.5
    assert s.acquisition == "edald" and s.expander == "superpixel" and s.port == 9090 and s.host == "127.0.0.1"
    assert (s.download_timeout, s.max_downloads, s.max_request_mb) == (60.0, 4, 16)
    assert s.diffusion_checkpoint == tmp_path / "checkpoints" / "256x256_diffusion_uncond.pt"
    assert s.public()["queue"] == "in-process" and "label_studio_api_key" not in s.public()


@pytest.mark.parametrize("name,value,fragment", [
    ("BACKBONE", "resnet", "BACKBONE"), ("ACQUISITION", "edal", "ACQUISITION"), ("BUDGET_FACTOR", "lots", "float"),
    ("RESOLUTION", "100", "multiple of 32"), ("KEEP_GLOBAL", "1.5", "KEEP_GLOBAL"), ("AUTO_ADVANCE", "maybe", "boolean"),
    ("EXPANDER", "magic", "EXPANDER"), ("SAM_MODEL_TYPE", "vit_x", "SAM_MODEL_TYPE"), ("COVERAGE", "kmeans", "COVERAGE"),
    ("BASIC_AUTH_USER", "only-user", "BASIC_AUTH"), ("LOCAL_SKETCH_DIM", "-1", "LOCAL_SKETCH_DIM"),
    ("BUDGET", "-2", "BUDGET"), ("BUDGET", "3.5", "int"), ("DOWNLOAD_TIMEOUT", "0", "DOWNLOAD_TIMEOUT"),
    ("MAX_DOWNLOADS", "0", "MAX_DOWNLOADS"), ("MAX_REQUEST_MB", "lots", "int"), ("FEATURE_DTYPE", "int8", "FEATURE_DTYPE"),
])
def test_bad_values_are_named(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env()


def test_an_absolute_budget_overrides_the_factor(tmp_path):
    from ml_backend.engine import Engine

    assert Engine(Settings(model_dir=tmp_path, backbone="tiny")).round_config(20).budget == 2  # 0.1 x 20
    assert Engine(Settings(model_dir=tmp_path, backbone="tiny", budget=7)).round_config(20).budget == 7
    assert Engine(Settings(model_dir=tmp_path, backbone="tiny", budget=7, resolution=32)).round_config(0).budget == 0


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
    assert engine.record_fingerprint()["features"]["dtype"] == expected  # records of one precision not reused by another
