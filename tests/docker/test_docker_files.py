"""No Docker engine runs here: the Dockerfile and the compose file are checked statically against
the code and the documentation (services, ports, variables, volumes, download addresses)."""

import re

import yaml

from ml_backend.config import Settings
from ml_backend.jobs.rq_runner import QUEUE_NAME
from model.backbones import BACKBONES
from model.expansion import SAM_DOWNLOADS
from tests.conftest import REPO

DOCKER = REPO / "docker"


def settings_variables() -> set[str]:
    """Every environment variable the settings read: each field's name and its aliases."""
    from ml_backend.config import ALIASES, Settings

    return {name.upper() for name in Settings.model_fields} | set(ALIASES)


def compose():
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_services_ports_and_volumes():
    c = compose()
    assert set(c["services"]) == {"label-studio", "backend", "worker", "redis", "postgres"}
    assert c["services"]["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert "8080:8080" in c["services"]["label-studio"]["ports"]
    assert f"{Settings().port}:{Settings().port}" in c["services"]["backend"]["ports"]
    backend, worker = c["services"]["backend"], c["services"]["worker"]
    for service in (backend, worker):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts[service["environment"]["MODEL_DIR"]] == "model-dir"  # the workers share MODEL_DIR
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        # the store is the postgres service's database, which they wait for
        assert re.fullmatch(r"postgresql://edald:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/edald",
                            service["environment"]["DATABASE_URL"])
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert worker["command"][:2] == ["rq", "worker"] and worker["command"][-1] == QUEUE_NAME
    # jobs in the worker's own process: the default worker forks a child per job, which loads the backbone again
    assert worker["command"][worker["command"].index("-w") + 1] == "rq.worker.SimpleWorker"
    # a worker busy when Redis went away exits (docs/reliability.md): it and Redis come back by themselves
    assert worker["restart"] == c["services"]["redis"]["restart"] == "unless-stopped"
    assert worker["image"] == backend["image"] and backend["build"]["dockerfile"] == "docker/Dockerfile"
    assert set(c["volumes"]) == {"label-studio-data", "model-dir", "redis-data", "postgres-data"}
    postgres = c["services"]["postgres"]
    assert postgres["image"] == "postgres:15" and postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert (postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]) == ("edald", "edald")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"]) and postgres["restart"] == "unless-stopped"
    assert c["services"]["label-studio"]["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    # several gunicorn workers only beside Redis (the settings refuse them without it)
    workers = re.fullmatch(r"\$\{WORKERS:-(\d+)\}", backend["environment"]["WORKERS"]).group(1)
    assert int(workers) > 1 and backend["environment"]["REDIS_URL"] and "THREADS" in backend["environment"]


def test_every_variable_the_compose_sets_is_read_by_the_code_and_documented():
    known = settings_variables()
    documented = (REPO / "docs" / "configuration.md").read_text()
    env = compose()["services"]["backend"]["environment"]
    assert set(env) <= known, set(env) - known
    for name in known:
        assert f"`{name}`" in documented, f"{name} is not documented in docs/configuration.md"


def test_dockerfile_downloads_the_official_checkpoints_and_starts_gunicorn():
    text = (DOCKER / "Dockerfile").read_text()
    for backbone in BACKBONES.values():
        if backbone.pretrained:
            assert backbone.checkpoint_file in text
            assert backbone.url.rsplit("/", 1)[0] in text
    for url in SAM_DOWNLOADS.values():
        assert url in text
    assert re.search(r"^EXPOSE 9090$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M).group(1)
    assert "ml_backend.web.wsgi:app" in cmd and "--bind ${HOST}:${PORT}" in cmd
    # gunicorn's processes and threads come from WORKERS and THREADS, with the backend's defaults
    assert "--workers ${WORKERS}" in cmd and "--threads ${THREADS}" in cmd and "--preload" not in cmd
    assert re.search(rf"^\s+WORKERS={Settings().workers} \\$", text, re.M)
    assert re.search(rf"^\s+THREADS={Settings().threads}$", text, re.M)
    # the backend listens on loopback by default; the image opens it to the container's network
    assert Settings().host == "127.0.0.1" and re.search(r"^\s+HOST=0\.0\.0\.0 \\$", text, re.M)
    env = dict(re.findall(r"(\w+)=(\S+)", text[text.index("ENV BACKBONE"):]))
    assert env["BACKBONE"] == "imagenet256" and env["DIFFUSION_CHECKPOINT"].endswith(
        BACKBONES["imagenet256"].checkpoint_file)
    assert "COPY requirements.txt" in text and "pip install -r requirements.txt" in text
    for arg in ("BASE_IMAGE", "TORCH_INDEX_URL", "DIFFUSION_CHECKPOINTS", "SAM_MODEL_TYPE"):
        assert re.search(rf"^ARG {arg}=", text, re.M)
