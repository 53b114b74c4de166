"""The Docker files, checked by reading them: CI has no Docker engine."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


class Tagged:
    """A value under a Compose-specific YAML tag (``!reset``, ``!override``)."""

    def __init__(self, tag: str, value: object) -> None:
        self.tag, self.value = tag, value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_ComposeLoader.add_multi_constructor("!", _tagged)


def _load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


def _default(value: str) -> str:
    """What ``${VAR:-default}`` interpolates to when VAR is unset (other text unchanged)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _seconds(duration: str) -> float:
    """A Compose duration ("2m", "1m30s", "90s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_services_and_profiles(services: dict) -> None:
    assert set(services) == {"redis", "api", "worker", "flower", "minio", "minio-init"}
    assert services["flower"]["profiles"] == ["monitoring"]
    # A plain `docker compose up` starts no MinIO: the object store is asked for.
    assert services["minio"]["profiles"] == services["minio-init"]["profiles"] == ["objectstore"]
    for name in ("redis", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"


def test_redis_persists_and_reports_health(services: dict) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command  # job data is never evicted
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "redis-data:/data" in redis["volumes"]


def test_api_and_worker_share_one_image_and_the_results_volume(services: dict) -> None:
    api, worker = services["api"], services["worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"] == {"context": "."}
    for svc in (api, worker):
        env = svc["environment"]
        assert env["DIP_REDIS_URL"] == "redis://redis:6379/0"
        assert f"results:{env['DIP_RESULTS_DIR']}" in svc["volumes"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["command"][0] == "dip"


def test_api_listens_everywhere_in_its_container_and_is_health_checked(services: dict) -> None:
    api = services["api"]
    assert api["command"][:2] == ["dip", "api"] and "0.0.0.0" in api["command"]
    assert any(port.endswith(":8000:8000") for port in api["ports"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_worker_reserves_a_gpu_and_has_time_to_hand_back_its_job(services: dict) -> None:
    worker = services["worker"]
    assert worker["command"] == ["dip", "worker"]
    assert worker["environment"]["DIP_DEVICE"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Celery's soft shutdown is set below a minute; Docker must wait longer before SIGKILL.
    assert _seconds(worker["stop_grace_period"]) >= 90
    # The image's HEALTHCHECK probes the API port; the worker has none, so it checks Celery instead.
    test = " ".join(worker["healthcheck"]["test"])
    assert "inspect ping" in test and "/healthz" not in test


def test_flower_watches_the_same_broker(services: dict) -> None:
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower")
    assert flower["environment"]["CELERY_BROKER_URL"] == services["api"]["environment"]["DIP_REDIS_URL"]


def test_named_volumes(compose: dict) -> None:
    assert set(compose["volumes"]) == {"results", "redis-data", "minio-data"}


def test_cpu_variant_drops_the_gpu_and_builds_cpu_torch(services: dict) -> None:
    cpu = _load("docker-compose.cpu.yml")["services"]
    worker = cpu["worker"]
    assert isinstance(worker["deploy"], Tagged) and worker["deploy"].tag == "!reset"
    assert worker["environment"]["DIP_DEVICE"] == "cpu"
    for name in ("api", "worker"):
        assert name in services  # overrides only what the base file has
        assert cpu[name]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cpu["api"]["image"] == cpu["worker"]["image"] != services["api"]["image"]


# -- object storage: docker-compose.objectstore.yml ------------------------------------


@pytest.fixture(scope="module")
def objectstore() -> dict:
    return _load("docker-compose.objectstore.yml")["services"]


def _merged(base: dict, override: dict) -> dict:
    """The services as Compose merges the two files, for the keys checked here: a mapping
    is merged key by key, a list appended to, ``!reset`` replaces (``!override`` too)."""
    merged = {name: dict(svc) for name, svc in base.items()}
    for name, svc in override.items():
        target = merged.setdefault(name, {})
        for key, value in svc.items():
            if isinstance(value, Tagged):
                target[key] = value.value
            elif isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            elif isinstance(value, list) and isinstance(target.get(key), list):
                target[key] = target[key] + value
            else:
                target[key] = value
    return merged


@pytest.fixture(scope="module")
def scaled_out(services: dict, objectstore: dict) -> dict:
    return _merged(services, objectstore)


def _volume_sources(svc: dict) -> set[str]:
    """Named volumes and host paths a service mounts (anonymous volumes and tmpfs are its own)."""
    sources = set()
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") in ("volume", "bind") and volume.get("source"):
                sources.add(volume["source"])
        elif ":" in volume:
            sources.add(volume.split(":", 1)[0])
    return sources


def test_minio_is_health_checked_and_published_on_loopback(services: dict) -> None:
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["command"] == ["server", "/data", "--console-address", ":9001"]
    assert minio["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL") and minio["healthcheck"]["retries"] >= 3
    assert "minio-data:/data" in minio["volumes"]
    # Credentials from the environment, with development defaults.
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert minio["environment"][name].startswith(f"${{{name}:-")
    assert len(_default(minio["environment"]["MINIO_ROOT_PASSWORD"])) >= 8  # MinIO refuses shorter
    for port in minio["ports"]:
        host, published, target = _default(port).rsplit(":", 2)
        assert host == "127.0.0.1" and published == target and target in ("9000", "9001")


def test_the_bucket_init_creates_the_results_bucket_once_minio_is_healthy(services: dict, objectstore: dict) -> None:
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc")
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert init.get("restart", "no") == "no"  # one-shot: API and workers wait for it to exit 0
    assert init["environment"] == services["minio"]["environment"]
    env = objectstore["api"]["environment"]
    bucket = urlsplit(env["DIP_RESULTS_URL"]).netloc
    script = " ".join(init["command"])
    alias = re.search(r"mc alias set (\S+) (\S+) ", script)
    assert alias and alias.group(2) == env["DIP_S3_ENDPOINT_URL"]
    # Idempotent: a second `up` finds the bucket and still exits 0.
    assert f"mc mb --ignore-existing {alias.group(1)}/{bucket}" in script


def test_objectstore_runs_api_and_workers_on_the_bucket_after_its_init(services: dict, scaled_out: dict) -> None:
    minio_env = services["minio"]["environment"]
    for name in ("api", "worker"):
        svc = scaled_out[name]
        env = svc["environment"]
        assert urlsplit(env["DIP_RESULTS_URL"]).scheme == "s3"
        assert env["DIP_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        assert env["DIP_REDIS_URL"] == services[name]["environment"]["DIP_REDIS_URL"]  # the rest is kept
        assert svc["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        # The scratch is private to the container.
        assert any(entry.split(":")[0] == env["DIP_SCRATCH_DIR"] for entry in svc["tmpfs"])
    # The override lifts the profile: MinIO and its init start with the rest.
    assert not scaled_out["minio"].get("profiles") and not scaled_out["minio-init"].get("profiles")


def test_objectstore_shares_no_volume_between_services(scaled_out: dict) -> None:
    for name in ("api", "worker"):
        mine = _volume_sources(scaled_out[name])
        others = set().union(*(_volume_sources(svc) for other, svc in scaled_out.items() if other != name))
        assert not mine & others, f"{name} shares {mine & others} with another service"
        # And none of its own either: a replica of `--scale worker=N` would share it with the next.
        assert not mine, f"{name} still mounts {mine}"


def test_workers_can_be_scaled(services: dict, objectstore: dict, scaled_out: dict) -> None:
    # `docker compose up --scale worker=N`: a fixed name or host port would clash between replicas.
    for svc in (services["worker"], objectstore["worker"], scaled_out["worker"]):
        assert "container_name" not in svc and "ports" not in svc


def test_the_default_setup_is_untouched_by_the_objectstore(services: dict) -> None:
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert "DIP_RESULTS_URL" not in env and "minio-init" not in services[name]["depends_on"]


# -- Dockerfile -------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            rows.append((instruction.upper(), rest.strip()))
    return rows


def _pip_installs() -> list[str]:
    """The Dockerfile's pip commands, without the optional ``--index-url`` of a build argument."""
    commands = []
    for instruction, rest in _dockerfile():
        if instruction == "RUN" and rest.startswith("pip install"):
            commands.append(re.sub(r"\s*\$\{TORCH_INDEX_URL:\+.*\}", "", rest).strip())
    return commands


