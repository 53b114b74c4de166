"""The client's tests run against the real service of ``tests/service`` (Redis, a Celery
worker, uvicorn), and the key-protected API of ``tests/security``; fixtures reused, not copied."""

from tests.security.conftest import key_settings, start_api  # noqa: F401
from tests.service.conftest import (  # noqa: F401
    idle_service,
    image64,
    pictures,
    service,
    service_redis_url,
)
