"""The local transfer backend: verified copies, path safety, retries under injected faults, link shaping."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from rtlib import config as cfg
from rtlib.errors import ConfigError, EndpointError, InputDataError, PathOutsideRoot, TransferError
from rtlib.transfer import local as local_mod
from rtlib.transfer.base import TransferRequest
from rtlib.transfer.checksum import file_checksum
from rtlib.transfer.factory import make_transfer_backend
from rtlib.transfer.faults import Fault, FaultInjector
from rtlib.transfer.local import LocalTransferBackend, is_temporary
from rtlib.transfer.routing import RoutingTransferBackend
from rtlib.transfer.shaping import TokenBucket


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if "rtlib-tmp" in p.name]


def write(path: Path, nbytes: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(nbytes) if seed is None else random.Random(seed).randbytes(nbytes))
    return path


@pytest.fixture
def roots(tmp_path):
    r = {"src": tmp_path / "src", "dst": tmp_path / "dst"}
    for p in r.values():
        p.mkdir()
    (tmp_path / "outside").mkdir()
    return r


def backend(roots, **kw) -> LocalTransferBackend:
    kw.setdefault("backoff_s", 0.001)
    return LocalTransferBackend(roots, **kw)


def req(i: int, src: str, dst: str | None = None) -> TransferRequest:
    return TransferRequest(i, "src", src, "dst", dst if dst is not None else src)


# -- copying ------------------------------------------------------------------------------------------
def test_copy_is_verified_and_reported(roots):
    data = write(roots["src"] / "raw/scan.h5", 3 * (1 << 20) + 17, seed=None)
    seen: list[int] = []
    called = []
    [out] = backend(roots, chunk_bytes=1 << 20).transfer_batch([req(7, "raw/scan.h5", "jobs/1/in/scan.h5")], seen.append, on_outcome=called.append)
    dst = roots["dst"] / "jobs/1/in/scan.h5"
    assert out.ok and out.item_id == 7 and out.attempts == 1 and out.error is None
    assert out.bytes == data.stat().st_size == sum(seen)
    assert out.checksum == sha256(data) == sha256(dst) == file_checksum(dst, chunk_bytes=4096)
    assert dst.read_bytes() == data.read_bytes()
    assert called == [out]
    assert temporaries(roots["dst"]) == []


def test_batch_outcomes_in_order_with_concurrency(roots):
    for i in range(12):
        write(roots["src"] / f"d/f{i:02d}", 1000 * (i + 1), seed=i)
    reqs = [req(100 + i, f"d/f{i:02d}") for i in range(12)]
    outs = backend(roots, parallel_copies=4).transfer_batch(reqs)
    assert [o.item_id for o in outs] == [r.item_id for r in reqs]
    assert all(o.ok for o in outs)
    for i in range(12):
        assert sha256(roots["dst"] / f"d/f{i:02d}") == sha256(roots["src"] / f"d/f{i:02d}")


def test_empty_file_and_empty_batch(roots):
    write(roots["src"] / "empty", 0)
    b = backend(roots)
    [out] = b.transfer_batch([req(1, "empty")])
    assert out.ok and out.bytes == 0 and (roots["dst"] / "empty").read_bytes() == b""
    assert b.transfer_batch([]) == []


def test_idempotent_skip_when_destination_matches(roots):
    data = write(roots["src"] / "a.bin", 50_000, seed=3)
    dst = write(roots["dst"] / "a.bin", 50_000, seed=3)
    before = dst.stat()
    seen: list[int] = []
    [out] = backend(roots).transfer_batch([req(1, "a.bin")], seen.append)
    after = dst.stat()
    assert out.ok and out.checksum == sha256(data) and out.bytes == 50_000
    assert seen == [], "nothing must be re-sent"
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    # same size, different bytes: not a match, so it is re-copied
    write(roots["dst"] / "a.bin", 50_000, seed=4)
    [out] = backend(roots).transfer_batch([req(2, "a.bin")], seen.append)
    assert out.ok and sum(seen) == 50_000 and sha256(roots["dst"] / "a.bin") == sha256(data)


def test_no_partial_file_visible_while_copying(roots):
    write(roots["src"] / "big.bin", 400_000, seed=1)
    b = backend(roots, link_mbps=4)  # 0.5 MB/s: ~0.8 s
    t = threading.Thread(target=b.transfer_batch, args=([req(1, "big.bin", "out/big.bin")],))
    t.start()
    time.sleep(0.35)
    try:
        tmps = temporaries(roots["dst"])
        assert len(tmps) == 1 and tmps[0].name.startswith(".big.bin.rtlib-tmp-") and is_temporary(tmps[0].name)
        assert not (roots["dst"] / "out/big.bin").exists()
        assert b.list_files("dst", "out") == []
        assert b.clean_temporaries("dst", "out") == 0, "a live copy's temporary must not be cleaned"
    finally:
        t.join()
    assert sha256(roots["dst"] / "out/big.bin") == sha256(roots["src"] / "big.bin")
    assert temporaries(roots["dst"]) == []


# -- paths --------------------------------------------------------------------------------------------
def test_path_escapes_are_refused_and_nothing_is_written(roots, tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.bin", 100)
    write(roots["src"] / "ok.bin", 100)
    os.symlink(outside / "secret.bin", roots["src"] / "link-out.bin")
    os.symlink(outside, roots["dst"] / "dir-out")
    b = backend(roots)
    escapes = [
        ("src", "../outside/secret.bin"),
        ("src", str(outside / "secret.bin")),
        ("src", "link-out.bin"),
        ("dst", "dir-out/stolen.bin"),
        ("dst", "../outside/stolen.bin"),
    ]
    for ep, path in escapes:
        with pytest.raises(PathOutsideRoot) as info:
            b.resolve(ep, path)
        msg = str(info.value)
        assert path in msg and repr(ep) in msg and str(roots[ep]) in msg and "outside" in msg
    with pytest.raises(PathOutsideRoot):
        b.list_files("src", "link-out.bin")
    with pytest.raises(PathOutsideRoot, match="link-out.bin"):
        b.list_files("src", "")  # a directory holding a link out is refused, not silently copied

    reqs = [TransferRequest(i, "src", s if ep == "src" else "ok.bin", "dst", s if ep == "dst" else "copy.bin")
            for i, (ep, s) in enumerate(escapes)]
    outs = b.transfer_batch(reqs)
    assert all(not o.ok and o.permanent and o.attempts == 1 and "outside" in o.error for o in outs)
    assert sorted(p.name for p in outside.rglob("*")) == ["secret.bin"]
    assert list(roots["dst"].rglob("*.bin")) == []
    # an absolute path that stays inside the root is fine
    assert b.resolve("src", str(roots["src"] / "ok.bin")) == (roots["src"] / "ok.bin").resolve()


def test_unknown_endpoint_lists_known_ones(roots):
    b = backend(roots)
    with pytest.raises(EndpointError, match="'nope'.*dst, src"):
        b.resolve("nope", "x")
    [out] = b.transfer_batch([TransferRequest(1, "nope", "x", "dst", "x")])
    assert not out.ok and out.permanent and "dst, src" in out.error


def test_list_files(roots):
    for rel in ["run/b.h5", "run/a.h5", "run/sub/c.h5", "other/d.h5"]:
        write(roots["src"] / rel, len(rel))
    write(roots["src"] / "run/.a.h5.rtlib-tmp-1234-abcdef", 5)  # a killed copy's leftover: not data
    os.symlink(roots["src"] / "other", roots["src"] / "run/linked")  # inside the root: followed
    os.symlink(roots["src"] / "run", roots["src"] / "run/sub/loop")  # cycles end
    (roots["src"] / "x").mkdir()
    os.symlink(roots["src"] / "x", roots["src"] / "other/to-x")
    os.symlink(roots["src"] / "other", roots["src"] / "x/to-other")
    b = backend(roots)
    assert b.list_files("src", "run") == [
        ("run/a.h5", 8), ("run/b.h5", 8), ("run/linked/d.h5", 10), ("run/sub/c.h5", 12)
    ]
    assert b.list_files("src", "run/b.h5") == [("run/b.h5", 8)]
    assert [p for p, _ in b.list_files("src", "./run/../run/sub/")] == [
        "run/sub/c.h5", "run/sub/loop/a.h5", "run/sub/loop/b.h5", "run/sub/loop/linked/d.h5"
    ]
    assert [p for p, _ in b.list_files("src", "")] == [
        "other/d.h5", "run/a.h5", "run/b.h5", "run/linked/d.h5", "run/sub/c.h5", "x/to-other/d.h5"
    ]
    with pytest.raises(InputDataError) as info:
        b.list_files("src", "run/never-written.h5")
    assert "never-written.h5" in str(info.value) and "'src'" in str(info.value)


def test_clean_temporaries(roots):
    d = roots["dst"] / "jobs/1/in"
    write(d / "kept.h5", 10)
    dead = [write(d / ".x.h5.rtlib-tmp-deadbeef", 3), write(d / "sub/.y.rtlib-tmp-999999999-0a1b", 3)]
    live = write(d / f".z.rtlib-tmp-{os.getppid()}-0a1b", 3)  # a live process's copy in progress
    b = backend(roots)
    assert b.list_files("dst", "jobs") == [("jobs/1/in/kept.h5", 10)]
    assert b.clean_temporaries("dst", "jobs/1") == 2
    assert not any(p.exists() for p in dead) and live.exists() and (d / "kept.h5").exists()
    assert b.clean_temporaries("dst", "jobs/2") == 0  # not there yet: nothing to do
    write(d / ".w.h5.rtlib-tmp-0123", 1)
    assert b.clean_temporaries("dst", "jobs/1/in/w.h5") == 1  # a file's own leftovers


# -- failures -----------------------------------------------------------------------------------------
def test_missing_source_fails_permanently_others_succeed(roots):
    write(roots["src"] / "a", 10)
    write(roots["src"] / "c", 10)
    outs = backend(roots).transfer_batch([req(1, "a"), req(2, "raw/never-written.h5"), req(3, "c")])
    assert [o.ok for o in outs] == [True, False, True]
    bad = outs[1]
    assert bad.permanent and bad.attempts == 1 and "never-written.h5" in bad.error and "does not exist" in bad.error
    assert not (roots["dst"] / "raw").exists() and temporaries(roots["dst"]) == []


def test_destination_blocked_by_a_file_is_permanent(roots):
    write(roots["src"] / "a", 10)
    write(roots["dst"] / "blocker", 1)
    [out] = backend(roots).transfer_batch([req(1, "a", "blocker/a")])
    assert not out.ok and out.permanent and out.attempts == 1 and "blocker" in out.error


def test_permission_denied_is_permanent(roots, monkeypatch):
    write(roots["src"] / "a", 10)
    real_open = open

    def deny(path, mode="r", *a, **kw):
        if str(path).endswith("/src/a") and "r" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(local_mod, "open", deny, raising=False)
    [out] = backend(roots).transfer_batch([req(1, "a")])
    assert not out.ok and out.permanent and out.attempts == 1 and "permission denied" in out.error
    assert temporaries(roots["dst"]) == []


def test_faults_are_retried_until_every_file_arrives_intact(roots):
    n = 50
    for i in range(n):
        write(roots["src"] / f"scan/f{i:02d}.bin", 2000 + 997 * i, seed=i)
    faults = FaultInjector(fail_rate=0.2, corrupt_rate=0.1, seed=3)
    b = backend(roots, faults=faults, retries=10, parallel_copies=4)
    outs = b.transfer_batch([req(i, f"scan/f{i:02d}.bin") for i in range(n)])
    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok]
    for i, o in enumerate(outs):
        src, dst = roots["src"] / f"scan/f{i:02d}.bin", roots["dst"] / f"scan/f{i:02d}.bin"
        assert o.checksum == sha256(src) == sha256(dst)
    assert faults.failures_injected >= 3 and faults.corruptions_injected >= 2, faults.counts()
    # every injected fault cost exactly one extra attempt: each corruption was detected and the file re-sent
    assert sum(o.attempts - 1 for o in outs) == faults.failures_injected + faults.corruptions_injected
    assert faults.attempts_seen == sum(o.attempts for o in outs)
    assert temporaries(roots["dst"]) == []


@pytest.mark.parametrize("spec, cause", [("fail=1", "injected link failure"), ("corrupt=1", "checksum")])
def test_retries_exhausted(roots, spec, cause):
    write(roots["src"] / "a", 5000)
    faults = FaultInjector.from_spec(spec)
    [out] = backend(roots, faults=faults, retries=3).transfer_batch([req(1, "a")])
    assert not out.ok and not out.permanent and out.attempts == 4
    assert cause in out.error and "gave up after 4 attempts" in out.error
    assert not (roots["dst"] / "a").exists() and temporaries(roots["dst"]) == []


def test_backoff_grows_and_is_capped(roots):
    b = LocalTransferBackend(roots, backoff_s=0.1, max_backoff_s=0.5)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        waits = [b._backoff_s(attempt) for _ in range(50)]
        assert all(nominal / 2 <= w <= nominal for w in waits) and len(set(waits)) > 1


def test_fault_spec():
    f = FaultInjector.from_spec(" fail=0.2, corrupt=0.1 ,seed=3")
    assert (f.fail_rate, f.corrupt_rate, f.seed) == (0.2, 0.1, 3)
    assert FaultInjector.from_spec(f.spec).spec == f.spec
    for bad, words in [("fial=0.2", "unknown key 'fial'"), ("fail", "key=value"), ("fail=x", "probability"),
                       ("fail=0.8,corrupt=0.5", "<= 1"), ("seed=1.5", "integer")]:
        with pytest.raises(ConfigError, match=words):
            FaultInjector.from_spec(bad)
    assert FaultInjector.from_env({}) is None
    assert FaultInjector.from_env({"RTLIB_FAULTS": "fail=0.5"}).fail_rate == 0.5
    seq = [FaultInjector(0.3, 0.3, seed=1).next_fault() for _ in range(3)]
    assert seq == [FaultInjector(0.3, 0.3, seed=1).next_fault() for _ in range(3)]
    assert {FaultInjector(1.0).next_fault(), FaultInjector(0, 1.0).next_fault()} == {Fault.FAIL, Fault.CORRUPT}
    assert isinstance(FaultInjector(1.0).failure("x"), TransferError)


# -- link shaping -------------------------------------------------------------------------------------
def test_token_bucket_rate_single_stream():
    bucket = TokenBucket(16)  # 2 MB/s
    t0 = time.monotonic()
    for _ in range(100):
        bucket.consume(20_000)  # 2 MB in all: 1 s
    elapsed = time.monotonic() - t0
    assert 0.97 <= elapsed <= 1.10, f"2 MB at 16 Mbps took {elapsed:.3f} s; expected 1.0 s"


def test_parallel_copies_share_the_link_rate(roots):
    sizes = [600_000, 700_000, 800_000, 900_000]  # 3 MB in all
    for i, size in enumerate(sizes):
        write(roots["src"] / f"p{i}", size, seed=i)
    b = backend(roots, link_mbps=8, parallel_copies=4)  # 1 MB/s shared by all four copies
    progress: list[int] = []
    t0 = time.monotonic()
    outs = b.transfer_batch([req(i, f"p{i}") for i in range(4)], progress.append)
    elapsed = time.monotonic() - t0
    assert all(o.ok for o in outs)
    expected = sum(sizes) / 1e6
    assert 0.8 * expected <= elapsed <= 1.3 * expected, f"{sum(sizes)} B at 8 Mbps took {elapsed:.2f} s, expected {expected:.1f} s"
    assert sum(progress) == sum(sizes) and len(progress) > 20, "progress must arrive in slices, not one call per file"


def test_endpoint_rate_is_shared_across_batches(roots):
    for i in range(3):
        write(roots["src"] / f"e{i}", 500_000, seed=i)
    b = backend(roots, link_mbps=1000, endpoint_mbps={"src": 8})  # the source endpoint is the bottleneck
    outs = []
    threads = [threading.Thread(target=lambda i=i: outs.extend(b.transfer_batch([req(i, f"e{i}")]))) for i in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert len(outs) == 3 and all(o.ok for o in outs)
    assert 0.8 * 1.5 <= elapsed <= 1.3 * 1.5, f"1.5 MB from an 8 Mbps endpoint took {elapsed:.2f} s, expected 1.5 s"
    with pytest.raises(EndpointError, match="unknown endpoint"):
        backend(roots, endpoint_mbps={"nope": 1})


# -- factory ------------------------------------------------------------------------------------------
def test_factory_builds_local_backend(tmp_path):
    raw = cfg.default_config(tmp_path / "ws")
    raw["endpoints"]["aps"]["link_mbps"] = 100
    raw["agent"] = {"transfer_retries": 7}
    settings = cfg.validate(raw)
    faults = FaultInjector(0.1)
    b = make_transfer_backend(settings, link_mbps=50, faults=faults)
    assert isinstance(b, LocalTransferBackend)
    assert b.roots == {name: Path(ep.root) for name, ep in settings.endpoints.items()}
    assert b.retries == 7 and b.faults is faults and b.link.rate_mbps == 50
    assert {k: v.rate_mbps for k, v in b.endpoint_buckets.items()} == {"aps": 100}
    assert make_transfer_backend(settings, retries=2).retries == 2 and make_transfer_backend(settings).link is None

    raw["endpoints"]["remote"] = {"kind": "globus", "collection_id": "00000000-0000-0000-0000-000000000000"}
    routed = make_transfer_backend(cfg.validate(raw))
    assert isinstance(routed, RoutingTransferBackend) and isinstance(routed.local, LocalTransferBackend)
    assert routed.backend_for("aps", "alcf") is routed.local
