"""Label Studio JSON exports as datasets: synthetic exports, and a real server's export simulated."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from model.datasets import CAMVID_CLASSES, IGNORE_INDEX, detect, load_camvid, load_dataset
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from tests.commands import model_command
from tests.conftest import REPO

V = IGNORE_INDEX
CONFIG = """<View>
  <Image name="photo" value="$img"/>
  <KeyPointLabels name="query" toName="photo"><Label value="sky"/><Label value="road"/></KeyPointLabels>
  <BrushLabels name="mask" toName="photo"><Label value="sky"/><Label value="road"/><Label value="car"/></BrushLabels>
  <PolygonLabels name="outline" toName="photo"><Label value="car"/><Label value="person"/></PolygonLabels>
</View>"""


def brush_regions(labels: np.ndarray, classes, from_name="mask", to_name="photo") -> list[dict]:
    """A label map as Label Studio brush regions, one per class present (the SDK's RLE encoder)."""
    h, w = labels.shape
    return [{"id": f"c{c}", "from_name": from_name, "to_name": to_name, "type": "brushlabels",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"format": "rle", "rle": mask2rle((labels == c).astype(np.uint8) * 255),
                       "brushlabels": [classes[c]]}}
            for c in np.unique(labels) if c < len(classes)]


def polygon(points, label, size=(8, 4)):
    return {"id": f"p-{label}", "from_name": "outline", "to_name": "photo", "type": "polygonlabels",
            "original_width": size[0], "original_height": size[1],
            "value": {"points": points, "polygonlabels": [label]}}


def write_export(root: Path, tasks: list[dict], split="train", config=CONFIG) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "label_config.xml").write_text(config)
    (root / f"{split}.json").write_text(json.dumps(tasks))
    return root


def image_at(root: Path, relative: str, size=(8, 4)) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (len(relative), 0, 0)).save(path)


def test_brush_and_polygon_regions_become_label_maps(tmp_path):
    root = tmp_path / "export"
    image_at(root, "upload/1/3f2a91c0-street.png")
    image_at(root, "local-files/photos/b c.png")
    labels = np.full((4, 8), V)
    labels[:2] = 0  # sky on top, road below on the left half, void bottom right
    labels[2:, :4] = 1
    keypoint = {"id": "k", "from_name": "query", "to_name": "photo", "type": "keypointlabels",
                "value": {"x": 10, "y": 10, "keypointlabels": ["road"]}}
    tasks = [
        {"id": 7, "data": {"img": "/data/upload/1/3f2a91c0-street.png"},
         "annotations": [{"result": brush_regions(labels, ("sky", "road", "car")) + [keypoint]}]},
        {"id": 8, "data": {"img": "/data/upload/1/3f2a91c0-street.png"}, "annotations": []},  # not labeled: left out
        {"id": 9, "data": {"img": "/data/local-files/?d=photos/b%20c.png"}, "annotations": [
            {"result": brush_regions(np.zeros((4, 8), int), ("sky",))},
            # the last annotation not skipped is the ground truth: a car, then a person over its right half
            {"result": [polygon([[0, 0], [50, 0], [50, 100], [0, 100]], "car"),
                        polygon([[25, 0], [100, 0], [25, 100]], "person")]},
            {"result": [], "was_cancelled": True}]},
    ]
    write_export(root, tasks)
    assert detect(root) == "label-studio"
    ds = load_dataset(root, "train")
    assert (ds.name, len(ds), ds.preprocess, ds.void) == ("label-studio", 2, "resize", V)
    assert ds.class_names == ("sky", "road", "car", "person")  # BrushLabels then PolygonLabels, in config order
    assert [p.name for p in ds.image_paths] == ["3f2a91c0-street.png", "b c.png"]
    assert ds.raw_labels(0).tolist() == labels.tolist()
    # a pixel is in a polygon when its centre is: the car covers columns 0-3; the person, the triangle
    # (2, 0), (8, 0), (2, 4) in pixels, is painted over it (x + 0.5 < 8 - 1.5 (y + 0.5) right of x = 2)
    assert ds.raw_labels(1).tolist() == [[2, 2, 3, 3, 3, 3, 3, V],
                                         [2, 2, 3, 3, 3, 3, V, V],
                                         [2, 2, 3, 3, V, V, V, V],
                                         [2, 2, 3, 2, V, V, V, V]]
    assert ds.labels(0, 4).tolist() == [[0] * 4, [0] * 4, [1, 1, V, V], [1, 1, V, V]]
    ds.check()


