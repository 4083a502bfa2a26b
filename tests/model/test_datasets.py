import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from model.datasets import CAMVID_CLASSES, IGNORE_INDEX, detect, load_camvid, load_dataset
from model.preprocessing import center_crop_image, center_crop_labels, remap_void, resize_image, resize_labels
from tests.commands import model_command
from tests.model.experiments.test_simulate import rows
from tests.model.experiments.test_simulate import run as simulate_smoke


def test_camvid_layout_and_order(camvid_root):
    train, val = load_camvid(camvid_root, "train"), load_camvid(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101) and val.num_classes == 11 and val.class_names == CAMVID_CLASSES
    assert val.image_paths == sorted(val.image_paths) and val.head(3).image_paths == val.image_paths[:3]
    assert len(val.head(0)) == 0 and len(val.head(1)) == 1 and val.head(1).label_sources == val.label_sources[:1]
    assert load_dataset(camvid_root, "val").key(0) == val.key(0) and detect(camvid_root) == "camvid"
    with pytest.raises(FileNotFoundError, match="splits here: train, val"):
        load_camvid(camvid_root, "test")


def test_camvid_preprocessing_squashes_like_the_reference(camvid_root):
    val = load_camvid(camvid_root, "val")
    with Image.open(val.image_paths[0]) as im:
        assert im.size == (480, 360)
        expected = np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR))
    image = val.image(0, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and np.array_equal(image, expected)
    raw = np.asarray(Image.open(val.label_sources[0]))
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
    with pytest.raises(ValueError, match="exceeds"):
        center_crop_image(Image.new("L", (10000, 9000)), 8)
    assert remap_void(np.array([[11, 3]]), 11).tolist() == [[255, 3]]
    with pytest.raises(ValueError):
        resize_labels(np.zeros((2, 2, 3)), 4)
    with pytest.raises(ValueError):
        center_crop_labels(np.zeros((2, 2, 3)), 4)


def test_center_crop_scales_the_shorter_side_then_crops_like_the_reference():
    """The reference's Cityscapes step: 2048x1024 -> 512x256 bilinear, then the central 256 columns."""
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8))
    reference = np.asarray(wide.resize((512, 256), Image.BILINEAR).crop((128, 0, 384, 256)))
    assert np.array_equal(center_crop_image(wide, 256), reference)
    labels = rng.integers(0, 19, (1024, 2048), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(labels).resize((512, 256), Image.NEAREST).crop((128, 0, 384, 256)))
    assert np.array_equal(center_crop_labels(labels, 256), reference)
    # portrait, odd sizes: the shorter side (width) becomes the size, the longer one is truncated
    tall = np.arange(7 * 5).reshape(7, 5).astype(np.uint8)
    assert center_crop_labels(tall, 5).tolist() == tall[1:6].tolist()
    assert center_crop_image(Image.new("RGB", (3, 11)), 2).shape == (2, 2, 3)


def test_center_crop_is_the_papers_text_option(camvid_root):
    val = load_camvid(camvid_root, "val", preprocess="center-crop")
    with Image.open(val.image_paths[0]) as im:  # 480x360 -> 341x256 -> columns 42..297
        expected = np.asarray(im.convert("RGB").resize((341, 256), Image.BILINEAR).crop((42, 0, 298, 256)))
    assert np.array_equal(val.image(0, 256), expected)
    raw = np.asarray(Image.open(val.label_sources[0]))
    labels = val.labels(0, 256)
    scaled = np.asarray(Image.fromarray(raw).resize((341, 256), Image.NEAREST))[:, 42:298]
    assert labels.shape == (256, 256) and (labels == IGNORE_INDEX).sum() == (scaled == 11).sum()
    # cached features and candidates follow the key: the two preprocessings never share them
    assert val.key(0) != load_camvid(camvid_root, "val").key(0) and val.head(2).preprocess == "center-crop"
    assert load_dataset(camvid_root, "val", preprocess="center-crop").key(0) == val.key(0)
    with pytest.raises(ValueError, match="preprocessing"):
        load_camvid(camvid_root, "val", preprocess="crop")


# the folder layout ---------------------------------------------------------------------------------

