"""Shared helpers of the pipeline tests: a workspace with data at three beamlines."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

from rtlib import config as cfg
from rtlib.config import DEFAULT_BEAMLINE_ENDPOINTS


def make_settings(workspace: Path, store_url: str | None = None, **agent) -> cfg.Settings:
    raw = cfg.default_config(workspace)
    if store_url:
        raw["store_url"] = store_url
    raw["agent"] = {"poll_s": 0.02, **agent}
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    return settings


def produce(settings: cfg.Settings, n: int, *, frames: int = 4, size_px: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """n small detector files round robin over aps, als, nsls2."""
    from rtlib.synth.detector import write_detector_file

    out = []
    for i in range(n):
        ep = DEFAULT_BEAMLINE_ENDPOINTS[i % 3]
        rel = f"raw/scan-{i:03d}.h5"
        p = Path(settings.endpoints[ep].root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write_detector_file(p, frames=frames, height=size_px, width=size_px, seed=seed + i)
        out.append((ep, rel))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "rtlib-tmp" in p.name]


def assert_results_home(settings: cfg.Settings, store) -> int:
    """Every stage-out item of every job is at its destination with the checksum recorded when sent."""
    n = 0
    for it in store.items(direction="out"):
        assert it.state == "done", it
        dst = Path(settings.endpoints[it.dst_endpoint].root) / it.dst_path
        assert dst.exists(), dst
        assert sha256(dst) == it.checksum, f"checksum of {dst}"
        n += 1
    return n


def free_port() -> int:
    """A TCP port free on the loopback interface now (for servers the tests start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what: str, timeout_s: float = 90) -> None:
    """Poll `cond` every 50 ms; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
