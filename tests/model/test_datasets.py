import numpy as np
import pytest
from PIL import Image

from model.datasets import CAMVID_CLASSES, IGNORE_INDEX, load_camvid, load_dataset
from model.preprocessing import remap_void, resize_image, resize_labels


def test_camvid_layout_and_order(camvid_root):
    train, val = load_camvid(camvid_root, "train"), load_camvid(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101) and val.num_classes == 11 and val.class_names == CAMVID_CLASSES
    assert val.image_paths == sorted(val.image_paths) and val.head(3).image_paths == val.image_paths[:3]
    assert load_dataset(camvid_root, "val").key(0) == val.key(0)
    with pytest.raises(FileNotFoundError):
        load_camvid(camvid_root, "test")


def test_camvid_preprocessing_squashes_like_the_reference(camvid_root):
    val = load_camvid(camvid_root, "val")
    with Image.open(val.image_paths[0]) as im:
        assert im.size == (480, 360)
        expected = np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR))
    image = val.image(0, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and np.array_equal(image, expected)
    raw = np.asarray(Image.open(val.label_paths[0]))
    labels = val.labels(0, 256)
    assert labels.shape == (256, 256)
    assert set(np.unique(labels)) <= (set(np.unique(raw)) - {11}) | {IGNORE_INDEX}  # nearest: no new classes
    assert (labels == IGNORE_INDEX).sum() == (resize_labels(raw, 256) == 11).sum()


def test_resize_handles_modes_and_refuses_bombs():
    gray = Image.new("L", (10, 20), 128)
    rgba = Image.new("RGBA", (30, 10), (1, 2, 3, 4))
    assert resize_image(gray, 8).shape == (8, 8, 3) and resize_image(rgba, 8)[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="exceeds"):
        resize_image(Image.new("L", (10000, 9000)), 8)
    assert remap_void(np.array([[11, 3]]), 11).tolist() == [[255, 3]]
    with pytest.raises(ValueError):
        resize_labels(np.zeros((2, 2, 3)), 4)


def test_center_crop_is_the_papers_text_option(camvid_root):
    val = load_camvid(camvid_root, "val", preprocess="center-crop")
    with Image.open(val.image_paths[0]) as im:
        expected = np.asarray(im.convert("RGB").crop((60, 0, 420, 360)).resize((256, 256), Image.BILINEAR))
    assert np.array_equal(val.image(0, 256), expected)
    raw = np.asarray(Image.open(val.label_paths[0]))
    labels = val.labels(0, 256)
    assert labels.shape == (256, 256)
    assert (labels == IGNORE_INDEX).sum() == (resize_labels(raw[:, 60:420], 256) == 11).sum()
    # cached features and candidates follow the key: the two preprocessings never share them
    assert val.key(0) != load_camvid(camvid_root, "val").key(0) and val.head(2).preprocess == "center-crop"
    assert load_dataset(camvid_root, "val", preprocess="center-crop").key(0) == val.key(0)
    with pytest.raises(ValueError, match="preprocessing"):
        load_camvid(camvid_root, "val", preprocess="crop")
