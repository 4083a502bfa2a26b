import csv
import json

import pytest
from PIL import Image

from model.__main__ import main
from model.experiments.comparison import parse_variant


def write_run(folder, miou_by_seed: dict[int, list[float]], probe_miou: list[float] | None = None):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["strategy", "seed", "round", "miou", "pixel_accuracy", "labeled_pixels",
                                    "labeled_share"])
        writer.writeheader()
        for seed, curve in miou_by_seed.items():
            for r, miou in enumerate(curve, 1):
                writer.writerow({"strategy": "random", "seed": seed, "round": r, "miou": miou, "pixel_accuracy": 0.5,
                                 "labeled_pixels": 10 * r, "labeled_share": 0.001 * r})
    if probe_miou is not None:
        (folder / "probe.json").write_text(json.dumps({
            "miou_mean": sum(probe_miou) / len(probe_miou), "miou_std": 0.5, "pixel_accuracy_mean": 61.0,
            "runs": [{"miou": m / 100} for m in probe_miou], "images": ["a.png", "b.png"], "labeled_pixels": 7000,
            "eval_split": "val"}))
    return folder


def test_two_variants_side_by_side_in_the_table_and_one_panel_each(tmp_path, capsys):
    a = write_run(tmp_path / "random", {0: [0.10, 0.20], 1: [0.12, 0.30]}, probe_miou=[20.0, 21.0])
    b = write_run(tmp_path / "pretrained", {0: [0.30, 0.40], 1: [0.32, 0.44]})
    assert main(["compare", "--run", f"random weights={a}", "--run", f"pretrained={b}", "--out",
                 str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "| random weights | 20.50 ± 0.50 | 61.0 | 2 | 2 | 7000 |" in text
    assert "| random weights | random | 2 | 2 | 25.00 ± 5.00 | 50.0 | 20 |" in text  # last round: 0.20 and 0.30
    assert "| pretrained | random | 2 | 2 | 42.00 ± 2.00 | 50.0 | 20 |" in text
    assert "pretrained |" not in text.split("\n\n")[0]  # no probe there: no probe row
    with Image.open(tmp_path / "out" / "comparison.png") as im:
        assert im.format == "PNG" and im.width > 1.8 * im.height  # two panels side by side
    assert "comparison.png" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "probes.png") as im:
        assert im.format == "PNG"
    (a / "metrics.csv").unlink()  # a probe alone: no curves to draw
    assert main(["compare", "--run", f"only={a}", "--out", str(tmp_path / "probes-only")]) == 0
    assert sorted(p.name for p in (tmp_path / "probes-only").iterdir()) == ["comparison.md", "probes.png"]


def test_a_variant_is_a_label_and_a_folder_of_results(tmp_path):
    with pytest.raises(ValueError, match="label=folder"):
        parse_variant(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither metrics.csv"):
        parse_variant(f"x={tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_variant(f"x={tmp_path / 'missing'}")
    assert main(["compare", "--run", f"x={tmp_path}", "--out", str(tmp_path / "o")]) == 2
