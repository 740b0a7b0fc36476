"""The short CI form of the campaign under faults (the long form is `rtlib soak` / benchmarks/soak.py)."""

from __future__ import annotations

import pytest

from rtlib import config as cfg
from rtlib.soak import SoakPlan, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_short_campaign_under_every_fault(tmp_path, postgres_server):
    raw = cfg.default_config(tmp_path / "ws")
    raw["store_url"] = postgres_server.create_database("soak")
    settings = cfg.validate(raw)
    plan = SoakPlan(
        duration_s=24, dataset_interval_s=2.0, link_mbps=200, transfer_fail_rate=0.1, transfer_corrupt_rate=0.1,
        agent_kill_every_s=7, preempt_every_s=5, store_restart_every_s=9, malformed_fraction=0.3, seed=3, stuck_bound_s=150,
    )
    verdict = run_soak(settings, plan, store_restart=lambda: postgres_server.restart(down_s=1.0))
    assert verdict.ok, verdict.to_json()
    assert verdict.datasets >= 30 and verdict.done + verdict.failed_as_expected == verdict.datasets
    inj = verdict.injected
    assert inj.get("agent_sigkills", 0) >= 1 and inj.get("store_restarts", 0) >= 1 and inj.get("malformed_inputs", 0) >= 1, inj
    assert inj.get("agent_exits_unprompted", 0) == 0, inj
    assert verdict.failed_as_expected == inj["malformed_inputs"]
    postgres_server.drop_database("soak")