def test_bad_exports_get_clear_errors(tmp_path):
    root = tmp_path / "export"
    image_at(root, "upload/1/a.png")
    good = {"id": 1, "data": {"img": "/data/upload/1/a.png"},
            "annotations": [{"result": brush_regions(np.zeros((4, 8), int), ("sky",))}]}

    def load_with(task, error, kind=ValueError, on_read=False):
        write_export(root, [task])
        with pytest.raises(kind, match=error):
            load_dataset(root, "train").check() if on_read else load_dataset(root, "train")

    load_with({**good, "data": {"img": "/data/upload/1/missing.png"}},
              r"task 1 of train.json: image /data/upload/1/missing.png expected at .*upload/1/missing.png",
              FileNotFoundError)
    load_with({**good, "data": {"img": "https://example.com/a.png"}}, "neither an upload")
    load_with({**good, "data": {"img": "/data/upload/../../etc/passwd"}}, "points outside")
    load_with({**good, "data": {}}, r"no image URL in data.img")
    wrong = brush_regions(np.zeros((4, 8), int), ("tree",))
    load_with({**good, "annotations": [{"result": wrong}]}, r"labeled 'tree', which is not a label of label_config.xml")
    small = brush_regions(np.zeros((2, 8), int), ("sky",))
    load_with({**good, "annotations": [{"result": small}]}, r"drawn on a 8x2 image, but .*a.png is 8x4", on_read=True)
    damaged = brush_regions(np.zeros((4, 8), int), ("sky",))
    damaged[0]["value"]["rle"] = damaged[0]["value"]["rle"][:3]
    load_with({**good, "annotations": [{"result": damaged}]}, "brush RLE", on_read=True)
    load_with({**good, "annotations": [{"result": [polygon([[0, 0], [50, 0]], "car")]}]}, "polygon with 2 points",
              on_read=True)
    load_with({**good, "annotations": [{"result": [], "was_cancelled": True}]}, "none of its 1 tasks has an annotation")
    write_export(root, [good], config="<View><Image name='photo' value='$img'/></View>")
    with pytest.raises(ValueError, match="no BrushLabels or PolygonLabels control"):
        load_dataset(root, "train", "label-studio")
    (root / "label_config.xml").unlink()
    with pytest.raises(FileNotFoundError, match="Settings > Labeling Interface > Code"):
        load_dataset(root, "train", "label-studio")
    with pytest.raises(FileNotFoundError, match="exports here: train"):
        load_dataset(root, "val", "label-studio")


def test_importing_model_datasets_loads_no_label_studio_code():
    code = "import sys, model.datasets; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('label_studio_sdk', 'httpx', 'requests', 'flask')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# a real Label Studio ---------------------------------------------------------------------------------

N_IMAGES = 10
SIMULATE = ["--backbone", "tiny", "--resolution", "64", "--candidates", "400", "--local-k", "8", "--rounds", "2",
            "--budget-factor", "0.5", "--train-epochs", "20", "--strategy", "two-stage-edald", "--seeds", "0",
            "--eval-split", "train", "--max-eval-images", str(N_IMAGES)]


def simulate(data: Path, out: Path, *args: str) -> list[dict]:
    run = model_command("simulate", "--data", data, *SIMULATE, *args, "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in csv.DictReader(f)]


def test_a_label_studio_export_simulates_like_the_images_it_holds(tmp_path, camvid_root, ls):
    """10 CamVid frames uploaded to a real Label Studio, their ground truth imported as brush
    annotations, the project exported as JSON and simulated: the same numbers as the CamVid adapter
    on the same frames, so RLE, image keys and class order all survive the trip."""
    names = sorted(p.name for p in (camvid_root / "train").glob("*.png"))[:N_IMAGES]
    config = SHIPPED_CONFIG.read_text()  # the backend's own: keypoints and brushes
    export_dir = tmp_path / "export"
    project = ls.api("POST", "/api/projects",
                     json={"title": "CamVid ground truth", "label_config": config}).json()["id"]
    files = [(f"file{i}", (n, open(camvid_root / "train" / n, "rb"), "image/png")) for i, n in enumerate(names)]
    ls.api("POST", f"/api/projects/{project}/import", files=files)
    for task in ls.api("GET", f"/api/tasks?project={project}&page_size=100").json()["tasks"]:
        name = task["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1]  # uploads are "<prefix>-<name>"
        truth = np.asarray(Image.open(camvid_root / "trainannot" / name))
        result = brush_regions(truth, CAMVID_CLASSES, "mask", "image")
        ls.api("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": result})
    export = ls.api("GET", f"/api/projects/{project}/export?exportType=JSON").json()
    write_export(export_dir, export, config=config)
    os.symlink(ls.log.parent / "media" / "upload", export_dir / "upload")  # its data directory

    dataset = load_dataset(export_dir, "train")
    camvid = load_camvid(camvid_root, "train").head(N_IMAGES)
    assert [p.name.split("-", 1)[1] for p in dataset.image_paths] == names and dataset.class_names == CAMVID_CLASSES
    for i in range(N_IMAGES):
        assert dataset.key(i) == camvid.key(i)
        assert np.array_equal(dataset.raw_labels(i), np.where(camvid.raw_labels(i) == 11, V, camvid.raw_labels(i)))
    from_export = simulate(export_dir, tmp_path / "run-export")
    from_camvid = simulate(camvid_root, tmp_path / "run-camvid", "--max-train-images", str(N_IMAGES))
    assert len(from_export) == 2 and from_export == from_camvid
    assert float(from_export[-1]["miou"]) > 0 and int(from_export[-1]["queried_pixels"]) == 10
