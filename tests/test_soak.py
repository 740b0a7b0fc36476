"""The 3-minute CI form of the campaign under faults (the 60-minute form is `rtlib soak` / benchmarks/soak.py --long)."""

from __future__ import annotations

import pytest

from rtlib import config as cfg
from rtlib.soak import SoakPlan, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_short_campaign_under_every_fault(tmp_path, postgres_server):
    raw = cfg.default_config(tmp_path / "ws")
    raw["store_url"] = postgres_server.create_database("soak")
    # faults come ~1000x denser than in a real campaign: a job may meet several preemptions, so allow more runs
    raw["agent"] = {"max_attempts": 6}
    settings = cfg.validate(raw)
    plan = SoakPlan(
        duration_s=180, dataset_interval_s=2.0, link_mbps=200, transfer_fail_rate=0.1, transfer_corrupt_rate=0.1,
        agent_kill_every_s=7, preempt_every_s=5, store_restart_every_s=9, malformed_fraction=0.3, seed=3, stuck_bound_s=150,
        globus=True, token_expire_every_s=5, min_token_age_s=2,
    )
    verdict = run_soak(settings, plan, store_restart=lambda: postgres_server.restart(down_s=1.0))
    assert verdict.ok, verdict.to_json()
    assert verdict.datasets >= 200 and verdict.done + verdict.failed_as_expected == verdict.datasets
    inj = verdict.injected
    assert inj.get("agent_sigkills", 0) >= 1 and inj.get("store_restarts", 0) >= 1 and inj.get("malformed_inputs", 0) >= 1, inj
    assert inj.get("agent_exits_unprompted", 0) == 0, (inj, verdict.agent_exit_logs)
    assert inj.get("worker_preemptions", 0) >= 1 and inj.get("expired_tokens", 0) >= 1 and verdict.copies_retried >= 1, inj
    # the als copies went through globus-sdk; revoked tokens were refused and the service account got new ones
    assert verdict.globus["files"] > 0 and verdict.globus["rejected_401"] >= 1 and verdict.globus["token_grants"] >= 2, verdict.globus
    assert verdict.secret_leaks == [] and verdict.not_exercised == [], verdict.to_json()
    assert verdict.failed_as_expected == inj["malformed_inputs"]
    postgres_server.drop_database("soak")
