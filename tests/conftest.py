"""Shared fixtures.

PostgreSQL tests run against a real server that this session starts
(tests/pgserver.py). If the server binaries are missing those tests fail with
the install command; they are never skipped.
"""

from __future__ import annotations

import uuid

import pytest

from pgserver import PostgresServer
from rtlib import config as cfg
from rtlib.store import JobStore

STORE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


# -- job store ------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole session; started only if a test asks for it."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request, tmp_path):
    """A fresh, empty store: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rtlib.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)  # WITH (FORCE): a connection a test left open does not block it


@pytest.fixture
def store(store_url):
    s = JobStore(store_url)
    yield s
    s.close()


# -- compute ------------------------------------------------------------
@pytest.fixture(scope="module")
def compute():
    """A real dask LocalCluster with two workers, shared by one test module's agents."""
    from rtlib.compute.local import LocalDaskBackend

    backend = LocalDaskBackend(workers=2)
    backend.start()
    yield backend
    backend.close()


# -- config ---------------------------------------------------------------
@pytest.fixture
def settings(tmp_path, monkeypatch):
    """The embedded default config over a workspace in tmp_path, with its directories created.

    RTLIB_CONFIG is removed and the working directory moved to tmp_path so that
    neither a developer's config nor a stray ./rtlib.toml is picked up.
    """
    monkeypatch.delenv("RTLIB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    s = cfg.load(workspace=tmp_path / "ws")
    cfg.ensure_workspace(s)
    return s
