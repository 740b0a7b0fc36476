"""The durable job store: jobs, their transfer items, and an append-only event log.

SQLite (WAL) by default, PostgreSQL by URL. Every state change is a
compare-and-set on (state, lease owner) committed together with its event
row, so two agents can never both make the same step, and a restarted agent
finds each job exactly where the last committed step left it.

Each store has an identity: a random id recorded when its tables are made
(results folders record it, so a new store never overwrites an old store's
results), and, for SQLite, the file it was opened on: `check_alive` tells
a process whose file was deleted or replaced under it, instead of letting
it write on into an unlinked file. A store that refuses writes raises
StoreReadOnly, in one sentence, instead of a driver traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from . import store_url
from .errors import JobNotFound, StoreLost, StoreReadOnly
from .states import ACTIVE, State, check_transition

metadata = sa.MetaData()

jobs_t = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workload", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("beamline", sa.String(64)),
    sa.Column("source_endpoint", sa.String(64), nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("dest_endpoint", sa.String(64), nullable=False),
    sa.Column("output_path", sa.String(1024), nullable=False),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64)),
    sa.Column("account", sa.String(128)),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("summary", sa.JSON),
    sa.Column("error", sa.Text),
)

items_t = sa.Table(
    "transfer_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("direction", sa.String(3), nullable=False),  # "in" | "out"
    sa.Column("src_endpoint", sa.String(64), nullable=False),
    sa.Column("src_path", sa.String(1024), nullable=False),
    sa.Column("dst_endpoint", sa.String(64), nullable=False),
    sa.Column("dst_path", sa.String(1024), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("checksum", sa.String(128)),
    sa.Column("state", sa.String(8), nullable=False, default="pending"),  # pending | done | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
)

events_t = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("agent", sa.String(128)),
)

# Node-hours actually used: one row per dask worker (one batch-job node) from when it joined the
# scheduler to when it left. New tables only (no new columns): old SQLite files gain them on open.
usage_t = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(128), nullable=False, index=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("batch_job", sa.String(64)),
    sa.Column("worker", sa.String(128)),
    sa.Column("nodes", sa.Integer, nullable=False, default=1),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=False),
    sa.Column("node_hours", sa.Float, nullable=False),
)

# Budgets changed at run time (`rtlib accounts --set`); they override the config's node_hours.
budgets_t = sa.Table(
    "budgets",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("node_hours", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# One row per key; "store_id" is the store's random identity, written once with the tables.
meta_t = sa.Table(
    "rtlib_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class Job:
    id: int
    workload: str
    params: dict[str, Any]
    beamline: str | None
    source_endpoint: str
    inputs: list[str]
    dest_endpoint: str
    output_path: str
    site: str
    queue: str | None
    account: str | None
    priority: int
    state: State
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: float | None
    created_at: float
    updated_at: float
    progress: float
    summary: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: sa.Row) -> "Job":
        data = dict(row._mapping)
        data["state"] = State(data["state"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class TransferItem:
    id: int
    job_id: int
    direction: str
    src_endpoint: str
    src_path: str
    dst_endpoint: str
    dst_path: str
    size_bytes: int
    checksum: str | None
    state: str
    attempts: int
    error: str | None
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sa.Row) -> "TransferItem":
        return cls(**dict(row._mapping))


@dataclass(frozen=True)
class Event:
    id: int
    job_id: int
    timestamp: float
    from_state: str | None
    to_state: str
    reason: str
    agent: str | None

    @classmethod
    def from_row(cls, row: sa.Row) -> "Event":
        return cls(**dict(row._mapping))


@dataclass
class JobSpec:
    """What a user submits. Parameters must already be validated by the workload."""

    workload: str
    source_endpoint: str
    inputs: list[str]
    dest_endpoint: str
    output_path: str
    site: str = "local"
    params: dict[str, Any] = field(default_factory=dict)
    beamline: str | None = None
    queue: str | None = None
    account: str | None = None
    priority: int = 0
    max_attempts: int = 3


_SCHEMA_LOCK_KEY = 0x72746C6962  # "rtlib": the PostgreSQL advisory lock held while creating tables


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # Switching a fresh file to WAL can answer "database is locked" at once, without waiting
    # for the busy timeout, while another process does the same: retry for a while.
    for attempt in range(100):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == 99:
                raise
            time.sleep(0.02)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _redact_url(url: str) -> str:
    return store_url.redact(url)  # the user info's password and ?password=, ?sslpassword= ... (psycopg reads those too)


def _sqlite_file(engine: sa.Engine) -> str | None:
    """The absolute path of a SQLite store's file; None for other databases and in-memory SQLite."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _refuses_writes(err: BaseException | None) -> bool:
    """SQLite's READONLY codes (a read-only file or mount); PostgreSQL's insufficient privilege or read-only transaction."""
    if isinstance(err, sqlite3.Error):
        return (getattr(err, "sqlite_errorname", "") or "").startswith("SQLITE_READONLY") or "readonly database" in str(err)
    return getattr(err, "sqlstate", None) in ("42501", "25006")