def test_dockerfile_runs_as_a_user_with_a_health_check() -> None:
    rows = _dockerfile()
    users = [rest for instruction, rest in rows if instruction == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    health = [rest for instruction, rest in rows if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    cmd = [rest for instruction, rest in rows if instruction == "CMD"][-1]
    assert cmd.startswith('["dip", "api"')
    assert rows[0][0] == "FROM"


def test_dockerfile_installs_pinned_torch_then_the_project() -> None:
    assert _pip_installs() == ["pip install torch==2.13.0", "pip install ."]


def test_readme_gives_the_same_install_steps() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md yet")
    text = " ".join(readme.read_text().split())
    for command in _pip_installs():
        words = shlex.split(command)
        # The README may call pip through the venv (".venv/bin/pip install ...").
        assert re.search(r"pip " + re.escape(" ".join(words[1:])) + r"(\s|$|`)", text), (
            f"README.md lacks the Dockerfile's install step {command!r}"
        )


def test_the_api_is_not_open_by_default(services: dict) -> None:
    # Without keys, opening it must be asked for (DIP_ALLOW_OPEN=true), never the default.
    env = services["api"]["environment"]
    assert env["DIP_ALLOW_OPEN"].endswith(":-false}")
    assert "localhost" in env["DIP_ALLOWED_HOSTS"]

