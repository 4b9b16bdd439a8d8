"""The embedded LLM's life cycle against real server processes (the fake OpenAI-compatible
server, made to crash or answer off-schema): readiness probe, fallback, watchdog."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from embedforge.config import JobFailed
from embedforge.llm.local_server import local_llm, probe_completion
from embedforge.synth.config import SynthConfig

pytestmark = pytest.mark.integration


def fake(*extra: str, responder: str = "synth"):
    """The fake LLM server as an engine command (port -> argv)."""
    return lambda port: [sys.executable, "-m", "embedforge.testing.fake_llm", "--port", str(port),
                         "--responder", responder, *extra]


def cfg(tmp_path) -> SynthConfig:
    return SynthConfig(input=str(tmp_path), output=str(tmp_path / "out"),
                       local_llm={"startup_timeout_s": 60, "probe_timeout_s": 30})


def test_an_engine_that_crashes_on_its_first_completion_is_replaced(tmp_path):
    logs: list[str] = []
    engines = [("llama_cpp", fake("--crash-after", "1")), ("transformers", fake())]
    with local_llm(cfg(tmp_path), logs.append, engines=engines) as llm:
        assert llm.backend == "transformers"
        assert probe_completion(llm.base_url, 10)["text"]
    fallback = [line for line in logs if "falling back" in line]
    assert len(fallback) == 1, logs
    assert "llama_cpp failed its readiness probe" in fallback[0]
    assert "exited with code -11" in fallback[0]  # SIGSEGV, as llama.cpp died
    assert str(tmp_path / "out" / "_llm_server.log") in fallback[0]


def test_no_ready_engine_is_one_clear_error(tmp_path):
    engines = [("llama_cpp", fake("--crash-after", "1"))]
    with pytest.raises(JobFailed, match=r"did not become ready: llama_cpp: server exited with "
                                        r"code -11 on its first completion\. Server log: .*_llm_server\.log"), \
            local_llm(cfg(tmp_path), lambda *_: None, engines=engines):
        pass


def test_a_server_that_answers_off_schema_is_not_ready(tmp_path):
    engines = [("echo", fake(responder="echo"))]
    with pytest.raises(JobFailed, match="does not follow the schema"), \
            local_llm(cfg(tmp_path), lambda *_: None, engines=engines):
        pass


def test_the_watchdog_stops_the_job_when_the_server_dies(tmp_path):
    interrupted = False
    try:
        with local_llm(cfg(tmp_path), lambda *_: None, engines=[("fake", fake())]) as llm:
            # t0 first: on a loaded machine the watchdog may interrupt the very next line
            t0 = time.monotonic()
            os.kill(llm.watch.proc.pid, signal.SIGKILL)
            time.sleep(10)  # interrupted long before this ends
    except KeyboardInterrupt:
        interrupted = True
    elapsed = time.monotonic() - t0
    # seen once in CI (not reproduced since): say what the watchdog saw if it happens again
    assert interrupted, (f"no KeyboardInterrupt within {elapsed:.1f}s: watch.died={llm.watch.died}, "
                         f"server poll()={llm.watch.proc.poll()}, "
                         f"watch thread alive={llm.watch._thread.is_alive()}")
    assert elapsed < 5
    assert llm.watch.died == -signal.SIGKILL
    assert "exited with code -9 mid-run" in str(llm.watch.error())
    assert str(tmp_path / "out" / "_llm_server.log") in str(llm.watch.error())


def test_the_watchdog_stops_a_job_started_with_sigint_ignored(tmp_path):
    """A job run in the background from a script (``cmd &``) inherits SIGINT ignored; the
    watchdog must still interrupt it, and give the job's handler back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupted = False
        try:
            with local_llm(cfg(tmp_path), lambda *_: None, engines=[("fake", fake())]) as llm:
                os.kill(llm.watch.proc.pid, signal.SIGKILL)
                time.sleep(10)  # interrupted long before this ends
        except KeyboardInterrupt:
            interrupted = True
        assert interrupted
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
