"""The load generator runs end to end on a small configuration: a real gunicorn, real /predict."""

import json

from tools import loadtest


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_concurrent_predictions_all_answer_with_the_current_head(camvid_root, capsys):
    rc = loadtest.main(["--requests", "5", "--concurrency", "5", "--images", "2", "--resolution", "32",
                        "--threads", "4", "--data", str(camvid_root)])
    report = _report(capsys)
    assert (rc, report["errors"], report["first_error"]) == (0, 0, None)
    assert report["requests"] == 5 and 0 < report["p50_s"] <= report["p95_s"] <= report["max_s"]


def test_a_selection_is_answered_cold_and_after_the_segmentation_job(camvid_root, capsys):
    rc = loadtest.main(["--selection", "3", "--cold", "2", "--images", "2", "--resolution", "32",
                        "--data", str(camvid_root)])
    report = _report(capsys)
    assert rc == 0 and (report["tasks"], report["cold_tasks"]) == (3, 2)
    assert report["cold_s"] > 0 and report["segmentation_job_s"] > 0 and report["after_job_s"] > 0
