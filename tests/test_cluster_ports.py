"""LocalCluster chooses all its ports in one reservation and retries a start that clashed.

The pure part (reserve_ports, is_port_clash, the ports a cluster chooses) runs without Ray; the
integration part starts real ``ray start`` heads: several in a row, and one whose first port
choice really clashes (Ray refuses it) and is retried.
"""

from __future__ import annotations

import shutil
import socket

import pytest

from embedforge.cluster import AGENT_PORTS, LocalCluster, is_port_clash, reserve_ports

# the line Ray 2.60 printed when two of our separate free_port() calls returned one port
RAY_CLASH = ("ValueError: Ray component dashboard_agent_grpc is trying to use a port number "
             "53863 that is used by other components.")


def cluster_ports(c: LocalCluster) -> list[int]:
    return [c.port, c.dashboard_port, c.metrics_export_port, *c.agent_ports.values()]


def test_reserved_ports_are_distinct_free_and_avoid_the_taken_ones():
    for _ in range(300):
        ports = reserve_ports(7)
        assert len(set(ports)) == 7
    held = socket.socket()
    held.bind(("", 0))
    taken = held.getsockname()[1]
    try:
        for _ in range(50):
            assert taken not in reserve_ports(5, taken=[taken])
    finally:
        held.close()
    # all free at once: each can be bound while the others are
    socks = []
    try:
        for p in reserve_ports(7):
            s = socket.socket()
            socks.append(s)
            s.bind(("", p))
    finally:
        for s in socks:
            s.close()


def test_port_clash_lines_are_told_from_other_failures():
    assert is_port_clash(RAY_CLASH)
    assert is_port_clash("OSError: [Errno 98] Address already in use")
    assert is_port_clash("Failed to bind to address 0.0.0.0:6379")
    assert not is_port_clash("ValueError: --num-cpus must be a non-negative integer")
    assert not is_port_clash("")
    assert not is_port_clash("INFO node.py:438 -- Failed to get node info b'RPC error: "
                             "Deadline Exceeded'")  # retried too, but no clash


def test_a_cluster_chooses_every_port_distinct_and_keeps_a_given_one():
    seen_clash = 0
    for _ in range(200):
        c = LocalCluster(num_cpus=1, temp_dir="/nonexistent-unused")
        ports = cluster_ports(c)
        assert len(ports) == 3 + len(AGENT_PORTS)
        seen_clash += len(set(ports)) != len(ports)
    assert seen_clash == 0
    held = socket.socket()
    held.bind(("", 0))
    given = held.getsockname()[1]
    held.close()
    c = LocalCluster(num_cpus=1, dashboard_port=given, temp_dir="/nonexistent-unused")
    assert c.dashboard_port == given and given not in [c.port, *c.agent_ports.values()]
    # a re-choice (after a clash) keeps the given port and changes the chosen ones
    before = cluster_ports(c)
    c._choose_ports()
    assert c.dashboard_port == given and cluster_ports(c) != before
    flags = " ".join(c.command())
    assert all(f"--{flag}={port}" in flags for flag, port in c.agent_ports.items())


@pytest.mark.integration
@pytest.mark.slow
def test_many_clusters_in_a_row_start_without_a_port_clash():
    starts = []
    for _ in range(4):
        c = LocalCluster(num_cpus=1, dashboard=False)
        try:
            c.start(timeout=120)
            starts.append((c.attempts, is_port_clash(c.log_tail(1 << 16))))
        finally:
            c.stop()
    assert starts == [(1, False)] * 4


@pytest.mark.integration
def test_a_start_that_really_clashes_is_retried_with_fresh_ports(tmp_path):
    calls: list[list[int]] = []

    def clashing(n: int, taken):
        ports = reserve_ports(n, taken)
        if not calls:  # the first choice gives two components one port, as the race did
            ports[-2] = ports[-3]
        calls.append(ports)
        return ports

    c = LocalCluster(num_cpus=1, dashboard=False, pick_ports=clashing)
    try:
        c.start(timeout=120)
        assert c.attempts == 2 and len(calls) == 2
        assert len(set(cluster_ports(c))) == len(cluster_ports(c))
    finally:
        c.stop()
    # and without retries left, the clash is the error, with Ray's words
    c = LocalCluster(num_cpus=1, dashboard=False, start_attempts=1,
                     pick_ports=lambda n, taken: _dup(reserve_ports(n, taken)))
    with pytest.raises(RuntimeError, match="used by other components"):
        c.start(timeout=120)
    shutil.rmtree(c.temp_dir, ignore_errors=True)


def _dup(ports: list[int]) -> list[int]:
    ports[-1] = ports[-2]
    return ports
