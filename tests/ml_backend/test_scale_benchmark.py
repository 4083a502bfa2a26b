"""tools/scale.py run small against the real Label Studio (here, beside the session's Label Studio):
every field, and what it counts."""

from __future__ import annotations

import json

from tools import scale


def test_the_scale_benchmark_measures_a_round_trip_and_counts_label_studios_calls(ls, capsys, camvid_root):
    scale.main(["--label-studio-url", ls.url, "--api-key", ls.token, "--tasks", "12", "--data", str(camvid_root),
                "--timeout", "600"])
    (line,) = capsys.readouterr().out.strip().splitlines()
    out = json.loads(line)
    assert out["tasks"] == 12 and out["settings"]["BACKBONE"] == "tiny"
    for phase in ("round0", "round1", "segmentation"):
        assert out[phase]["seconds"] > 0
    assert out["round0"]["label_studio_calls"] and out["round1"]["label_studio_calls"]
    assert "round 0: features and local herding" in out["round0"]["stages"]
    assert out["round0"]["label_studio_calls"]["download a task file"] == 12
    assert out["round0"]["label_studio_calls"]["take task N out of the labeling queue"] == 12
    # publishing lists only chosen tasks; the whole project is listed by the syncs alone
    assert out["round1"]["label_studio_calls"]["list chosen tasks of project N"] >= 1
    # 12 segmentations may all be imported before round 1 is seen open: one import over both phases
    imports = [out[p]["label_studio_calls"].get("import N predictions into project N", 0) for p in ("round1", "segmentation")]
    assert sum(imports) == 1 and set(out["segmentation"]["label_studio_calls"]) <= {"import N predictions into project N"}
    assert out["store_bytes"] > 0 and out["model_dir_bytes"] > out["store_bytes"] and out["peak_rss_mb"] > 100
