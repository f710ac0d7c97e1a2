"""Waiting for peers: bounded, and the error names who never answered."""

import json
import socket

import pytest
from processes import cli

from disttrain.config import config_from_dict
from disttrain.done import write_done
from disttrain.peers import PeerTimeout, accepts, resolves, wait_for_peers
from disttrain.storage import RunDir
from disttrain.task import ended


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


@pytest.mark.parametrize("role", ["ps", "worker", "chief"])
def test_a_task_restarted_after_the_job_ended_stops_instead_of_failing_its_peer_wait(
    tmp_path, role
):
    """A ps or worker whose new pod starts after the chief wrote DONE (it was evicted near
    the end), or a chief restarted with its ps after DONE (the ps, SIGTERMed, exited just
    before the finished chief did), finds its peers gone: it stops at once, exit 0, instead
    of failing its peer wait (exit 3) and being restarted until the budget is spent."""
    run = tmp_path / "run"
    run.mkdir()
    write_done(RunDir(str(run)), 50)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"run_dir: {run}\ntrain:\n  steps: 50\n"
        "cluster:\n  workers: 1\n  ps: 1\n  peer_timeout_seconds: 600\n"
    )
    gone = "ended-job-chief-0.invalid:2222"  # a finished pod's name no longer resolves
    tf_config = {
        "cluster": {
            "chief": [gone],
            "ps": [f"127.0.0.1:{free_port()}"],
            "worker": [f"127.0.0.1:{free_port()}"],
        },
        "task": {"type": role, "index": 0},
    }
    result = cli(
        "task", "--config", str(config), env={"TF_CONFIG": json.dumps(tf_config)}, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"{role}-0 | stopping | the chief wrote DONE: the job ended before its peers met"
        in result.stdout + result.stderr
    )
    if role == "chief":  # it took the run dir's lease first, and gave it back
        assert "lease | released" in result.stdout + result.stderr


def test_a_stale_done_of_an_earlier_shorter_run_does_not_end_the_peer_wait(tmp_path):
    run = RunDir(str(tmp_path))
    write_done(run, 50)  # the run dir was re-submitted to train 100 steps
    config = config_from_dict({"run_dir": str(tmp_path), "train": {"steps": 100}})
    assert not ended(config)
    write_done(run, 100)
    assert ended(config)
