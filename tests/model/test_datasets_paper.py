"""The paper's datasets, each as a tiny synthetic copy in its official layout with known labels."""

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from model.datasets import IGNORE_INDEX, detect, load_dataset
from model.datasets.ade_bed import CLASSES as ADE_CLASSES
from model.datasets.cityscapes import CLASSES as CITYSCAPES_CLASSES

V = IGNORE_INDEX


def columns_image(width: int, height: int) -> Image.Image:
    """Column x has red = 10 x: where a crop came from shows in the pixels."""
    row = np.stack([np.arange(width) * 10, np.full(width, 50), np.full(width, 90)], axis=1).astype(np.uint8)
    return Image.fromarray(np.repeat(row[None], height, axis=0))


# Cityscapes ---------------------------------------------------------------------------------------

def write_cityscapes(root, split, frames):
    for city, frame, label_ids in frames:
        stem = f"{city}_000000_{frame:06d}"
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        height, width = label_ids.shape
        columns_image(width, height).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(label_ids.astype(np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        # what the release also holds beside them must not be taken for label ids
        Image.fromarray(np.zeros_like(label_ids, dtype=np.uint8)).save(
            root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
    return root


def test_cityscapes_maps_label_ids_to_the_19_train_ids_and_center_crops(tmp_path):
    # 16x8, columns by label id: bicycle (33) | road (7) | car (26) | unlabeled (0); ids 1-6, 9, 10 and 14-16 are void
    ids = np.repeat(np.array([33] * 4 + [7] * 4 + [26] * 4 + [0] * 4)[None], 8, axis=0)
    every_id = np.arange(34).reshape(2, 17)
    root = write_cityscapes(tmp_path / "cs", "train", [("zurich", 1, ids), ("aachen", 19, ids),
                                                      ("aachen", 7, np.repeat(every_id, 4, axis=0))])
    write_cityscapes(root, "val", [("lindau", 3, ids)])
    assert detect(root) == "cityscapes"
    train = load_dataset(root, "train")
    assert (train.name, train.preprocess, train.num_classes, train.void) == ("cityscapes", "center-crop", 19, V)
    assert [p.name for p in train.image_paths] == ["aachen_000000_000007_leftImg8bit.png",
                                                  "aachen_000000_000019_leftImg8bit.png",
                                                  "zurich_000000_000001_leftImg8bit.png"]
    train.check()
    expected = np.full(34, V)
    expected[[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]] = np.arange(19)
    assert train.raw_labels(0)[::4].ravel().tolist() == expected.tolist()
    assert CITYSCAPES_CLASSES[expected[26]] == "car" and CITYSCAPES_CLASSES[expected[33]] == "bicycle"
    # center crop at 8: the shorter side is already 8, the central 8 of 16 columns stay: road | car
    assert train.labels(1, 8).tolist() == [[0] * 4 + [13] * 4] * 8
    assert train.image(1, 8)[0, :, 0].tolist() == [40, 50, 60, 70, 80, 90, 100, 110]
    # at 4 the label map is halved first (nearest), then cropped the same way
    assert train.labels(1, 4).tolist() == [[0, 0, 13, 13]] * 4
    assert len(load_dataset(root, "val")) == 1
    assert load_dataset(root, "val", preprocess="resize").labels(0, 4)[0].tolist() == [18, 0, 13, V]
    (root / "gtFine" / "train" / "zurich" / "zurich_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 label maps missing .*zurich_000000_000001_gtFine_labelIds.png"):
        load_dataset(root, "train")
    with pytest.raises(FileNotFoundError, match="splits here: train, val"):
        load_dataset(root, "test")


# Pascal-Context ------------------------------------------------------------------------------------

def write_pascal(root, splits):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "trainval").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "aeroplane_train.txt").write_text("2008_000008 -1\n")  # per-class lists: not splits
    for split, images in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name, _ in images))
        for name, label_map in images:
            columns_image(label_map.shape[1], label_map.shape[0]).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            savemat(root / "trainval" / f"{name}.mat", {"LabelMap": label_map.astype(np.uint16)})
    return root


# 459-label ids: aeroplane 2, bag 9 (in the 59, not the 33), ceiling 68, tvmonitor 427, unlabeled 0, wood 458 (59 only)
PASCAL_MAP = np.array([[2, 9, 68, 427, 0, 458]] * 3)


