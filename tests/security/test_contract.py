"""Property-based test of the OpenAPI contract (schemathesis against the app, in-process).

Requests are generated from the app's own OpenAPI document, valid and
invalid; every answer must be documented (status code, content type,
headers), match its schema, and never be a 5xx. The app runs in-process on
the session's real Redis, with API keys configured and without (open: the
document then declares no security); no worker is needed.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.config import Settings
from api.main import create_app

CONTRACT_DB = 10
KEY = "contract-key-3c9f0e1d2b4a5968"

AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 30  # per operation and generation mode: the whole run stays well under half a minute


@pytest.fixture(scope="module", params=["with keys", "open"])
def api_schema(request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app (with API keys, or open as on loopback) and its schema; the document differs."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{CONTRACT_DB}"
    redis.Redis.from_url(url).flushdb()
    keys = KEY if request.param == "with keys" else ""
    app = create_app(Settings(
        redis_url=url, results_dir=tmp_path_factory.mktemp("contract-results"),
        queue=f"dip-contract-{uuid.uuid4().hex[:8]}", api_keys=keys, max_upload_bytes=200_000,
        max_iterations=50, allowed_hosts="testserver"))  # the in-process client's host name
    # Unknown query parameters and headers are ignored by design (cache busters,
    # proxies' headers), so requests are not made "invalid" by adding some.
    config = SchemathesisConfig.from_dict({"generation": {"allow-extra-parameters": False}})
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    redis.Redis.from_url(url).flushdb()


def test_every_answer_matches_the_contract(api_schema: Any) -> None:
    # One Hypothesis run per operation and mode (schemathesis' own pytest
    # parametrisation needs a schema at import time, and ours needs the
    # session's Redis), failures collected so that one run names them all.
    failures = []
    # /readyz answers 503 here by design (no worker runs); it is tested with one elsewhere.
    for result in api_schema.exclude(path="/readyz").get_all_operations():
        operation = result.ok()
        # Schema-valid requests that are still refused, rightly: the schema cannot say
        # that `image` must be a decodable picture of 16x16 pixels or more, nor that a
        # listing `cursor` must be one the server handed out.
        excluded = [positive_data_acceptance] if operation.label in ("POST /v1/jobs", "GET /v1/jobs") else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                case.call_and_validate(headers=AUTH, excluded_checks=excluded)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no parameters: nothing to get wrong
            except Exception as exc:  # noqa: BLE001 - reported below, with the others
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
