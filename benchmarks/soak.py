"""The compressed campaign, with and without faults, on a real PostgreSQL store: verdict and throughput.

    python benchmarks/soak.py [--duration-s 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import write_result  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

from rtlib import config as cfg  # noqa: E402
from rtlib.soak import SoakPlan, run_soak  # noqa: E402


def plot_memory(samples: list) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = HERE.parent / "docs" / "soak_memory.png"
    fig, ax = plt.subplots(figsize=(8, 3.5))
    lives = sorted({life for *_, life in samples})
    for life in lives:
        pts = [(t, rss) for t, rss, _, lf in samples if lf == life]
        ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], ".-", ms=2, lw=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("agent RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("rtlib agent memory during the soak (one colour per agent life)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def _leak_cell(v) -> str:
    if v.memory_flat is None:
        return "not judged"
    slope = f" ({v.rss_slope_mb_per_h:+.1f} MB/h)" if v.judged_life_s >= 600 else ""  # a slope over minutes says little
    return f"{v.judged_life_s / 60:.1f} min life: RSS {v.rss_growth_mb:+.1f} MB{slope}, fds {v.fd_growth:+d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--interval-s", type=float, default=2.0)
    ap.add_argument("--long", action="store_true", help="one faulty run only (e.g. 3600 s), with a memory plot")
    ap.add_argument("--steady-s", type=float, default=None,
                    help="no agent SIGKILL in the last this many seconds of production (default: a third of it, at least 60 s)")
    args = ap.parse_args()
    steady_s = args.steady_s if args.steady_s is not None else max(60.0, args.duration_s / 3)
    plan = SoakPlan(duration_s=args.duration_s, dataset_interval_s=args.interval_s, link_mbps=276, transfer_fail_rate=0.05,
                    transfer_corrupt_rate=0.05, agent_kill_every_s=30, preempt_every_s=20, store_restart_every_s=45,
                    malformed_fraction=0.05, seed=11, globus=True, token_expire_every_s=40,
                    agent_steady_s=min(steady_s, args.duration_s))
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="rtlib-soak-") as tmp, PostgresServer(durable=True) as pg:
        runs = (("faults", plan),) if args.long else (("no faults", plan.without_faults()), ("faults", plan))
        for label, p in runs:
            raw = cfg.default_config(Path(tmp) / label.replace(" ", "-"))
            raw["store_url"] = pg.create_database(label.replace(" ", "_"))
            # faults ~1000x denser than a real campaign's (an agent SIGKILL or a worker kill every ~10 s on 2 workers):
            # a job may lose several runs, so it gets more of them
            raw["agent"] = {"max_attempts": 10}
            v = run_soak(cfg.validate(raw), p, store_restart=lambda: pg.restart(down_s=2.0))
            figures[label] = {"verdict": "clean" if v.ok else "NOT clean", **v.__dict__}
            rows.append(
                f"| {label} | {v.datasets} | {v.done} | {v.failed_as_expected} | {len(v.unexpected_failures)} | {len(v.stuck)} | "
                f"{len(v.duplicated_steps)} | {len(v.bad_results)} | {', '.join(f'{k} {n}' for k, n in v.injected.items()) or '-'} | "
                f"{' → '.join(map(str, v.agent_rss_mb))} MB / {' → '.join(map(str, v.agent_fds))} | {_leak_cell(v)} | "
                f"{v.input_mbps:.1f} Mbps | **{'clean' if v.ok else 'NOT clean'}**: {v.summary()} |"
            )
            print(rows[-1], flush=True)
    if args.long:
        plot = plot_memory(figures["faults"]["agent_memory"])
        name, title = "soak_long", f"Long soak ({args.duration_s / 60:g} minutes) under faults"
        notes = (f"{args.duration_s:g} s of production, datasets every {args.interval_s:g} s at each of 3 endpoints, link 276 Mbps, "
                 f"PostgreSQL store, every fault kind (expired tokens on the als Globus path through the loopback emulator). Agent memory over the run (each colour one agent "
                 f"life between SIGKILLs; none in the last {steady_s:g} s of production, so that one life shows whether memory stays flat): ![agent memory]({plot.name}).")
        table = "\n".join(["| run | datasets | done | failed as expected (malformed) | unexpected failures | stuck | duplicated steps | bad results | faults injected | agent RSS / open fds (settled → last, longest life) | leak check (longest life, past start-up) | input throughput | verdict |",
                           "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
        write_result(name, title, figures, table, command=f"python benchmarks/soak.py --long --duration-s {args.duration_s:g} --interval-s {args.interval_s:g} --steady-s {steady_s:g}", notes=notes)
        print(table)
        return
    base, faulty = figures["no faults"]["input_mbps"], figures["faults"]["input_mbps"]
    figures["throughput_ratio_faults_to_clean"] = round(faulty / base, 3) if base else None
    table = "\n".join([
        "| run | datasets | done | failed as expected (malformed) | unexpected failures | stuck | duplicated steps | bad results | faults injected | agent RSS / open fds (settled → last, longest life) | leak check (longest life, past start-up) | input throughput | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    notes = (f"{args.duration_s:g} s of production per run, datasets every {args.interval_s:g} s at each of 3 endpoints "
             f"({'/'.join(k for k, _, _ in plan.mix)} mix, scaled down), link shaped to 276 Mbps, PostgreSQL store. Throughput with faults / without: "
             f"{figures['throughput_ratio_faults_to_clean']}. Not exercised: {'; '.join(figures['faults']['not_exercised']) or 'nothing'}.")
    write_result("soak", "Compressed campaign under faults (soak)", figures, table, notes=notes)
    print(table)


if __name__ == "__main__":
    main()
