"""The job store, against SQLite and a real PostgreSQL server (the `store` fixture runs each test on both)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from rtlib.errors import IllegalTransition, JobNotFound
from rtlib.states import State
from rtlib.store import JobSpec, JobStore, _redact_url

S = State


def spec(**kw) -> JobSpec:
    base = dict(workload="noop", source_endpoint="aps", inputs=["raw/a.h5"], dest_endpoint="aps", output_path="results/a")
    return JobSpec(**(base | kw))


def advance(store: JobStore, job_id: int, *states: State, owner: str | None = None) -> None:
    """Walk a job along `states` (starting from its current state), asserting each step commits."""
    current = store.get_job(job_id).state
    for new in states:
        assert store.transition(job_id, current, new, f"to {new}", owner=owner)
        current = new


# -- create / get / list ----------------------------------------------------
def test_create_and_get_round_trips_every_field(store):
    before = time.time()
    params = {"num_q_bins": 32, "mask": [1, 2, 3], "nested": {"a": None, "b": 1.5}}
    job_id = store.create_job(
        spec(
            params=params, beamline="aps-demo", inputs=["raw/a.h5", "raw/b.h5"], site="local",
            queue="demand", account="rtlib::aps", priority=7, max_attempts=5,
        )
    )  # fmt: skip
    job = store.get_job(job_id)
    assert job.id == job_id
    assert (job.workload, job.params, job.beamline) == ("noop", params, "aps-demo")
    assert (job.source_endpoint, job.inputs, job.dest_endpoint, job.output_path) == ("aps", ["raw/a.h5", "raw/b.h5"], "aps", "results/a")
    assert (job.site, job.queue, job.account, job.priority) == ("local", "demand", "rtlib::aps", 7)
    assert job.state is S.CREATED
    assert (job.attempts, job.max_attempts, job.progress) == (0, 5, 0.0)
    assert job.lease_owner is None and job.lease_expires is None
    assert job.summary is None and job.error is None
    assert before <= job.created_at == job.updated_at <= time.time()
    json.dumps(job.to_dict())  # plain data, for the REST API and the CLI
    assert job.to_dict()["state"] == "CREATED"


def test_creation_is_the_first_event(store):
    job_id = store.create_job(spec(), reason="submitted from a test")
    (ev,) = store.events(job_id)
    assert (ev.job_id, ev.from_state, ev.to_state, ev.reason) == (job_id, None, "CREATED", "submitted from a test")
    assert ev.timestamp == store.get_job(job_id).created_at


def test_ids_are_distinct_and_increasing(store):
    ids = [store.create_job(spec()) for _ in range(5)]
    assert ids == sorted(set(ids))


def test_unknown_job_raises_job_not_found_with_a_hint(store):
    store.create_job(spec())
    with pytest.raises(JobNotFound) as info:
        store.get_job(424242)
    assert "424242" in str(info.value)
    assert "rtlib status" in str(info.value)


def test_list_filters(store):
    a = store.create_job(spec(workload="saxs", beamline="aps-demo"))
    b = store.create_job(spec(workload="noop", beamline="als-demo", site="polaris"))
    c = store.create_job(spec(workload="saxs", beamline="als-demo"))
    advance(store, c, S.STAGING_IN)

    def ids(**kw):
        return [j.id for j in store.list_jobs(**kw)]

    assert ids() == [a, b, c]
    assert ids(workload="saxs") == [a, c]
    assert ids(beamline="als-demo") == [b, c]
    assert ids(site="polaris") == [b]
    assert ids(states=[S.CREATED]) == [a, b]
    assert ids(states=["STAGING_IN"]) == [c]
    assert ids(states=[]) == []
    assert ids(workload="saxs", beamline="als-demo") == [c]
    assert ids(ids=[c, a]) == [a, c]
    assert ids(workload="nothing-like-it") == []


def test_list_by_lease_owner(store):
    a, b = store.create_job(spec()), store.create_job(spec())
    (claimed,) = store.claim("agent-1", site="local", lease_s=60, limit=1)
    assert [j.id for j in store.list_jobs(owner="agent-1")] == [claimed.id] == [a]
    assert store.list_jobs(owner="agent-2") == []
    assert b not in [j.id for j in store.list_jobs(owner="agent-1")]


def test_pagination_covers_every_job_once_in_id_order(store):
    ids = [store.create_job(spec()) for _ in range(23)]
    pages = [store.list_jobs(limit=5, offset=o) for o in range(0, 30, 5)]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3, 0]
    assert [j.id for p in pages for j in p] == ids
    assert [j.id for j in store.list_jobs(offset=20)] == ids[20:]


def test_count_by_state(store):
    assert store.count_by_state() == {}
    ids = [store.create_job(spec()) for _ in range(4)]
    store.create_job(spec(site="polaris"))
    advance(store, ids[0], S.STAGING_IN, S.STAGED_IN)
    advance(store, ids[1], S.STAGING_IN)
    advance(store, ids[2], S.CANCELLED)
    assert store.count_by_state() == {"CREATED": 2, "STAGING_IN": 1, "STAGED_IN": 1, "CANCELLED": 1}
    assert store.count_by_state(site="polaris") == {"CREATED": 1}


# -- transitions --------------------------------------------------------------
def test_transition_moves_the_job_and_records_one_event(store):
    job_id = store.create_job(spec())
    before = time.time()
    assert store.transition(job_id, S.CREATED, S.STAGING_IN, "planned 1 file")
    after = time.time()
    job = store.get_job(job_id)
    assert job.state is S.STAGING_IN
    assert before <= job.updated_at <= after
    events = store.events(job_id)
    assert len(events) == 2
    ev = events[-1]
    assert (ev.from_state, ev.to_state, ev.reason, ev.agent) == ("CREATED", "STAGING_IN", "planned 1 file", None)
    assert before <= ev.timestamp <= after


def test_every_step_of_a_full_run_is_one_event(store):
    job_id = store.create_job(spec())
    path = [S.STAGING_IN, S.STAGED_IN, S.RUNNING, S.PREEMPTED, S.STAGED_IN, S.RUNNING, S.RUN_DONE, S.STAGING_OUT, S.DONE]
    advance(store, job_id, *path)
    events = store.events(job_id)
    assert [e.to_state for e in events] == ["CREATED", *[s.value for s in path]]
    assert [e.from_state for e in events] == [None, "CREATED", *[s.value for s in path[:-1]]]
    assert [e.reason for e in events[1:]] == [f"to {s}" for s in path]
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    assert store.get_job(job_id).state is S.DONE


def test_transition_accepts_state_names(store):
    job_id = store.create_job(spec())
    assert store.transition(job_id, "CREATED", "STAGING_IN", "strings")
    assert store.get_job(job_id).state is S.STAGING_IN


def test_transition_from_a_stale_state_is_refused_without_an_event(store):
    job_id = store.create_job(spec())
    advance(store, job_id, S.STAGING_IN)
    n_events = len(store.events())
    updated = store.get_job(job_id).updated_at
    # another actor already moved it: CREATED -> CANCELLED is legal, but the job is no longer CREATED
    assert store.transition(job_id, S.CREATED, S.CANCELLED, "too late") is False
    job = store.get_job(job_id)
    assert job.state is S.STAGING_IN and job.updated_at == updated
    assert len(store.events()) == n_events


def test_transition_of_a_missing_job_returns_false(store):
    assert store.transition(999, S.CREATED, S.STAGING_IN, "nobody") is False
    assert store.events() == []


def test_transition_by_a_non_owner_is_refused_without_an_event(store):
    job_id = store.create_job(spec())
    store.claim("agent-1", site="local", lease_s=60, limit=1)
    n_events = len(store.events(job_id))
    assert store.transition(job_id, S.CREATED, S.STAGING_IN, "not mine", owner="agent-2") is False
    assert store.get_job(job_id).state is S.CREATED
    assert len(store.events(job_id)) == n_events
    assert store.transition(job_id, S.CREATED, S.STAGING_IN, "mine", owner="agent-1") is True
    ev = store.events(job_id)[-1]
    assert (ev.to_state, ev.agent) == ("STAGING_IN", "agent-1")


def test_owner_check_refuses_an_unleased_job(store):
    job_id = store.create_job(spec())
    assert store.transition(job_id, S.CREATED, S.STAGING_IN, "x", owner="agent-1") is False
    assert store.get_job(job_id).state is S.CREATED


@pytest.mark.parametrize(
    "current,new",
    [(S.CREATED, S.RUNNING), (S.CREATED, S.DONE), (S.CREATED, S.PREEMPTED), (S.CREATED, S.CREATED)],
)
def test_illegal_transition_raises_and_writes_nothing(store, current, new):
    job_id = store.create_job(spec())
    before = store.get_job(job_id)
    with pytest.raises(IllegalTransition) as info:
        store.transition(job_id, current, new, "should not happen")
    assert current.value in str(info.value) and new.value in str(info.value)
    assert store.get_job(job_id) == before
    assert len(store.events(job_id)) == 1


def test_illegal_transition_raises_even_when_the_job_is_elsewhere(store):
    # the table is checked before the database: a forbidden move is a programming error, not a race
    job_id = store.create_job(spec())
    advance(store, job_id, S.STAGING_IN, S.STAGED_IN, S.RUNNING, S.RUN_DONE, S.STAGING_OUT, S.DONE)
    with pytest.raises(IllegalTransition):
        store.transition(job_id, S.DONE, S.CREATED, "resurrect")
    assert store.get_job(job_id).state is S.DONE


def test_transition_sets_fields_and_can_release_the_lease(store):
    job_id = store.create_job(spec())
    store.claim("agent-1", site="local", lease_s=60, limit=1)
    advance(store, job_id, S.STAGING_IN, S.STAGED_IN, owner="agent-1")
    assert store.transition(job_id, S.STAGED_IN, S.RUNNING, "started", owner="agent-1", attempts=1)
    assert store.transition(
        job_id, S.RUNNING, S.FAILED, "bad input", owner="agent-1", release=True, error="input truncated: re-export the scan"
    )
    job = store.get_job(job_id)
    assert job.state is S.FAILED and job.attempts == 1
    assert job.error == "input truncated: re-export the scan"
    assert job.lease_owner is None and job.lease_expires is None


def test_failed_job_can_be_retried_from_created(store):
    job_id = store.create_job(spec())
    advance(store, job_id, S.STAGING_IN, S.FAILED, S.CREATED)
    assert store.get_job(job_id).state is S.CREATED


def test_update_job_only_for_the_lease_owner(store):
    job_id = store.create_job(spec())
    store.claim("agent-1", site="local", lease_s=60, limit=1)
    assert store.update_job(job_id, owner="agent-2", progress=0.5) is False
    assert store.get_job(job_id).progress == 0.0
    assert store.update_job(job_id, owner="agent-1", progress=0.5, summary={"frames": 10}) is True
    job = store.get_job(job_id)
    assert job.progress == 0.5 and job.summary == {"frames": 10}
    assert store.update_job(job_id, progress=0.75) is True  # no owner given: unconditional
    assert store.update_job(12345, progress=0.1) is False
    assert len(store.events(job_id)) == 1  # not a state change: no event


# -- leases ---------------------------------------------------------------------
def test_claim_takes_free_active_jobs_of_its_site_highest_priority_first(store):
    low = store.create_job(spec(priority=0))
    high = store.create_job(spec(priority=10))
    mid = store.create_job(spec(priority=5))
    store.create_job(spec(site="polaris", priority=100))
    done = store.create_job(spec(priority=50))
    advance(store, done, S.CANCELLED)

    before = time.time()
    got = store.claim("agent-1", site="local", lease_s=30, limit=2)
    assert [j.id for j in got] == [high, mid]
    for j in got:
        assert j.lease_owner == "agent-1"
        assert before + 30 <= j.lease_expires <= time.time() + 30
    # the rest, then nothing: the cancelled job and the other site's job are never claimed
    assert [j.id for j in store.claim("agent-2", site="local", lease_s=30, limit=10)] == [low]
    assert store.claim("agent-3", site="local", lease_s=30, limit=10) == []
    assert store.get_job(done).lease_owner is None


def test_claim_respects_the_states_argument(store):
    a = store.create_job(spec())
    b = store.create_job(spec())
    advance(store, b, S.STAGING_IN)
    assert [j.id for j in store.claim("agent-1", site="local", lease_s=30, limit=10, states=[S.STAGING_IN])] == [b]
    assert store.get_job(a).lease_owner is None


def test_claim_does_not_take_a_live_lease(store):
    job_id = store.create_job(spec())
    store.claim("agent-1", site="local", lease_s=60, limit=10)
    assert store.claim("agent-2", site="local", lease_s=60, limit=10) == []
    assert store.get_job(job_id).lease_owner == "agent-1"


def test_an_expired_lease_can_be_taken_over(store):
    job_id = store.create_job(spec())
    store.claim("dead-agent", site="local", lease_s=60, limit=10)
    advance(store, job_id, S.STAGING_IN, owner="dead-agent")
    store.update_job(job_id, lease_expires=time.time() - 1)  # its heartbeat stopped a while ago

    (job,) = store.claim("new-agent", site="local", lease_s=60, limit=10)
    assert (job.id, job.lease_owner, job.state) == (job_id, "new-agent", S.STAGING_IN)
    # the dead agent, should it wake up, can no longer move the job or extend the lease
    assert store.transition(job_id, S.STAGING_IN, S.STAGED_IN, "zombie", owner="dead-agent") is False
    assert store.heartbeat("dead-agent", 60) == 0
    assert store.transition(job_id, S.STAGING_IN, S.STAGED_IN, "resumed", owner="new-agent") is True


def test_an_expiring_lease_is_taken_over_in_real_time(store):
    job_id = store.create_job(spec())
    store.claim("slow-agent", site="local", lease_s=0.2, limit=10)
    assert store.claim("new-agent", site="local", lease_s=60, limit=10) == []
    time.sleep(0.3)
    assert [j.id for j in store.claim("new-agent", site="local", lease_s=60, limit=10)] == [job_id]


def test_heartbeat_extends_every_lease_of_its_owner(store):
    ids = [store.create_job(spec()) for _ in range(3)]
    store.claim("agent-1", site="local", lease_s=5, limit=2)
    store.claim("agent-2", site="local", lease_s=5, limit=1)
    t = time.time()
    assert store.heartbeat("agent-1", 300) == 2
    for j in store.list_jobs(owner="agent-1"):
        assert j.lease_expires >= t + 300
    assert store.get_job(ids[2]).lease_expires < t + 300
    assert store.heartbeat("nobody", 300) == 0


def test_release(store):
    ids = [store.create_job(spec()) for _ in range(3)]
    store.claim("agent-1", site="local", lease_s=60, limit=3)
    store.release("agent-2")  # not its jobs: no effect
    assert sorted(store.lease_owners()) == ["agent-1"]
    store.release("agent-1", [ids[0]])
    assert store.get_job(ids[0]).lease_owner is None
    assert store.get_job(ids[0]).lease_expires is None
    assert store.get_job(ids[1]).lease_owner == "agent-1"
    store.release("agent-1")
    assert store.lease_owners() == []
    assert [j.id for j in store.claim("agent-2", site="local", lease_s=60, limit=10)] == ids


def test_lease_owners_by_site(store):
    store.create_job(spec())
    store.create_job(spec(site="polaris"))
    store.claim("local-agent", site="local", lease_s=60, limit=10)
    store.claim("polaris-agent", site="polaris", lease_s=60, limit=10)
    assert sorted(store.lease_owners()) == ["local-agent", "polaris-agent"]
    assert store.lease_owners(site="polaris") == ["polaris-agent"]


@pytest.mark.parametrize("shared_engine", [True, False], ids=["one-store", "store-per-agent"])
def test_concurrent_claims_never_give_a_job_to_two_owners(store, store_url, shared_engine):
    n_jobs, n_agents = 40, 4
    ids = [store.create_job(spec(priority=i % 3)) for i in range(n_jobs)]
    stores = [store if shared_engine else JobStore(store_url) for _ in range(n_agents)]
    start = threading.Barrier(n_agents)
    claimed: dict[str, list[int]] = {f"agent-{i}": [] for i in range(n_agents)}
    misleased: list[tuple[str, int, str | None]] = []  # (claimer, job, owner read back)
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        owner, s = f"agent-{i}", stores[i]
        try:
            start.wait()
            idle = 0
            while idle < 3:  # a few empty rounds: the others may still be committing
                got = s.claim(owner, site="local", lease_s=600, limit=3)
                claimed[owner].extend(j.id for j in got)
                misleased.extend((owner, j.id, j.lease_owner) for j in got if j.lease_owner != owner)
                idle = 0 if got else idle + 1
        except BaseException as err:  # surfaced below, with its traceback
            errors.append(err)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n_agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert misleased == [], "claim returned jobs leased to someone else"
        everything = [i for got in claimed.values() for i in got]
        dupes = [i for i, n in Counter(everything).items() if n > 1]
        assert dupes == [], f"jobs claimed twice: {dupes}"
        assert sorted(everything) == ids
        for owner, got in claimed.items():  # the database agrees with what each agent was told
            assert sorted(j.id for j in store.list_jobs(owner=owner)) == sorted(got)
    finally:
        for s in stores:
            if s is not store:
                s.close()


def test_concurrent_transitions_of_one_job_have_one_winner(store, store_url):
    job_id = store.create_job(spec())
    n = 6
    stores = [JobStore(store_url) for _ in range(n)]
    start = threading.Barrier(n)
    results: list[bool] = []

    def mover(s: JobStore) -> None:
        start.wait()
        results.append(s.transition(job_id, S.CREATED, S.STAGING_IN, "race"))

    threads = [threading.Thread(target=mover, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert sorted(results) == [False] * (n - 1) + [True]
    assert [e.to_state for e in store.events(job_id)] == ["CREATED", "STAGING_IN"]


# -- transfer items -------------------------------------------------------------
def item(name: str, size: int = 100, **kw) -> dict:
    return dict(src_endpoint="aps", src_path=f"raw/{name}", dst_endpoint="alcf", dst_path=f"jobs/1/{name}", size_bytes=size) | kw


def test_add_items_and_read_them_back(store):
    job_id = store.create_job(spec())
    other = store.create_job(spec())
    store.add_items(job_id, "in", [item("a.h5", 10), item("b.h5", 20 * 10**9)])  # > 2**31: BigInteger
    store.add_items(job_id, "out", [item("result.h5", 5, src_endpoint="alcf", dst_endpoint="aps")])
    store.add_items(other, "in", [item("c.h5")])

    ins = store.items(job_id, "in")
    assert [(i.src_path, i.size_bytes) for i in ins] == [("raw/a.h5", 10), ("raw/b.h5", 20 * 10**9)]
    for i in ins:
        assert (i.job_id, i.direction, i.state, i.attempts) == (job_id, "in", "pending", 0)
        assert i.checksum is None and i.error is None and i.started_at is None and i.finished_at is None
    assert [i.dst_endpoint for i in store.items(job_id, "out")] == ["aps"]
    assert len(store.items(job_id)) == 3
    assert len(store.items()) == 4
    assert len(store.items(direction="in")) == 3
    assert store.items(job_id, "in", state="done") == []


def test_add_items_replaces_only_the_same_stage(store):
    job_id = store.create_job(spec())
    store.add_items(job_id, "in", [item("a.h5"), item("b.h5")])
    store.add_items(job_id, "out", [item("r.h5")])
    store.add_items(job_id, "in", [item("c.h5")])  # a re-plan after a restart
    assert [i.src_path for i in store.items(job_id, "in")] == ["raw/c.h5"]
    assert [i.src_path for i in store.items(job_id, "out")] == ["raw/r.h5"]
    store.add_items(job_id, "in", [])
    assert store.items(job_id, "in") == []


def test_update_item(store):
    job_id = store.create_job(spec())
    store.add_items(job_id, "in", [item("a.h5"), item("b.h5")])
    first, second = store.items(job_id, "in")
    t = time.time()
    store.update_item(first.id, state="done", checksum="ab" * 32, attempts=2, started_at=t, finished_at=t + 1.5)
    store.update_item(second.id, state="failed", error="permission denied on raw/b.h5", attempts=6)
    done = store.items(job_id, state="done")
    assert len(done) == 1 and done[0].id == first.id
    assert (done[0].checksum, done[0].attempts, done[0].started_at, done[0].finished_at) == ("ab" * 32, 2, t, t + 1.5)
    (failed,) = store.items(job_id, state="failed")
    assert failed.error == "permission denied on raw/b.h5"


# -- events ---------------------------------------------------------------------
def test_events_after_id_and_limit(store):
    a, b = store.create_job(spec()), store.create_job(spec())
    advance(store, a, S.STAGING_IN)
    advance(store, b, S.STAGING_IN, S.STAGED_IN)
    everything = store.events()
    assert len(everything) == 5
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert store.events(after_id=everything[2].id) == everything[3:]
    assert store.events(limit=2) == everything[:2]
    assert [e.to_state for e in store.events(b)] == ["CREATED", "STAGING_IN", "STAGED_IN"]
    assert store.events(b, after_id=everything[-1].id) == []


# -- durability and backends ------------------------------------------------------
def test_a_second_store_on_the_same_url_sees_everything(store, store_url):
    job_id = store.create_job(spec(params={"x": 1}))
    advance(store, job_id, S.STAGING_IN)
    store.add_items(job_id, "in", [item("a.h5")])
    again = JobStore(store_url)  # create_all on an existing schema is a no-op
    try:
        assert again.get_job(job_id) == store.get_job(job_id)
        assert again.events(job_id) == store.events(job_id)
        assert again.items(job_id) == store.items(job_id)
    finally:
        again.close()


def test_many_stores_can_open_a_fresh_database_at_once(store_url):
    # agents, the CLI and the Jupyter server starting together on a new workspace
    n = 6
    start = threading.Barrier(n)
    opened: list[JobStore] = []
    errors: list[str] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(JobStore(store_url))
        except Exception as err:
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")

    threads = [threading.Thread(target=open_store) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        job_id = opened[0].create_job(spec())
        assert all(s.get_job(job_id).state is S.CREATED for s in opened)
    finally:
        for s in opened:
            s.close()


def test_sqlite_store_is_in_wal_mode(tmp_path):
    path = tmp_path / "wal.db"
    store = JobStore(f"sqlite:///{path}")
    try:
        store.create_job(spec())
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        store.close()
    raw = sqlite3.connect(path)  # WAL is a property of the file, not only of our connections
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


@pytest.mark.postgres
def test_postgres_fixture_is_a_real_server(postgres_server):
    store = JobStore(postgres_server.url)
    try:
        with store.engine.connect() as conn:
            assert "PostgreSQL" in conn.execute(sa.text("select version()")).scalar()
            assert conn.dialect.name == "postgresql"
    finally:
        store.close()


@pytest.mark.postgres
def test_store_reconnects_after_the_server_restarts(postgres_server):
    name = f"restart_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    store = JobStore(url)
    try:
        job_id = store.create_job(spec())
        store.get_job(job_id)  # a pooled connection now exists
        postgres_server.restart()  # every connection is dropped
        advance(store, job_id, S.STAGING_IN)  # pool_pre_ping replaces the dead connection
        assert store.get_job(job_id).state is S.STAGING_IN
    finally:
        store.close()
        postgres_server.drop_database(name)


def test_repr_hides_the_password():
    assert "s3cret" not in _redact_url("postgresql+psycopg://rtlib:s3cret@db.example.org/rtlib")
    assert "rtlib@db.example.org" in _redact_url("postgresql+psycopg://rtlib@db.example.org/rtlib")


def test_missing_postgres_binaries_fail_with_the_install_command(monkeypatch):
    import pgserver

    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    with pytest.raises(pgserver.PostgresUnavailable, match="apt-get install postgresql"):
        pgserver.PostgresServer()
