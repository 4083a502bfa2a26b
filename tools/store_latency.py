"""What one typical write of the store costs on each database: an annotation webhook's
`apply_annotation` (five keypoints on a query task of an open round, which also refreshes the
round's queries), timed one at a time from one thread.

    python -m tools.store_latency                                   # SQLite in a temporary folder
    python -m tools.store_latency --database-url postgresql://...   # and that (empty) database

Prints one JSON line per database: writes, median and 90th percentile in milliseconds. It writes
only to the temporary folder and to the database it is given (use a database of its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

IMAGES, POINTS = 20, 5


def prepare(store) -> None:
    """A project with IMAGES image tasks and an open round of POINTS queries on each, one query task each."""
    store.upsert_tasks(1, [(task, f"/{task}.png") for task in range(IMAGES)])
    store.save_round(1, 0, None, [{"task": t, "pixel": p, "rank": t * POINTS + p, "region": f"q0-{t}-{p}"}
                                  for t in range(IMAGES) for p in range(POINTS)])
    for task in range(IMAGES):
        store.place_queries(1, 0, task, range(POINTS), holder=1000 + task)
    store.open_round(1, 0)


def time_writes(location: str | Path, writes: int) -> dict:
    from ml_backend.state.store import Label, Store

    with closing(Store(location)) as store:
        prepare(store)
        seconds = []
        for n in range(writes):
            task = n % IMAGES
            labels = [Label(task, f"q0-{task}-{p}", p, p % 3, "keypoint") for p in range(POINTS)]
            start = time.perf_counter()
            store.apply_annotation(1, 10_000 + n, task, f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z",
                                   [{"id": lb.region} for lb in labels], labels, holder=1000 + task)
            seconds.append(time.perf_counter() - start)
    return {"database": "postgresql" if str(location).startswith("postgres") else "sqlite", "writes": writes,
            "median_ms": round(1000 * statistics.median(seconds), 3),
            "p90_ms": round(1000 * statistics.quantiles(seconds, n=10)[-1], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.store_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--database-url", default=None, help="also time this PostgreSQL database (an empty one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(time_writes(Path(folder) / "state.sqlite3", args.writes)))
    if args.database_url:
        print(json.dumps(time_writes(args.database_url, args.writes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
