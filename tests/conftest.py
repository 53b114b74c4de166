"""Fixtures shared by every test package: a real Redis server and where data lie."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.redis_server import RedisServer
from stack.s3_server import S3Server

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    """``../shared/data`` beside the clone (CI lays it there); tests using it skip without it."""
    path = repo_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free port for the whole session (a real server process, no in-memory stand-in).

    Tests that write to it should use their own key prefix or flush what they wrote.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto's standalone server on loopback) for the whole session.

    Tests make their own bucket, named after the test, so that they share nothing.
    """
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
