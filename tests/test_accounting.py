"""Allocations: budgets, usage from worker run time, reservations, and the hold decision."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rtlib import config as cfg
from rtlib.accounting import Ledger, accounts_status, scheduler_account
from rtlib.cli import app
from rtlib.compute.policy import Request
from rtlib.states import State
from rtlib.store import JobSpec, JobStore


def _settings(tmp_path):
    raw = cfg.default_config(tmp_path / "ws")
    raw["accounts"] = {"rtlib": {"node_hours": 10}, "rtlib::aps": {"node_hours": 2, "scheduler_account": "rtlib_aps"}, "rtlib::als": {"node_hours": 8},
                       "rtlib::nsls2": {"node_hours": 0}}
    s = cfg.validate(raw)
    cfg.ensure_workspace(s)
    return s


def _job(store, account, state=None):
    jid = store.create_job(JobSpec(workload="noop", source_endpoint="aps", inputs=["x"], dest_endpoint="aps", output_path="o", account=account))
    if state is not None:
        path = {State.RUNNING: [State.STAGING_IN, State.STAGED_IN, State.RUNNING], State.HELD: [State.STAGING_IN, State.STAGED_IN, State.HELD]}[state]
        current = State.CREATED
        for nxt in path:
            assert store.transition(jid, current, nxt, "test")
            current = nxt
    return jid


def test_usage_is_charged_to_the_suballocation_and_its_project(tmp_path):
    s = _settings(tmp_path)
    store = JobStore(s.store)
    try:
        store.record_usage(account="rtlib::aps", site="hpc", queue="demand", started_at=0, ended_at=1800, nodes=1, batch_job="7")
        store.record_usage(account="rtlib::aps", site="hpc", queue="demand", started_at=0, ended_at=3600, nodes=2)
        store.record_usage(account="rtlib::als", site="hpc", queue="preemptable", started_at=100, ended_at=100 + 360)
        ledger = Ledger(s, store)
        assert round(ledger.used["rtlib::aps"], 6) == 2.5
        assert round(ledger.used["rtlib::als"], 6) == 0.1
        assert round(ledger.used["rtlib"], 6) == 2.6  # the project sees its suballocations' use
        assert ledger.remaining("rtlib::aps") < 0
        reason = ledger.hold_reason("rtlib::aps", Request(nodes=1, walltime_min=6))
        assert "account rtlib::aps has 0 of 2 left" in reason and "rtlib accounts --set rtlib::aps=HOURS" in reason
        assert ledger.hold_reason("rtlib::als", Request(nodes=1, walltime_min=60)) is None
        assert ledger.hold_reason(None, Request(nodes=99, walltime_min=9999)) is None  # no account, no budget
    finally:
        store.close()


def test_running_jobs_reserve_their_request_and_budget_overrides_win(tmp_path):
    s = _settings(tmp_path)
    store = JobStore(s.store)
    try:
        for _ in range(3):  # 3 running x (1 node x 30 min) = 1.5 node-hours reserved of 2
            _job(store, "rtlib::aps", State.RUNNING)
        held = _job(store, "rtlib::aps", State.HELD)
        ledger = Ledger(s, store)
        assert round(ledger.reserved["rtlib::aps"], 6) == 1.5
        half_hour = Request(nodes=1, walltime_min=30)
        assert ledger.hold_reason("rtlib::aps", half_hour) is None  # exactly the 0.5 left
        ledger.reserve("rtlib::aps", half_hour)
        assert "has 0 of 2 left" in ledger.hold_reason("rtlib::aps", half_hour)
        store.set_budget("rtlib::aps", 50)
        ledger = Ledger(s, store)
        assert ledger.budgets["rtlib::aps"] == 50 and ledger.hold_reason("rtlib::aps", Request(nodes=4, walltime_min=60)) is None
        status = {a.account: a for a in accounts_status(s, store)}
        assert status["rtlib::aps"].held_jobs == [held] and status["rtlib::aps"].running_jobs == 3
        assert status["rtlib::aps"].budget_node_hours == 50
    finally:
        store.close()


def test_project_budget_binds_every_suballocation(tmp_path):
    s = _settings(tmp_path)
    store = JobStore(s.store)
    try:
        store.record_usage(account="rtlib::als", site="hpc", queue="demand", started_at=0, ended_at=9.8 * 3600)
        reason = Ledger(s, store).hold_reason("rtlib::aps", Request(nodes=1, walltime_min=30))
        assert reason is not None and "account rtlib has 0.2 of 10 left" in reason
    finally:
        store.close()


def test_scheduler_account_is_configured_or_the_project():
    raw = cfg.default_config("/tmp/unused")
    raw["accounts"]["rtlib::aps"]["scheduler_account"] = "APS_8ID"
    s = cfg.validate(raw)
    assert scheduler_account(s, "rtlib::aps") == "APS_8ID"
    assert scheduler_account(s, "rtlib::als") == "rtlib"
    assert scheduler_account(s, None) is None


def test_accounts_command_shows_budget_used_and_held(tmp_path, monkeypatch):
    s = _settings(tmp_path)
    store = JobStore(s.store)
    held = _job(store, "rtlib::aps", State.HELD)
    store.record_usage(account="rtlib::als", site="hpc", queue="demand", started_at=0, ended_at=1800)
    store.close()
    toml = tmp_path / "rtlib.toml"
    toml.write_text(
        f'workspace = "{tmp_path / "ws"}"\n[endpoints.aps]\nroot = "{tmp_path / "ws/endpoints/aps"}"\n[endpoints.alcf]\nroot = "{tmp_path / "ws/endpoints/alcf"}"\n'
        '[sites.local]\nscratch_endpoint = "alcf"\n'
        '[accounts."rtlib"]\nnode_hours = 10\n[accounts."rtlib::aps"]\nnode_hours = 2\n[accounts."rtlib::als"]\nnode_hours = 8\n'
    )
    monkeypatch.delenv("RTLIB_STORE_URL", raising=False)
    runner = CliRunner()
    out = runner.invoke(app, ["accounts", "--config", str(toml), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["account"]: r for r in json.loads(out.output)}
    assert rows["rtlib::aps"]["held_jobs"] == [held]
    assert rows["rtlib::als"]["used_node_hours"] == 0.5 and rows["rtlib::als"]["remaining_node_hours"] == 7.5
    out = runner.invoke(app, ["accounts", "--config", str(toml), "--set", "rtlib::aps=40"])
    assert out.exit_code == 0, out.output
    assert "rtlib::aps" in out.output and "40" in out.output
    out = runner.invoke(app, ["accounts", "--config", str(toml), "--set", "nosuch=1"])
    assert out.exit_code != 0 and "unknown account 'nosuch'" in out.output
