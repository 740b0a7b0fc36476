"""A lost or read-only job store (issue 15, findings 5 and 7, the store part).

A store deleted under a running agent stops that agent with an error (it used to write on into the
unlinked file and exit 0); a new store never delivers into a results folder an older store marked
as its own (a new job 1 used to replace the old job 1's results); a read-only store is one clear
line at submit and at agent start (it used to be a 74-line SQL traceback and an endless
"unreachable" loop). The read-only store is a real PostgreSQL role with SELECT only: root ignores
a file's permission bits, a database role's privileges it cannot.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rtlib import jobs
from rtlib.runtime import open_runtime
from rtlib.states import State
from rtlib.store import JobStore

from helpers import make_settings, produce, wait_for

RTLIB = [sys.executable, "-m", "rtlib.cli"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RTLIB_CONFIG": "", "COLUMNS": "1000", **extra}  # COLUMNS: rich wraps nothing


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_store_deleted_under_a_running_agent_stops_it_with_an_error(tmp_path):
    ws = tmp_path / "ws"
    settings = make_settings(ws)
    db = Path(settings.store.removeprefix("sqlite:///"))
    store = JobStore(settings.store)
    (ep, rel), = produce(settings, 1)
    job = jobs.submit(store, settings, "noop", source_endpoint=ep, inputs=[rel])
    agent = subprocess.Popen([*RTLIB, "agent", "--workspace", str(ws), "--no-progress"], stderr=subprocess.PIPE, text=True, env=_env())
    try:
        wait_for(lambda: store.get_job(job).state == State.DONE, "the first job to be done")
        store.close()
        for path in db.parent.glob(db.name + "*"):  # rm rtlib.db*, as an operator would
            path.unlink()
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        running = agent.poll() is None
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    err = agent.stderr.read()
    assert not running, "the agent must stop when its store file is gone, not go on into the unlinked file"
    assert agent.returncode != 0, err[-2000:]
    assert str(db) in err and ("deleted" in err or "vanished" in err), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert not db.exists(), "the agent must not create a fresh, empty store where the old one was"


def test_new_store_never_overwrites_results_of_the_old_one(tmp_path):
    settings = make_settings(tmp_path / "ws")
    db = Path(settings.store.removeprefix("sqlite:///"))
    (ep, rel), (_, rel2), (_, rel3) = produce(settings, 3)
    dest = {"dest_endpoint": "aps", "params": {"num_q_bins": 16}}

    rt = open_runtime(settings)
    old_store_id = getattr(rt.store, "store_id", None)
    first = jobs.submit(rt.store, settings, "saxs", source_endpoint=ep, inputs=[rel], **dest)
    rt.agent("local").run(until_idle=True, max_seconds=120)
    assert rt.store.get_job(first).state == State.DONE
    results = Path(settings.endpoints["aps"].root) / "results"
    delivered = _digests(results / f"saxs/job-{first}")
    rt.close()

    for path in db.parent.glob(db.name + "*"):  # the store is lost; a new, empty one is made at the same place
        path.unlink()
    rt = open_runtime(settings)
    try:
        again = jobs.submit(rt.store, settings, "saxs", source_endpoint="als", inputs=[rel2], **dest)
        elsewhere = jobs.submit(rt.store, settings, "saxs", source_endpoint="nsls2", inputs=[rel3], dest_endpoint="nsls2",
                                params={"num_q_bins": 16})
        assert again == first, "ids restart with a new store: this is what made the overwrite possible"
        rt.agent("local").run(until_idle=True, max_seconds=120)
        job = rt.store.get_job(again)
        assert job.state == State.FAILED, (job.state, job.error)
        assert _digests(results / f"saxs/job-{first}") == delivered, "the old store's results are untouched"
        assert old_store_id and old_store_id in job.error and rt.store.store_id in job.error, job.error
        assert "aps:results" in job.error and "retry" in job.error, job.error
        marker = json.loads((results / ".rtlib-store.json").read_text())
        assert marker["rtlib_store_id"] == old_store_id
        # a results folder no other store marked is the new store's: it delivers there as before
        assert rt.store.get_job(elsewhere).state == State.DONE, rt.store.get_job(elsewhere).error
    finally:
        rt.close()


@pytest.fixture
def read_only_url(postgres_server):
    """A PostgreSQL store with one job, and the URL of a role that may only SELECT from it (with a password)."""
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    role = f"ro_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    owner = JobStore(url)  # the tables, as the store's owner makes them
    owner.close()
    with psycopg.connect(postgres_server.conninfo(name), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'S3cretPw'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    yield f"postgresql+psycopg://{role}:S3cretPw@127.0.0.1:{postgres_server.port}/{name}", name
    postgres_server.drop_database(name)
    with psycopg.connect(postgres_server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_read_only_store_is_one_clear_line_at_submit_and_at_agent_start(tmp_path, read_only_url):
    url, dbname = read_only_url
    ws = tmp_path / "ws"
    make_settings(ws)
    env = _env(RTLIB_STORE_URL=url)

    submit = subprocess.run([*RTLIB, "submit", "noop", "-i", "aps:raw/scan.h5", "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=120, env=env)
    out = submit.stdout + submit.stderr
    assert submit.returncode != 0 and "submitted" not in out
    assert "Traceback" not in out and "sqlalchemy" not in out.lower(), out[-3000:]
    lines = [line for line in submit.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only" in lines[0] and dbname in lines[0], submit.stderr[-3000:]
    assert "S3cretPw" not in out

    started = time.monotonic()
    try:
        agent = subprocess.run([*RTLIB, "agent", "--workspace", str(ws), "--no-progress", "--store-wait-s", "5", "--max-seconds", "30"],
                               capture_output=True, text=True, timeout=90, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the agent kept going on a read-only store: {str(exc.stderr)[-2000:]}") from None
    err = agent.stderr
    assert agent.returncode != 0, err[-3000:]
    assert time.monotonic() - started < 60
    assert "read-only" in err and dbname in err and "unreachable" not in err, err[-3000:]
    assert "Traceback" not in err and "S3cretPw" not in err + agent.stdout, err[-3000:]
