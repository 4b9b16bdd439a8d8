"""Connect to a Ray cluster, or start an isolated local one that we can stop by PID.

Rules learnt the hard way (see NOTES): never ``ray.init()`` without an address in tests (it
joins whatever cluster Ray's temp dir names), never ``ray stop`` (it kills every Ray process
on the machine). A job joins ``RAY_ADDRESS`` when given (that is how ``ray job submit`` runs
it), else starts a private cluster in its own temp dir that dies with the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any


def free_port() -> int:
    """One free port. For several, use :func:`reserve_ports`: separate calls can return the
    same port twice (each socket is closed before the next is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_ports(n: int, taken: Collection[int] = ()) -> list[int]:
    """``n`` distinct free TCP ports, none in ``taken``.

    Every socket stays bound until all ``n`` are chosen, so the kernel cannot hand out one port
    twice (the race that made Ray refuse to start: "dashboard_agent_grpc is trying to use a
    port number ... used by other components"). Bound on all interfaces: Ray's GCS and raylet
    listen on the machine address, so a port only free on 127.0.0.1 would not do.
    """
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("", 0))
            port = s.getsockname()[1]
            if port not in taken:  # held open either way: the next bind cannot return it
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


#: lines of ``ray start`` output that mean a chosen port was taken (by our own double pick, or
#: by another process between our pick and Ray's bind): the start is retried with new ports
PORT_CLASH = re.compile(r"used by other components|address already in use|"
                        r"failed to bind|port \d+ is (?:already )?in use|errno 98", re.IGNORECASE)


def is_port_clash(log: str) -> bool:
    """Whether a failed ``ray start``'s output says a port was taken."""
    return bool(PORT_CLASH.search(log))


#: a head whose GCS did not answer in time on a starved machine (seen with a load of 60 on 2
#: cores: "Failed to get node info b'RPC error: Deadline Exceeded'"): worth one more try too
TRANSIENT_START = re.compile(r"Failed to get node info|GCS has become overloaded")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None,
              what: str = "server") -> None:
    """Poll ``GET url`` until it answers 200; fail early if ``proc`` (the server) exits."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def short_temp_dir(prefix: str = "ef-ray-") -> str:
    """Ray's socket paths must stay under ~107 bytes: keep temp dirs short, under /tmp."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@contextlib.contextmanager
def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    quiet: bool = True,
) -> Iterator[dict[str, Any]]:
    """Join ``address`` / ``RAY_ADDRESS`` if set, else start a private local cluster.

    Yields ``{"address": ..., "started": bool}``; a cluster we started is shut down on exit,
    one we joined is left running.
    """
    import ray
    import ray.data

    if ray.is_initialized():  # already connected by the caller (tests, notebooks)
        yield {"address": ray.get_runtime_context().gcs_address, "started": False}
        return
    target = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "runtime_env": runtime_env}
    tmp = None
    if target:
        ray.init(address=target, **kwargs)
        started = False
    else:
        tmp = short_temp_dir()
        metrics_port = os.environ.get("EMBEDFORGE_METRICS_PORT")  # a fixed port to scrape
        if metrics_port:
            kwargs["_metrics_export_port"] = int(metrics_port)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _temp_dir=tmp, **kwargs)
        started = True
    if quiet:
        # our stages print their own progress lines; Ray Data's per-operator INFO logs drown them
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "started": started}
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


#: LocalCluster's own port fields, and the ``ray start`` flags of the other ports it chooses
PORT_FIELDS = ("port", "dashboard_port", "metrics_export_port")
AGENT_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "runtime-env-agent-port", "ray-client-server-port")


