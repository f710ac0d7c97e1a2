"""Waiting for peers: bounded, and the error names who never answered."""

import json
import socket

import pytest
from processes import cli

from disttrain.peers import PeerTimeout, accepts, resolves, wait_for_peers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wait_returns_once_every_peer_accepts():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        wait_for_peers({"ps-0": address}, accepts, timeout=5, what="accept connections")


def test_timeout_names_the_unreachable_peer_and_its_address():
    closed = f"127.0.0.1:{free_port()}"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        up = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(PeerTimeout) as error:
            wait_for_peers(
                {"ps-0": up, "worker-1": closed},
                accepts,
                timeout=1,
                what="accept connections",
                poll=0.1,
            )
    assert str(error.value) == (f"peers did not accept connections within 1s: worker-1 ({closed})")


def test_unresolvable_name_does_not_resolve():
    assert not resolves("no-such-host.invalid:2222")
    assert resolves("localhost:2222")


def test_chief_task_exits_with_a_clear_error_when_a_ps_never_comes_up(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\ncluster:\n  workers: 1\n  ps: 1\n  peer_timeout_seconds: 2\n"
    )
    ps = f"127.0.0.1:{free_port()}"
    tf_config = {
        "cluster": {
            "chief": [f"127.0.0.1:{free_port()}"],
            "ps": [ps],
            "worker": [f"127.0.0.1:{free_port()}"],
        },
        "task": {"type": "chief", "index": 0},
    }
    result = cli(
        "task", "--config", str(config), env={"TF_CONFIG": json.dumps(tf_config)}, timeout=60
    )
    assert result.returncode == 3
    assert f"ps-0 ({ps})" in result.stderr and "within 2s" in result.stderr
