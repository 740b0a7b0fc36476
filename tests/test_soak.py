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
        globus=True, token_expire_every_s=5, min_token_age_s=2, agent_steady_s=90,
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
    # each transfer fault kind happened and was recovered from (the agents logged every retried attempt)
    assert inj.get("transfer_failures", 0) >= 1 and inj.get("corrupted_copies", 0) >= 1, inj
    # one agent life of >= 60 s under the other faults, with memory and open files flat past its start-up
    assert verdict.memory_flat is True and verdict.judged_life_s >= 60, verdict.to_json()
    assert verdict.summary() == "0 lost, 0 duplicated, all checksums match, memory flat"
    postgres_server.drop_database("soak")


class _FakeSupervisor:
    """One agent life sampled every second: (RSS MB, fds) given by `rss(t)` and `fds(t)`."""

    def __init__(self, log_dir, span_s, rss, fds):
        self.log_dir = log_dir
        self.life_times = [[100.0 + t for t in range(int(span_s))]]
        self.lives = [[(rss(t), fds(t)) for t in range(int(span_s))]]


def test_a_leaking_agent_makes_the_verdict_not_clean(tmp_path):
    from rtlib.soak import Verdict, _judge_memory

    flat, leaking = Verdict(), Verdict()
    _judge_memory(flat, _FakeSupervisor(tmp_path, 120, lambda t: 50 + 190 * min(t, 20) / 20 + (t % 3), lambda t: 40 + t % 5))
    _judge_memory(leaking, _FakeSupervisor(tmp_path, 120, lambda t: 240 + 2.0 * t, lambda t: 40))
    assert flat.memory_flat is True and flat.ok and abs(flat.rss_growth_mb) < 5, flat.to_json()
    assert leaking.memory_flat is False and not leaking.ok and leaking.rss_growth_mb > 64, leaking.to_json()
    assert 6000 < leaking.rss_slope_mb_per_h < 8000  # 2 MB/s
    fd_leak = Verdict()
    _judge_memory(fd_leak, _FakeSupervisor(tmp_path, 120, lambda t: 240, lambda t: 40 + t))
    assert fd_leak.memory_flat is False and fd_leak.fd_growth > 32


def test_short_agent_lives_are_reported_as_not_judged(tmp_path):
    from rtlib.soak import Verdict, _judge_memory

    v = Verdict()
    _judge_memory(v, _FakeSupervisor(tmp_path, 20, lambda t: 240 + 10 * t, lambda t: 40))
    assert v.memory_flat is None and v.ok and "memory flatness" in v.not_exercised[0]
    assert v.summary().endswith("memory not judged")


def test_transfer_faults_are_counted_from_the_agent_logs(tmp_path):
    from rtlib.soak import _transfer_faults_logged

    (tmp_path / "agent-000.log").write_text(
        "WARNING rtlib.transfer.local: transfer item 3 attempt 1 failed, retrying: injected link failure while copying x\n"
        "WARNING rtlib.transfer.local: transfer item 4 attempt 1 failed, retrying: the copy of y has checksum 1…, the source 2…; "
        "the copy was corrupted on the way and was discarded\n")
    (tmp_path / "agent-001.log").write_text("WARNING ...: injected link failure while copying z\n")
    assert _transfer_faults_logged(tmp_path) == {"transfer_failures": 2, "corrupted_copies": 1}
