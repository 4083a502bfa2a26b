"""A head exported as one file segments offline exactly as it did where it was trained."""


import numpy as np
import pytest
import torch
from PIL import Image

from model.features import DiffusionFeatureExtractor, FeatureConfig
from model.head import TrainConfig, train_head
from model.head_export import ExportedHead, FeatureSetup
from model.prediction import class_colors, segment_image
from tests.commands import model_command

CLASSES = ("Sky", "Road", "Car")


@pytest.fixture
def exported(tmp_path, tiny_unet):
    config = FeatureConfig(resolution=32)
    extractor = DiffusionFeatureExtractor(tiny_unet, config)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pixels = rng.choice(32 * 32, 60, replace=False)
    classes = torch.from_numpy(pixels % 3)  # a made-up labeling: the head need not be good, only the same
    head, report = train_head(extractor.maps(image)[0].at(pixels), classes, 3, TrainConfig(max_epochs=5))
    export = ExportedHead("p7-head-2", CLASSES, head.checkpoint(), FeatureSetup("tiny", 0, None, config),
                          report.as_dict(), {"project": 7, "round": 2})
    return export.save(tmp_path / "p7-head-2.head.pt"), extractor, head


def test_a_head_file_round_trips(exported):
    path, _, head = exported
    loaded = ExportedHead.load(path)
    assert loaded.version == "p7-head-2" and loaded.classes == CLASSES and loaded.details["project"] == 7
    assert loaded.features.config == FeatureConfig(resolution=32) and loaded.features.backbone == "tiny"
    assert loaded.report["labeled_pixels"] == 60
    for name, tensor in head.state_dict().items():
        assert torch.equal(loaded.head().state_dict()[name], tensor)


def test_segment_writes_label_pngs_and_overlays_that_match_the_head(exported, tmp_path, camvid_root):
    path, extractor, head = exported
    images = tmp_path / "images"
    images.mkdir()
    camvid = sorted((camvid_root / "val").glob("*.png"))[0]
    Image.open(camvid).save(images / "street.png")  # 480 x 360
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (31, 45, 3), dtype=np.uint8)).save(images / "odd.jpg")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    run = model_command("segment", "--head", path, "--images", images, "--out", out, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    colors = class_colors(3)
    for name, size in (("street", (480, 360)), ("odd", (45, 31))):
        with Image.open(next(images.glob(f"{name}.*"))) as im:
            image = np.asarray(im.convert("RGB"))
        expected = segment_image(extractor, head, image).full_size()
        labels = np.asarray(Image.open(out / "labels" / f"{name}.png"))
        assert labels.shape == (size[1], size[0]) and labels.dtype == np.uint8
        assert np.array_equal(labels, expected)
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (size[1], size[0], 3)
        blended = ((image.astype(np.float32) + colors[labels].astype(np.float32)) / 2).round().astype(np.uint8)
        assert np.array_equal(overlay, blended)
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["odd.png", "street.png"]
    assert (out / "classes.txt").read_text().splitlines()[1] == f"1 Road {' '.join(map(str, colors[1]))}"


def test_segment_names_what_is_wrong(exported, tmp_path):
    path, _, _ = exported
    (tmp_path / "empty").mkdir()
    not_a_head = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, not_a_head)
    for head, images, message in [(tmp_path / "missing.pt", tmp_path / "empty", "does not exist"),
                                  (not_a_head, tmp_path / "empty", "is not a head exported"),
                                  (path, tmp_path / "empty", "no images"),
                                  (path, tmp_path / "nowhere", "is not a folder")]:
        run = model_command("segment", "--head", head, "--images", images, "--out", tmp_path / "out")
        assert run.returncode == 2 and message in run.stderr, run.stderr