class JobStore:
    """All reads and writes of jobs go through here."""

    def __init__(self, url: str):
        store_url.check(url)  # refused without echoing it: an unescaped '@' would put the password into the host name
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        self.read_only = False  # True when the store answers reads but refuses writes
        self.store_id: str | None = None
        self._file = _sqlite_file(self.engine)
        self._file_identity: tuple[int, int] | None = None
        if url.startswith("sqlite"):
            sa_event.listen(self.engine, "connect", _sqlite_pragmas)
            sa_event.listen(self.engine, "do_connect", self._sqlite_no_create)
        sa_event.listen(self.engine, "handle_error", self._explain_error)
        with store_url.scrubbed(url):  # the first connection: a driver's message must not carry the password
            self._create_schema()
        if self._file is not None:
            st = os.stat(self._file)
            self._file_identity = (st.st_dev, st.st_ino)

    def __repr__(self) -> str:
        return f"JobStore({_redact_url(self.url)!r})"

    def _sqlite_no_create(self, _dialect, _conn_rec, cargs, cparams) -> None:
        # Once the store exists, a new connection must find that file: SQLite would otherwise create an
        # empty one where a deleted store was, and this process would go on in a fresh store.
        if self._file_identity is not None and cargs:
            cargs[0] = f"file:{urllib.parse.quote(self._file)}?mode=rw"
            cparams["uri"] = True

    def _explain_error(self, context) -> None:
        err = context.original_exception
        if self._file_identity is not None:
            self.check_alive()  # a vanished file explains any error that follows it
        if _refuses_writes(err):
            raise self._read_only_error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None

    def _read_only_error(self, cause: str) -> StoreReadOnly:
        return StoreReadOnly(
            f"job store {_redact_url(self.url)} is read-only for this process ({cause}); give this user write access to it "
            "(the file and its folder for SQLite; INSERT, UPDATE, DELETE on its tables for PostgreSQL), or set store_url "
            "($RTLIB_STORE_URL) to a store it may write"
        )

    def _create_schema(self) -> None:
        # Agents, the CLI and the Jupyter server may open a fresh database at the same
        # moment: without a lock, all but one die on "table jobs already exists".
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock; others wait (busy_timeout)
                elif conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                metadata.create_all(conn)
                self.store_id = self._read_store_id(conn)
                if self.store_id is None:
                    self.store_id = uuid.uuid4().hex
                    conn.execute(meta_t.insert().values(key="store_id", value=self.store_id))
                conn.commit()
        except StoreReadOnly:
            # readers (`rtlib status`, the REST API) may still use a complete store; every write says it is read-only
            with self.engine.connect() as conn:
                present = {t.name for t in metadata.sorted_tables if sa.inspect(conn).has_table(t.name)}
                if present | {meta_t.name} != {t.name for t in metadata.sorted_tables}:
                    raise
                self.store_id = self._read_store_id(conn) if meta_t.name in present else None  # a store older than ids
            self.read_only = True

    @staticmethod
    def _read_store_id(conn: sa.Connection) -> str | None:
        return conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == "store_id")).scalar()

    # -- identity ---------------------------------------------------------
    def check_alive(self) -> None:
        """Raise StoreLost when this SQLite store's file was deleted, moved or replaced since it was opened."""
        if self._file_identity is None:
            return
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            what = "was deleted or moved"
        else:
            if (st.st_dev, st.st_ino) == self._file_identity:
                return
            what = "was replaced by another file"
        raise StoreLost(
            f"the job store file {self._file} {what} while this process used it; it stops rather than record jobs into a "
            "file no one will read. Restore the store from a backup (or move it back), then start it again; a new, empty "
            "store restarts job ids at 1 and may not deliver into results folders of the old one"
        )

    def verify_identity(self) -> None:
        """Raise StoreLost when the database now answering is another store (dropped and created again, restored elsewhere)."""
        self.check_alive()
        with self.engine.connect() as conn:
            current = self._read_store_id(conn)
        if current != self.store_id:
            raise StoreLost(
                f"job store {_redact_url(self.url)} is now another store (id {current}, was {self.store_id}): it was "
                "dropped and made again under this process; restore the old one, or restart the process on the new store"
            )

    def require_writable(self) -> None:
        """Raise StoreReadOnly now, before any work, when this store refuses writes (probed, rolled back)."""
        if self.read_only:
            raise self._read_only_error("it refused to record anything when opened")
        with self.engine.connect() as conn:
            conn.execute(jobs_t.update().where(jobs_t.c.id == -1).values(updated_at=jobs_t.c.updated_at))
            conn.rollback()

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs -------------------------------------------------------------
    def create_job(self, spec: JobSpec, reason: str = "submitted") -> int:
        now = time.time()
        with self.engine.begin() as conn:
            job_id = conn.execute(
                jobs_t.insert().values(
                    workload=spec.workload,
                    params=spec.params,
                    beamline=spec.beamline,
                    source_endpoint=spec.source_endpoint,
                    inputs=list(spec.inputs),
                    dest_endpoint=spec.dest_endpoint,
                    output_path=spec.output_path,
                    site=spec.site,
                    queue=spec.queue,
                    account=spec.account,
                    priority=spec.priority,
                    state=State.CREATED.value,
                    attempts=0,
                    max_attempts=spec.max_attempts,
                    created_at=now,
                    updated_at=now,
                    progress=0.0,
                )
            ).inserted_primary_key[0]
            conn.execute(events_t.insert().values(job_id=job_id, timestamp=now, from_state=None, to_state=State.CREATED.value, reason=reason))
        return int(job_id)

    def get_job(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_t).where(jobs_t.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job with id {job_id}; `rtlib status` lists the jobs")
        return Job.from_row(row)

    def list_jobs(
        self,
        *,
        states: Iterable[State | str] | None = None,
        workload: str | None = None,
        beamline: str | None = None,
        site: str | None = None,
        owner: str | None = None,
        ids: Iterable[int] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        q = sa.select(jobs_t).order_by(jobs_t.c.id)
        if owner is not None:
            q = q.where(jobs_t.c.lease_owner == owner)
        if ids is not None:
            q = q.where(jobs_t.c.id.in_(list(ids)))
        if states is not None:
            q = q.where(jobs_t.c.state.in_([State(s).value for s in states]))
        if workload:
            q = q.where(jobs_t.c.workload == workload)
        if beamline:
            q = q.where(jobs_t.c.beamline == beamline)
        if site:
            q = q.where(jobs_t.c.site == site)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(q)]

    def count_by_state(self, site: str | None = None) -> dict[str, int]:
        q = sa.select(jobs_t.c.state, sa.func.count()).group_by(jobs_t.c.state)
        if site is not None:
            q = q.where(jobs_t.c.site == site)
        with self.engine.connect() as conn:
            return {s: n for s, n in conn.execute(q)}

    def transition(
        self,
        job_id: int,
        from_state: State | str,
        to_state: State | str,
        reason: str,
        *,
        owner: str | None = None,
        release: bool = False,
        **fields: Any,
    ) -> bool:
        """Move a job if it is still in `from_state` (and still leased by `owner`, if given).

        Returns False when another actor moved it first; raises IllegalTransition
        when the table forbids the move. The event row commits with the change.
        """
        from_state, to_state = State(from_state), State(to_state)
        check_transition(from_state, to_state)
        now = time.time()
        values = {"state": to_state.value, "updated_at": now, **fields}
        if release:
            values.update(lease_owner=None, lease_expires=None)
        cond = [jobs_t.c.id == job_id, jobs_t.c.state == from_state.value]
        if owner is not None:
            cond.append(jobs_t.c.lease_owner == owner)
        with self.engine.begin() as conn:
            n = conn.execute(jobs_t.update().where(*cond).values(**values)).rowcount
            if n != 1:
                return False
            conn.execute(
                events_t.insert().values(
                    job_id=job_id, timestamp=now, from_state=from_state.value, to_state=to_state.value, reason=reason, agent=owner
                )
            )
        return True

    def update_job(self, job_id: int, *, owner: str | None = None, **fields: Any) -> bool:
        """Change non-state fields (progress, summary) of a job, only while `owner` holds its lease."""
        cond = [jobs_t.c.id == job_id]
        if owner is not None:
            cond.append(jobs_t.c.lease_owner == owner)
        with self.engine.begin() as conn:
            return conn.execute(jobs_t.update().where(*cond).values(updated_at=time.time(), **fields)).rowcount == 1

    # -- leases -----------------------------------------------------------
    def claim(
        self, owner: str, *, site: str, lease_s: float, limit: int, states: Iterable[State] = ACTIVE, reclaim_own: bool = False
    ) -> list[Job]:
        """Lease up to `limit` unleased (or expired) active jobs of a site, highest priority first.

        `reclaim_own`: also take the jobs `owner` already leases (an agent that forgot its jobs
        after a store error takes them back this way).
        """
        now = time.time()
        free = sa.or_(jobs_t.c.lease_owner.is_(None), jobs_t.c.lease_expires < now)
        if reclaim_own:
            free = sa.or_(free, jobs_t.c.lease_owner == owner)
        q = (
            sa.select(jobs_t.c.id)
            .where(jobs_t.c.site == site, jobs_t.c.state.in_([State(s).value for s in states]), free)
            .order_by(jobs_t.c.priority.desc(), jobs_t.c.id)
            .limit(limit)
        )
        claimed = []
        with self.engine.begin() as conn:
            for (job_id,) in conn.execute(q).all():
                # compare-and-set: only one agent wins a free job
                n = conn.execute(
                    jobs_t.update()
                    .where(jobs_t.c.id == job_id, free)
                    .values(lease_owner=owner, lease_expires=now + lease_s)
                ).rowcount
                if n == 1:
                    claimed.append(job_id)
        if not claimed:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs_t).where(jobs_t.c.id.in_(claimed)).order_by(jobs_t.c.priority.desc(), jobs_t.c.id))
            return [Job.from_row(r) for r in rows]

    def heartbeat(self, owner: str, lease_s: float) -> int:
        """Extend every lease `owner` holds. Returns how many jobs it still holds."""
        with self.engine.begin() as conn:
            return conn.execute(
                jobs_t.update().where(jobs_t.c.lease_owner == owner).values(lease_expires=time.time() + lease_s)
            ).rowcount

    def lease_owners(self, site: str | None = None) -> list[str]:
        q = sa.select(jobs_t.c.lease_owner).where(jobs_t.c.lease_owner.is_not(None)).distinct()
        if site is not None:
            q = q.where(jobs_t.c.site == site)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def release(self, owner: str, job_ids: Sequence[int] | None = None) -> None:
        cond = [jobs_t.c.lease_owner == owner]
        if job_ids is not None:
            cond.append(jobs_t.c.id.in_(list(job_ids)))
        with self.engine.begin() as conn:
            conn.execute(jobs_t.update().where(*cond).values(lease_owner=None, lease_expires=None))

    # -- transfer items ---------------------------------------------------
    def add_items(self, job_id: int, direction: str, items: Sequence[dict[str, Any]]) -> None:
        """Record the files of one stage of a job, replacing any earlier plan of the same stage."""
        with self.engine.begin() as conn:
            conn.execute(items_t.delete().where(items_t.c.job_id == job_id, items_t.c.direction == direction))
            if items:
                conn.execute(items_t.insert(), [dict(job_id=job_id, direction=direction, state="pending", attempts=0, **it) for it in items])

    def items(self, job_id: int | None = None, direction: str | None = None, state: str | None = None) -> list[TransferItem]:
        q = sa.select(items_t).order_by(items_t.c.id)
        if job_id is not None:
            q = q.where(items_t.c.job_id == job_id)
        if direction:
            q = q.where(items_t.c.direction == direction)
        if state:
            q = q.where(items_t.c.state == state)
        with self.engine.connect() as conn:
            return [TransferItem.from_row(r) for r in conn.execute(q)]

    def update_item(self, item_id: int, **fields: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(items_t.update().where(items_t.c.id == item_id).values(**fields))

    # -- events -----------------------------------------------------------
    def events(self, job_id: int | None = None, *, after_id: int = 0, limit: int | None = None) -> list[Event]:
        q = sa.select(events_t).where(events_t.c.id > after_id).order_by(events_t.c.id)
        if job_id is not None:
            q = q.where(events_t.c.job_id == job_id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [Event.from_row(r) for r in conn.execute(q)]

    # -- allocations --------------------------------------------------------
    def record_usage(
        self, *, account: str, site: str, queue: str, started_at: float, ended_at: float,
        nodes: int = 1, batch_job: str | None = None, worker: str | None = None,
    ) -> None:
        hours = max(0.0, ended_at - started_at) / 3600 * nodes
        with self.engine.begin() as conn:
            conn.execute(usage_t.insert().values(
                account=account, site=site, queue=queue, batch_job=batch_job, worker=worker,
                nodes=nodes, started_at=started_at, ended_at=ended_at, node_hours=hours,
            ))  # fmt: skip

    def usage_rows(self, account: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(usage_t).order_by(usage_t.c.id)
        if account is not None:
            q = q.where(usage_t.c.account == account)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def used_node_hours(self) -> dict[str, float]:
        """Node-hours charged so far, per account (suballocation)."""
        q = sa.select(usage_t.c.account, sa.func.sum(usage_t.c.node_hours)).group_by(usage_t.c.account)
        with self.engine.connect() as conn:
            return {a: float(h or 0.0) for a, h in conn.execute(q)}

    def set_budget(self, account: str, node_hours: float) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(budgets_t.update().where(budgets_t.c.account == account).values(node_hours=node_hours, updated_at=time.time())).rowcount
            if n == 0:
                conn.execute(budgets_t.insert().values(account=account, node_hours=node_hours, updated_at=time.time()))

    def budget_overrides(self) -> dict[str, float]:
        with self.engine.connect() as conn:
            return {a: float(h) for a, h in conn.execute(sa.select(budgets_t.c.account, budgets_t.c.node_hours))}


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