def test_pascal_context_has_the_papers_33_classes_and_the_common_59(tmp_path):
    root = write_pascal(tmp_path / "VOC2010", {"train": [("2008_000008", PASCAL_MAP), ("2008_000015", PASCAL_MAP)],
                                               "val": [("2008_000009", PASCAL_MAP[:, ::-1])]})
    assert detect(root) == "pascal-context"
    train = load_dataset(root, "train")
    assert (train.name, train.preprocess, train.num_classes, len(train)) == ("pascal-context", "resize", 33, 2)
    assert train.class_names[:3] == ("aeroplane", "bicycle", "bird") and train.class_names[-1] == "ceiling"
    assert train.raw_labels(0)[0].tolist() == [0, V, 32, 19, V, V]
    assert train.class_names[19] == "tvmonitor"
    assert train.labels(0, 6).tolist() == [[0, V, 32, 19, V, V]] * 6  # 6x3 squashed to 6x6: rows repeat
    common = load_dataset(root, "val", "pascal-context-59")
    assert (common.name, common.num_classes) == ("pascal-context-59", 59)
    assert common.raw_labels(0)[0].tolist() == [58, V, 54, 15, 1, 0]
    assert [common.class_names[i] for i in (0, 1, 15, 54, 58)] == ["aeroplane", "bag", "ceiling", "tvmonitor", "wood"]
    savemat(root / "trainval" / "2008_000015.mat", {"LabelMap": np.full((3, 6), 460, dtype=np.uint16)})
    with pytest.raises(ValueError, match="labels 0..459"):
        train.raw_labels(1)
    savemat(root / "trainval" / "2008_000015.mat", {"Other": np.zeros((3, 6))})
    with pytest.raises(ValueError, match="LabelMap"):
        train.check()
    (root / "JPEGImages" / "2008_000015.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 2 images of train.txt are missing"):
        load_dataset(root, "train")
    with pytest.raises(FileNotFoundError, match="splits here: train, val"):
        load_dataset(root, "test")


# ADE-Bed -------------------------------------------------------------------------------------------

def write_ade(root, images):
    scenes = []
    for split, name, scene, labels in images:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        columns_image(labels.shape[1], labels.shape[0]).save(root / "images" / split / f"{name}.jpg", quality=95)
        Image.fromarray(labels.astype(np.uint8)).save(root / "annotations" / split / f"{name}.png")
        scenes.append(f"{name} {scene}\n")
    (root / "sceneCategories.txt").write_text("".join(scenes))
    return root


def test_ade_bed_takes_the_bedrooms_with_the_references_30_classes(tmp_path):
    # ADE150 labels: wall 1, bed 8, television receiver 90, sky 3 (not among the 30), other 0
    tall = np.repeat(np.array([[1], [1], [8], [8], [90], [90], [3], [0]]), 4, axis=1)  # 4 wide, 8 high
    root = write_ade(tmp_path / "ADEChallengeData2016", [
        ("training", "ADE_train_00000001", "bedroom", tall), ("training", "ADE_train_00000002", "kitchen", tall),
        ("training", "ADE_train_00000003", "bedroom", tall), ("validation", "ADE_val_00000001", "bedroom", tall)])
    assert detect(root) == "ade-bed"
    train = load_dataset(root, "training")
    assert [p.stem for p in train.image_paths] == ["ADE_train_00000001", "ADE_train_00000003"]
    assert (train.preprocess, train.num_classes, train.void) == ("center-crop", 30, V)
    assert ADE_CLASSES[:2] == ("wall", "bed") and ADE_CLASSES[-1] == "television" and ADE_CLASSES[14] == "chest"
    assert train.raw_labels(0)[:, 0].tolist() == [0, 0, 1, 1, 29, 29, V, V]
    # portrait 4x8 at 4: the central 4 rows (2..5) stay
    assert train.labels(0, 4)[:, 0].tolist() == [1, 1, 29, 29]
    assert len(load_dataset(root, "validation")) == 1
    with pytest.raises(FileNotFoundError, match="splits here: training, validation"):
        load_dataset(root, "train")


def test_ade_bed_reads_the_references_release_when_named(tmp_path):
    root = tmp_path / "ADE_Bed_256"
    (root / "real" / "train").mkdir(parents=True)
    for name in ("b", "a"):
        columns_image(8, 8).save(root / "real" / "train" / f"{name}.jpg")
        np.save(root / "real" / "train" / f"{name}.npy", np.array([[0, 29, V, 3] * 2] * 8, dtype=np.uint8))
    with pytest.raises(ValueError, match="no known dataset layout"):  # the reference lays out every dataset so
        detect(root)
    train = load_dataset(root, "train", "ade-bed")
    assert [p.name for p in train.image_paths] == ["a.jpg", "b.jpg"] and train.num_classes == 30
    assert train.labels(1, 8)[0].tolist() == [0, 29, V, 3] * 2
    np.save(root / "real" / "train" / "a.npy", np.full((8, 8), 30, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"a.npy: values 30 are neither a class"):
        train.check()
    with pytest.raises(FileNotFoundError, match="splits here: train"):
        load_dataset(root, "test", "ade-bed")
