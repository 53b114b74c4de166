"""The Kubernetes manifests in deploy/k8s, and the settings every deployment file names, checked
by reading them: CI has neither a cluster nor a Docker engine."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from core.config import Settings
from core.queue import celery_config
from tests.test_compose import Tagged, _load

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE_FILES = sorted(path.name for path in ROOT.glob("docker-compose*.yml"))
SETTINGS = {f"DIP_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"no manifests in {K8S}"
    return docs


def _one(manifests: list[dict], kind: str) -> dict:
    found = [doc for doc in manifests if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment(manifests: list[dict]) -> dict:
    return _one(manifests, "Deployment")


@pytest.fixture(scope="module")
def scaled_object(manifests: list[dict]) -> dict:
    return _one(manifests, "ScaledObject")


@pytest.fixture(scope="module")
def worker(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, dict]:
    """The container's env entries by name (each with its value or valueFrom)."""
    names = [entry["name"] for entry in container["env"]]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    return {entry["name"]: entry for entry in container["env"]}


def test_every_manifest_has_the_kubernetes_shape(manifests: list[dict]) -> None:
    for doc in manifests:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), doc.get("kind")
        assert doc["metadata"]["name"]


def test_the_deployment_selects_its_own_pods(deployment: dict) -> None:
    assert deployment["apiVersion"] == "apps/v1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_one_worker_per_gpu(worker: dict) -> None:
    assert worker["command"] == ["dip", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = _env(worker)
    assert env["DIP_WORKER_CONCURRENCY"]["value"] == "1" and env["DIP_DEVICE"]["value"] == "cuda"


def test_a_stopping_worker_has_time_to_hand_its_job_back(deployment: dict) -> None:
    soft_shutdown_s = celery_config(Settings(redis_url="redis://redis/0"))["worker_soft_shutdown_timeout"]
    grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Past Celery's own shutdown, with room for the last checkpoint's upload.
    assert grace_s >= soft_shutdown_s + 60


def test_the_worker_shares_no_disk_and_takes_secrets_from_a_secret(deployment: dict, worker: dict) -> None:
    env = _env(worker)
    assert urlsplit(env["DIP_RESULTS_URL"]["value"]).scheme == "s3"
    assert "DIP_REDIS_URL" in env or "DIP_REDIS_SENTINELS" in env
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DIP_REDIS_URL"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
    # Only pod-private volumes: a shared one (PVC, NFS, hostPath) is what object storage replaces.
    volumes = {vol["name"]: vol for vol in deployment["spec"]["template"]["spec"].get("volumes", [])}
    assert all(set(vol) == {"name", "emptyDir"} for vol in volumes.values()), volumes
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    assert mounts.get(env["DIP_SCRATCH_DIR"]["value"]) in volumes


def test_keda_scales_the_deployment_on_the_celery_queue(deployment: dict, worker: dict, scaled_object: dict) -> None:
    spec = scaled_object["spec"]
    assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 0 <= spec["minReplicaCount"] <= 1 < spec["maxReplicaCount"]
    (redis,) = [trigger for trigger in spec["triggers"] if trigger["type"] in ("redis", "redis-sentinel")]
    meta = redis["metadata"]
    # The list Celery keeps the waiting messages in is named after the queue: the setting's
    # default (not Settings(), which a DIP_QUEUE in the test environment would change).
    queue = Settings.model_fields["queue"].default
    assert meta["listName"] == queue == _env(worker).get("DIP_QUEUE", {"value": queue})["value"]
    assert isinstance(meta["listLength"], str) and int(meta["listLength"]) >= 1  # KEDA wants strings
    # KEDA reads *FromEnv variables from the target's containers.
    env = _env(worker)
    for key in ("addressFromEnv", "addressesFromEnv", "passwordFromEnv", "usernameFromEnv"):
        if key in meta:
            assert meta[key] in env, f"{key}: {meta[key]} is not in the worker's environment"


def test_keda_waits_long_before_taking_workers_away(scaled_object: dict) -> None:
    spec = scaled_object["spec"]
    # A worker stopped mid-job resumes elsewhere from its last checkpoint (every
    # DIP_CHECKPOINT_EVERY iterations, a few minutes at most on a GPU): wait far longer.
    assert spec["cooldownPeriod"] >= 600
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300


# -- settings named by every deployment file --------------------------------------------


def _compose_env_names(name: str) -> set[str]:
    names: set[str] = set()
    for svc in (_load(name).get("services") or {}).values():
        env = svc.get("environment") or {}
        env = env.value if isinstance(env, Tagged) else env
        names |= set(env) if isinstance(env, dict) else {entry.split("=", 1)[0] for entry in env}
    return names


def _manifest_env_names(manifests: list[dict]) -> set[str]:
    names: set[str] = set()
    for doc in manifests:
        pod = doc["spec"].get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            names |= {entry["name"] for entry in container.get("env", [])}
    return names


@pytest.mark.parametrize("source", [*COMPOSE_FILES, "deploy/k8s"])
def test_every_dip_variable_is_a_setting(source: str, manifests: list[dict]) -> None:
    names = _manifest_env_names(manifests) if source == "deploy/k8s" else _compose_env_names(source)
    assert names, f"no environment found in {source}"
    unknown = sorted(name for name in names if name.startswith("DIP_") and name not in SETTINGS)
    assert not unknown, f"{source} sets {unknown}, which no field of core.config.Settings reads (a typo?)"
