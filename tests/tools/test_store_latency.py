"""The store's write timing runs on both databases and times writes that were applied."""

import json

from tools import store_latency


def test_it_times_applied_writes_on_sqlite_and_postgresql(postgres_url, capsys, monkeypatch):
    from ml_backend.state.store import Store

    applied = []
    original = Store.apply_annotation
    monkeypatch.setattr(Store, "apply_annotation", lambda *a, **k: applied.append(original(*a, **k)))
    assert store_latency.main(["--writes", "12", "--database-url", postgres_url]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["database"], r["writes"]) for r in lines] == [("sqlite", 12), ("postgresql", 12)]
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in lines) and applied == ["applied"] * 24
