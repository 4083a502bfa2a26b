import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.__main__ import main
from model.experiments.probe import PROBE_FILE, ProbeConfig, probe_images

ARGS = ["--backbone", "tiny", "--resolution", "32", "--images", "3", "--seeds", "0", "1", "--train-epochs", "3",
        "--train-batch-size", "64"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_dataset(root, shuffle_labels: bool = False):
    """Two classes by colour (red left of a per-image border, blue right), a void strip on top. With
    `shuffle_labels` each training mask belongs to another image, so colour says nothing of the class."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("red\nblue\nvoid: 255\n")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        masks, borders = [], rng.integers(6, 26, count)
        for i, border in enumerate(borders):
            mask = np.where(np.arange(32)[None, :] < border, 0, 1).repeat(32, 0).astype(np.uint8)
            mask[:3] = 255
            image = np.zeros((32, 32, 3), np.uint8)
            image[mask == 0] = (220, 30, 30)
            image[mask == 1] = (30, 30, 220)
            image[:3] = 128
            Image.fromarray(image).save(root / split / "images" / f"{split}{i}.png")
            masks.append(mask)
        if shuffle_labels and split == "train":
            masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]  # the colours' sides swapped
        for i, mask in enumerate(masks):
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{i}.png")
    return root


def probe(root, out, *extra):
    assert main(["probe", "--data", str(root), *ARGS, *extra, "--out", str(out)]) == 0
    return json.loads((out / PROBE_FILE).read_text())


def test_the_head_trains_on_every_labeled_pixel_of_the_drawn_images(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    result = probe(root, tmp_path / "run")
    chosen = probe_images(6, 3, 0)
    assert result["images"] == [f"train{i}.png" for i in chosen]
    assert result["labeled_pixels"] == 3 * 29 * 32  # every pixel but the void strip
    assert [run["seed"] for run in result["runs"]] == [0, 1] and result["feature_dim"] == 768
    assert result["weights"] == "random weights, not pretrained"
    assert "mIoU" in capsys.readouterr().out
    maps = sorted((tmp_path / "run" / "cache" / "maps").rglob("*"))
    again = probe(root, tmp_path / "run")  # the maps come from the cache, the heads train the same
    assert sorted((tmp_path / "run" / "cache" / "maps").rglob("*")) == maps
    assert again["runs"] == result["runs"]


def test_features_that_carry_the_classes_score_above_labels_that_do_not(tmp_path):
    """What the probe is for: the same features, once with labels that follow them and once with
    labels that contradict them on the evaluation split."""
    colour = probe(write_dataset(tmp_path / "colour"), tmp_path / "a")
    swapped = probe(write_dataset(tmp_path / "swapped", shuffle_labels=True), tmp_path / "b")
    assert colour["miou_mean"] > 90 and swapped["miou_mean"] < 50


def test_the_drawn_images_are_fixed_by_the_seed():
    assert probe_images(367, 10, 0) == probe_images(367, 10, 0) != probe_images(367, 10, 1)
    assert len(set(probe_images(367, 10, 0))) == 10
    assert probe_images(4, 10, 0) == [0, 1, 2, 3]
    assert probe_images(1, 1, 5) == [0]
    with pytest.raises(ValueError, match="--images must be at least 1"):
        probe_images(4, 0, 0)
    with pytest.raises(ValueError, match="--seeds name at least one seed"):
        ProbeConfig(seeds=())
    # the command refuses before it reads a dataset or loads a backbone
    assert main(["probe", "--data", "/nonexistent", "--backbone", "tiny", "--images", "0", "--out", "/tmp/x"]) == 2
