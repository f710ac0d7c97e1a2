"""Task ports: the local launcher's are distinct, free and out of the kernel's ephemeral
range; a task whose port is taken anyway stops at once and names it."""

import json
import socket

import pytest
from processes import cli

from launchers import local
from launchers.local import free_ports


def listening_on(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


@pytest.fixture
def twenty_candidate_ports(monkeypatch) -> range:
    """A machine whose port ranges leave the tasks only twenty ports, all of them free."""
    first = next(p for p in range(20000, 30000, 20) if all(map(bindable, range(p, p + 20))))
    monkeypatch.setattr(local, "FIRST_TASK_PORT", first)
    monkeypatch.setattr(local, "_ephemeral_port_range", lambda: (first + 20, 65535))
    return range(first, first + 20)


def test_ports_are_distinct_and_skip_the_ones_in_use(twenty_candidate_ports):
    in_use = [listening_on(port) for port in twenty_candidate_ports[::2]]
    try:
        ports = free_ports(10)
    finally:
        for sock in in_use:
            sock.close()
    assert sorted(ports) == list(twenty_candidate_ports[1::2])


def test_with_every_candidate_taken_the_kernel_picks_distinct_ports(twenty_candidate_ports):
    in_use = [listening_on(port) for port in twenty_candidate_ports]
    try:
        ports = free_ports(6)
    finally:
        for sock in in_use:
            sock.close()
    assert len(set(ports)) == 6 and not set(ports) & set(twenty_candidate_ports)


def test_ports_are_distinct_and_outside_the_ephemeral_range():
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    for _ in range(50):
        ports = free_ports(40)
        assert len(set(ports)) == 40
        assert all(local.FIRST_TASK_PORT <= p < low or p > high for p in ports), ports


def test_a_server_whose_port_is_taken_stops_as_unrecoverable_and_names_the_address(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ncluster:\n  workers: 1\n  ps: 1\n")
    chief, ps, worker = free_ports(3)
    tf_config = {
        "cluster": {
            "chief": [f"127.0.0.1:{chief}"],
            "ps": [f"127.0.0.1:{ps}"],
            "worker": [f"127.0.0.1:{worker}"],
        },
        "task": {"type": "ps", "index": 0},
    }
    with listening_on(ps):
        result = cli(
            "task", "--config", str(config), env={"TF_CONFIG": json.dumps(tf_config)}, timeout=120
        )
    assert result.returncode == 4, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"error: could not listen on the port of 127.0.0.1:{ps} (on every address, as "
        "TensorFlow binds): another process holds the port"
    )


def test_the_first_port_is_a_launcher_option_the_plan_keeps_to():
    from launchers import load_job

    config, launcher = load_job(None, ["launcher.local.first_port=20000"], "local")
    plan = launcher.plan(config)
    addresses = {
        address
        for t in plan.tasks
        for addresses in json.loads(t.env["TF_CONFIG"])["cluster"].values()
        for address in addresses
    }
    assert len(addresses) == 5 and all(int(a.rsplit(":", 1)[1]) >= 20000 for a in addresses)