@dataclass
class LocalCluster:
    """A ``ray start --head`` cluster in its own temp dir and ports, stopped by PID.

    Used where a real head with a dashboard is needed (``ray job submit``, Serve, Prometheus).
    ``ray start --block`` keeps every Ray daemon in the process group we create, so stopping
    kills exactly that group (and any straggler whose command line names our temp dir).
    """

    num_cpus: int = 2
    dashboard: bool = True
    env: dict[str, str] = field(default_factory=dict)
    temp_dir: str = field(default_factory=short_temp_dir)
    # 0: chosen here, together with the agent ports (reserve_ports); a port given is kept
    port: int = 0
    dashboard_port: int = 0
    metrics_export_port: int = 0
    #: ``(n, taken) -> n ports``: how ports are chosen (tests inject a picker that clashes)
    pick_ports: Callable[[int, Collection[int]], list[int]] = reserve_ports
    #: a ``ray start`` that fails on a taken port is retried this often with fresh ports
    start_attempts: int = 3
    proc: subprocess.Popen[bytes] | None = None
    attempts: int = 0
    agent_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._given = {k for k in PORT_FIELDS if getattr(self, k)}
        self._choose_ports()

    def _choose_ports(self) -> None:
        """Every port we choose, in one reservation (none equal to each other or a given one)."""
        free = [k for k in PORT_FIELDS if k not in self._given]
        ports = self.pick_ports(len(free) + len(AGENT_PORTS),
                                [getattr(self, k) for k in self._given])
        for k, p in zip(free, ports, strict=False):
            setattr(self, k, p)
        self.agent_ports = dict(zip(AGENT_PORTS, ports[len(free):], strict=True))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def command(self) -> list[str]:
        """The ``ray start`` command line with this cluster's ports."""
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        return [
            ray_bin, "start", "--head", "--block", "--disable-usage-stats",
            f"--port={self.port}", f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
            f"--metrics-export-port={self.metrics_export_port}",
            f"--include-dashboard={'true' if self.dashboard else 'false'}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            # own agent and client-server ports: the defaults (52365, 10001, …) collide with
            # any other cluster on this machine
            *(f"--{flag}={port}" for flag, port in self.agent_ports.items()),
        ]

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start and wait until ready. A start that fails on a taken port (another process
        bound it between our choice and Ray's bind), or whose GCS timed out starting, is
        retried with fresh ports."""
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        # jobs submitted with a bare `python` entrypoint must find this interpreter's packages
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        deadline = time.monotonic() + timeout
        while True:
            self.attempts += 1
            self._log = open(os.path.join(self.temp_dir, "ray-start.log"), "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(self.command(), stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._ready():
                    return self
                time.sleep(0.5)
            exited = self.proc.poll() is not None
            tail = self.log_tail()
            self._kill()
            if exited and (is_port_clash(tail) or TRANSIENT_START.search(tail)) \
                    and self.attempts < self.start_attempts and time.monotonic() < deadline:
                self._choose_ports()  # and again, with ports chosen afresh
                continue
            self.stop()
            if exited:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {tail}")
            raise TimeoutError(f"local Ray cluster not ready after {timeout}s: {tail}")

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        if self.dashboard:
            req = urllib.request.Request(f"{self.dashboard_url}/api/version")
            token = self.auth_token()
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    return r.status == 200
            except urllib.error.HTTPError as exc:
                return exc.code == 401  # up, but token auth on and our token unknown
            except OSError:
                return False
        # not a bare connect to the GCS port: a foreign listener there would answer too
        return "Ray runtime started" in self.log_tail(1 << 16)

    @staticmethod
    def auth_token() -> str | None:
        """Ray >= 2.5x token auth: the token `ray start` generated (or RAY_AUTH_TOKEN)."""
        if os.environ.get("RAY_AUTH_TOKEN"):
            return os.environ["RAY_AUTH_TOKEN"]
        path = os.environ.get("RAY_AUTH_TOKEN_PATH", os.path.expanduser("~/.ray/auth_token"))
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None

    def client_env(self) -> dict[str, str]:
        """Environment for a client (`ray job submit`, a driver) talking to this cluster."""
        env = {"RAY_ADDRESS": self.dashboard_url}
        if self.auth_token():
            env["RAY_AUTH_MODE"] = "token"
        return env

    def submit(self, entrypoint: list[str], cwd: str, timeout: float = 600,
               working_dir: str = ".", agent_wait_s: float = 90) -> subprocess.CompletedProcess[str]:
        """``ray job submit --working-dir`` to this cluster, waiting for its job agent.

        Right after start the dashboard answers before the node's job agent has registered
        ("No available agent to submit job"): that answer is retried, nothing else is.
        """
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray_bin, "job", "submit", "--working-dir", working_dir, "--", *entrypoint]
        env = {**os.environ, **self.client_env()}
        deadline = time.monotonic() + agent_wait_s
        while True:
            res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                 env=env)
            if res.returncode == 0 or "No available agent" not in res.stderr + res.stdout:
                return res
            if time.monotonic() > deadline:
                return res
            time.sleep(2)

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(os.path.join(self.temp_dir, "ray-start.log"), "rb") as fh:
                return fh.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _kill(self, timeout: float = 20.0) -> None:
        """SIGTERM our process group, then SIGKILL what is left (by PID, never `ray stop`)."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info.get("cmdline") or [])
            if self.temp_dir in cmdline and p.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    p.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        """Kill every process of this cluster and remove its temp dir."""
        self._kill(timeout)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