def write_folder(root, split="train", count=3, size=(6, 4), classes=("sky", "road", "car"), void=255, image_ext=".png"):
    """A folder-layout dataset whose mask i has every pixel of class i % C, but its first pixel void."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + f"\n\nvoid: {void}\n")
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i, 0, 0)).save(root / split / "images" / f"img{i}{image_ext}")
        mask = np.full(size[::-1], i % len(classes), dtype=np.uint8)
        mask[0, 0] = void
        Image.fromarray(mask).save(root / split / "masks" / f"img{i}.png")
    return root


def test_folder_layout_loads_classes_void_and_jpeg_images(tmp_path):
    root = write_folder(tmp_path / "camvid", count=4, image_ext=".jpg")  # the name says nothing: the layout does
    assert detect(root) == "folder"
    ds = load_dataset(root, "train")
    assert (ds.name, len(ds), ds.class_names, ds.void) == ("camvid", 4, ("sky", "road", "car"), 255)
    assert ds.preprocess == "resize"
    assert [p.name for p in ds.image_paths] == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"]
    ds.check()
    labels = ds.labels(3, 4)
    assert labels[0, 0] == IGNORE_INDEX and (labels == 0).sum() == 15  # image 3: class 3 % 3 = 0
    assert ds.image(1, 4).shape == (4, 4, 3)
    (root / "classes.txt").unlink()
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "void": 4}))
    ds = load_dataset(root, "train", "folder")
    assert ds.class_names == ("a", "b", "c", "d") and ds.void == 4
    with pytest.raises(ValueError, match=r"values 255 are neither a class \(0..3"):
        ds.labels(0, 4)


def test_folder_layout_refuses_mismatched_names(tmp_path):
    root = write_folder(tmp_path / "d", count=5)
    (root / "train" / "masks" / "img3.png").unlink()
    (root / "train" / "images" / "img4.png").rename(root / "train" / "images" / "other.png")
    with pytest.raises(ValueError, match=r"2 images without a mask .*\(img3, other\); "
                                         r"1 masks without an image .*\(img4\)"):
        load_dataset(root, "train")


def test_folder_layout_refuses_values_outside_the_classes_and_mixed_sizes(tmp_path):
    root = write_folder(tmp_path / "d", count=3)
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1, 1], mask[2, 2] = 3, 7  # 3 classes (0..2) and void 255
    Image.fromarray(mask).save(root / "train" / "masks" / "img1.png")
    ds = load_dataset(root, "train")
    ds.labels(0, 4)
    with pytest.raises(ValueError, match=r"img1.png: values 3, 7 are neither a class "
                                         r"\(0..2: sky, road, car, ...\) nor void \(255\)"):
        ds.check()
    Image.fromarray(np.zeros((5, 6), dtype=np.uint8)).save(root / "train" / "masks" / "img1.png")
    with pytest.raises(ValueError, match=r"img1.png: label map of 6x5 pixels, but its image .*img1.png is 6x4"):
        ds.labels(1, 4)
    Image.new("RGB", (6, 4)).save(root / "train" / "masks" / "img1.png")
    with pytest.raises(ValueError, match="single-channel"):
        ds.labels(1, 4)
    # images of different sizes are fine: each is brought to the square on its own
    Image.new("RGB", (9, 9)).save(root / "train" / "images" / "img2.png")
    Image.fromarray(np.ones((9, 9), dtype=np.uint8)).save(root / "train" / "masks" / "img2.png")
    assert ds.labels(2, 4).tolist() == [[1] * 4] * 4


@pytest.mark.parametrize("text, error", [
    ("sky\nroad\n", "exactly one line 'void: <value>'"),
    ("sky\nroad\nvoid: 1\n", "void must lie between 2"),
    ("sky\nroad\nvoid: 256\n", "void must lie between 2"),
    ("sky\nsky\nvoid: 255\n", "appears twice"),
    ("void: 255\n", "at least one class"),
    ("sky\nvoid: none\n", "must be an integer"),
])
def test_folder_class_file_errors_say_what_is_expected(tmp_path, text, error):
    root = write_folder(tmp_path / "d", count=1)
    (root / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=error):
        load_dataset(root, "train", "folder")


def test_folder_layout_refuses_jpeg_masks_and_unknown_splits(tmp_path):
    root = write_folder(tmp_path / "d", count=1)
    with pytest.raises(FileNotFoundError, match="splits here: train"):
        load_dataset(root, "val")
    Image.new("L", (6, 4)).save(root / "train" / "masks" / "img0.jpg")
    with pytest.raises(ValueError, match="masks must be PNG"):
        load_dataset(root, "train")


def test_detection_refuses_to_guess(tmp_path):
    with pytest.raises(ValueError, match="no known dataset layout .*folder: classes.txt"):
        detect(tmp_path)
    root = write_folder(tmp_path / "both", count=1)
    (root / "x").mkdir()
    (root / "xannot").mkdir()
    with pytest.raises(ValueError, match=r"several layouts \(folder, camvid\): choose one with --dataset"):
        load_dataset(root, "train")
    assert load_dataset(root, "train", "folder").name == "both"
    with pytest.raises(ValueError, match="no adapter 'nope'"):
        load_dataset(root, "train", "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "missing", "train")


def camvid_as_folder(camvid_root, root, counts):
    """CamVid's first images of each split copied into the folder layout, with its classes and void."""
    (root).mkdir()
    (root / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\nvoid: 11\n")
    for split, count in counts.items():
        for kind, source in (("images", split), ("masks", f"{split}annot")):
            (root / split / kind).mkdir(parents=True)
            for path in sorted((camvid_root / source).glob("*.png"))[:count]:
                shutil.copyfile(path, root / split / kind / path.name)
    return root


def test_camvid_in_the_folder_layout_is_the_same_dataset(tmp_path, camvid_root):
    folder = load_dataset(camvid_as_folder(camvid_root, tmp_path / "copy", {"val": 5}), "val")
    camvid = load_camvid(camvid_root, "val").head(5)
    assert folder.class_names == camvid.class_names and len(folder) == 5
    for i in range(5):
        assert folder.key(i) == camvid.key(i)  # the keys seed the candidate pixels
        assert np.array_equal(folder.image(i, 64), camvid.image(i, 64))
        assert np.array_equal(folder.labels(i, 64), camvid.labels(i, 64))
    assert len({folder.key(i) for i in range(5)}) == 5
    # the key follows the content: the same bytes under another name keep it, other bytes change it
    renamed = tmp_path / "abc123-renamed.png"
    shutil.copyfile(folder.image_paths[0], renamed)
    def key_of(path):
        return replace(folder, image_paths=[path], label_sources=folder.label_sources[:1], _digests={}).key(0)

    assert key_of(renamed) == folder.key(0)
    Image.new("RGB", (480, 360)).save(renamed)
    assert key_of(renamed) != folder.key(0)


# through the command line ----------------------------------------------------------------------------

def simulated(data, out, *args: str) -> list[dict]:
    """metrics.csv of `simulate` with the smoke settings, timings left out."""
    run = simulate_smoke([*args], out, data)
    assert run.returncode == 0, run.stderr[-3000:]
    return [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in rows(out)]


@pytest.mark.slow
def test_camvid_in_the_folder_layout_simulates_to_the_same_numbers(tmp_path, camvid_root):
    folder = camvid_as_folder(camvid_root, tmp_path / "camvid-folder", {"train": 8, "val": 4})
    args = ["--strategy", "two-stage-edald", "--rounds", "2", "--max-train-images", "8", "--max-eval-images", "4"]
    from_folder = simulated(folder, tmp_path / "folder-run", *args)
    from_camvid = simulated(camvid_root, tmp_path / "camvid-run", *args)
    assert len(from_folder) == 2 and from_folder == from_camvid


def test_simulate_checks_every_label_map_before_any_feature(tmp_path):
    root = write_folder(tmp_path / "d", count=3)
    write_folder(root, "val", count=2)
    Image.fromarray(np.full((4, 6), 9, dtype=np.uint8)).save(root / "val" / "masks" / "img1.png")
    out = model_command("simulate", "--data", str(root), "--backbone", "tiny", "--resolution", "32", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "error: " in out.stderr and "img1.png: values 9 are neither a class" in out.stderr
    assert not (tmp_path / "o").exists()
    out = model_command("simulate", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "holds no known dataset layout" in out.stderr
    out = model_command("simulate", "--data", str(root), "--dataset", "kitti", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "invalid choice: 'kitti'" in out.stderr


def test_expansion_report_loads_any_layout(tmp_path, camvid_root):
    folder = camvid_as_folder(camvid_root, tmp_path / "f", {"val": 2})
    out = model_command("expansion", "--data", str(folder), "--split", "val", "--clicks", "6", "--resolution", "64",
              "--taus", "0.5", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 0.50 |" in (tmp_path / "out" / "expansion.md").read_text()
