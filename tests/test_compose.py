"""The Docker files, checked by reading them: CI has no Docker engine."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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
    assert set(services) == {"redis", "api", "worker", "flower"}
    assert services["flower"]["profiles"] == ["monitoring"]
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
    assert set(compose["volumes"]) == {"results", "redis-data"}


def test_cpu_variant_drops_the_gpu_and_builds_cpu_torch(services: dict) -> None:
    cpu = _load("docker-compose.cpu.yml")["services"]
    worker = cpu["worker"]
    assert isinstance(worker["deploy"], Tagged) and worker["deploy"].tag == "!reset"
    assert worker["environment"]["DIP_DEVICE"] == "cpu"
    for name in ("api", "worker"):
        assert name in services  # overrides only what the base file has
        assert cpu[name]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cpu["api"]["image"] == cpu["worker"]["image"] != services["api"]["image"]


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

