"""EngineProcess and guard.py: start, health wait, log forwarding, crash -> 503 -> restart, give up, stop the
whole tree, and no orphan when the supervising process itself is killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from modelserve.engines.process import EngineProcess
from modelserve.errors import ModelLoadError, Unavailable

from .support.processes import alive, wait_gone

FAKE = str(Path(__file__).parent / "fakes" / "engine.py")


def engine(*flags, **kw) -> EngineProcess:
    kw.setdefault("start_timeout", 20)
    kw.setdefault("backoff", 0.2)
    kw.setdefault("stop_grace", 2)
    return EngineProcess("fake", lambda port: [sys.executable, FAKE, port, *flags], **kw)


def pids_in_tail(proc: EngineProcess) -> list:
    return [int(p) for line in proc.tail for p in re.findall(r"(?:child )?pid (\d+)", line)]


def test_starts_waits_for_health_and_forwards_its_log(caplog):
    async def run():
        proc = engine()
        with caplog.at_level("INFO", logger="mlserver.modelserve"):
            await proc.start()
        try:
            assert proc.state == "ready"
            body = requests.get(proc.base_url + "/v1/models", timeout=5).json()
            assert body["path"] == "/v1/models"
            proc.check()  # no error while ready
        finally:
            await proc.stop()
        return body["pid"]

    pid = asyncio.run(run())
    assert any(r.getMessage().startswith("[fake] fake engine: pid") for r in caplog.records)
    assert wait_gone([pid], 15) == []


def test_stop_takes_down_the_engine_and_its_children():
    async def run():
        proc = engine("--child")
        await proc.start()
        pids = pids_in_tail(proc)
        await proc.stop()
        return pids

    pids = asyncio.run(run())
    assert len(pids) == 2
    assert wait_gone(pids, 15) == []


def test_an_engine_that_ignores_sigterm_is_killed_after_the_grace_period():
    async def run():
        proc = engine("--ignore-term", stop_grace=1)
        await proc.start()
        pids = pids_in_tail(proc)
        t0 = time.monotonic()
        await proc.stop()
        return pids, time.monotonic() - t0

    pids, took = asyncio.run(run())
    assert wait_gone(pids, 5) == []
    assert took < 8


def test_retry_after_follows_the_engines_observed_start_time():
    """Retry-After during a restart is the engine's last start time less what this start has taken (plus the
    backoff left): measured against when the engine really answered again, at several points of the restart."""
    async def run():
        proc = engine("--start-delay", "3", backoff=0.5)
        await proc.start()
        os.kill(pids_in_tail(proc)[0], signal.SIGKILL)
        samples = []  # (when, Retry-After)
        while proc.state != "ready" or not samples:
            try:
                proc.check()
            except Unavailable as err:
                samples.append((time.monotonic(), int(err.headers["Retry-After"])))
            await asyncio.sleep(0.25)
        back = time.monotonic()
        await proc.stop()
        return samples, back

    samples, back = asyncio.run(run())
    assert len(samples) >= 8, samples
    for when, said in samples:  # whole seconds, at least 1: within 1.5 s of the truth
        assert abs(said - max(1.0, back - when)) <= 1.5, (said, back - when)
    assert samples[0][1] >= 3 and samples[-1][1] <= 2  # it counts down, not a constant


def test_crash_gives_503_with_retry_after_then_recovers():
    async def run():
        proc = engine(backoff=1.0)
        await proc.start()
        first = pids_in_tail(proc)[0]
        os.kill(first, signal.SIGKILL)
        for _ in range(50):
            if proc.state != "ready":
                break
            await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as err:
            proc.check()
        assert err.value.status_code == 503
        assert int(err.value.headers["Retry-After"]) >= 1
        assert "restarting" in str(err.value) or "starting" in str(err.value)
        for _ in range(200):
            if proc.state == "ready":
                break
            await asyncio.sleep(0.05)
        try:
            assert proc.state == "ready" and proc.restarts == 1
            body = requests.get(proc.base_url + "/health", timeout=5).json()
            assert body["pid"] != first
        finally:
            await proc.stop()

    asyncio.run(run())


def test_a_crash_loop_is_given_up_with_the_engine_output_in_the_error(tmp_path):
    crash = tmp_path / "crash"
    failed = []

    async def run():
        proc = engine("--crash-if", str(crash), max_restarts=2, on_failed=failed.append)
        await proc.start()
        crash.write_text("x")
        os.kill(pids_in_tail(proc)[0], signal.SIGKILL)
        for _ in range(200):
            if proc.state == "failed":
                break
            await asyncio.sleep(0.05)
        try:
            assert proc.state == "failed"
            with pytest.raises(Unavailable) as err:
                proc.check()
            assert "crash file present" in str(err.value)
            assert "max_restarts 2" in str(err.value)
        finally:
            await proc.stop()

    asyncio.run(run())
    assert failed and "crash file present" in failed[0]


def test_start_timeout_is_a_load_error_naming_the_option():
    async def run():
        proc = engine("--never-ready", start_timeout=2)
        with pytest.raises(ModelLoadError) as err:
            await proc.start()
        return err.value, pids_in_tail(proc)

    err, pids = asyncio.run(run())
    assert "start_timeout" in str(err) and "fake engine: pid" in str(err)
    assert wait_gone(pids, 15) == []


def test_an_engine_that_exits_while_starting_is_a_load_error_with_its_output(tmp_path):
    crash = tmp_path / "crash"
    crash.write_text("x")

    async def run():
        with pytest.raises(ModelLoadError) as err:
            await engine("--crash-if", str(crash)).start()
        return str(err.value)

    msg = asyncio.run(run())
    assert "exited with status 3" in msg and "crash file present" in msg


def test_a_missing_engine_command_is_a_load_error():
    async def run():
        proc = EngineProcess("fake", lambda port: ["/nonexistent/vllm", "serve"], start_timeout=10)
        with pytest.raises(ModelLoadError) as err:
            await proc.start()
        return str(err.value)

    assert "cannot start '/nonexistent/vllm'" in asyncio.run(run())


SUPERVISOR = textwrap.dedent("""
    import asyncio, sys, time
    sys.path.insert(0, {tests!r})
    from modelserve.engines.process import EngineProcess

    async def main():
        proc = EngineProcess("fake", lambda port: [sys.executable, {fake!r}, port, "--child"], start_timeout=20,
                             cleanup={clean!r})
        await proc.start()
        await asyncio.sleep(0.3)  # the child's pid line
        print(chr(10).join(proc.tail), flush=True)
        print("READY", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_survives_the_supervising_process(sig, tmp_path):
    """MLServer never unloads on shutdown and a worker can be killed: the guard's parent-death signal
    must still take the engine tree down."""
    script = tmp_path / "supervisor.py"
    clean = tmp_path / "engine-tmp"
    script.write_text(SUPERVISOR.format(tests=str(Path(__file__).parent), fake=FAKE, clean=str(clean)))
    log = tmp_path / "log"
    with open(log, "w") as out:
        sup = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "READY" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "READY" in log.read_text(), log.read_text()
    pids = [int(p) for p in re.findall(r"(?:child )?pid (\d+)", log.read_text())]
    assert len(pids) == 2 and all(alive(p) for p in pids) and clean.is_dir()
    sup.send_signal(sig)
    sup.wait(10)
    assert wait_gone(pids, 15) == [], log.read_text()
    deadline = time.monotonic() + 10
    while clean.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not clean.exists()  # the engine's temporary folder goes with it
