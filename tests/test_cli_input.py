"""Bad input is refused before anything starts; --dry-run shows the plan."""

import json
import re

import pytest
from azurite import ACCOUNT, ACCOUNT_KEY
from processes import cli


def assert_refused(result, message: str, home) -> None:
    assert result.returncode == 2
    assert message in result.stderr
    assert not (home / "local").exists(), "a job was started"


def test_unknown_config_key_is_refused_before_anything_starts(tmp_path, disttrain_home):
    result = cli("train", "--set", "train.stepz=3", "--set", f"run_dir={tmp_path / 'r'}")
    assert_refused(result, "unknown config key 'train.stepz'", disttrain_home)
    assert not (tmp_path / "r").exists()


def test_wrong_type_is_refused_before_anything_starts(disttrain_home):
    result = cli("train", "--set", "cluster.workers=two")
    assert_refused(result, "cluster.workers: got 'two'; accepted: an integer", disttrain_home)


def test_missing_data_directory_is_refused_before_anything_starts(tmp_path, disttrain_home):
    missing = tmp_path / "no-such-data"
    result = cli(
        "train",
        "--set",
        "data.source=image_folder",
        "--set",
        f"data.root={missing}",
        "--set",
        f"run_dir={tmp_path / 'r'}",
    )
    assert_refused(result, f"data.root: '{missing}' is not a folder", disttrain_home)


def test_a_missing_init_from_is_refused_before_anything_starts(
    tmp_path, builtin_data, disttrain_home
):
    missing = tmp_path / "base.weights.h5"
    result = cli(
        "train",
        "--set",
        f"data.root={builtin_data}",
        "--set",
        f"run_dir={tmp_path / 'r'}",
        "--set",
        f"train.init_from={missing}",
    )
    assert_refused(
        result, f"train.init_from: got '{missing}', which does not exist; accepted:", disttrain_home
    )


def test_unknown_launcher_lists_the_installed_ones(disttrain_home):
    result = cli("train", "--launcher", "slurm", env={"COLUMNS": "200"})
    assert_refused(result, "'slurm' is not one of 'helm', 'k8s', 'local'", disttrain_home)


def test_an_unknown_launcher_in_the_config_lists_the_installed_ones(disttrain_home):
    result = cli("train", "--set", "launcher.name=slurm")
    assert_refused(result, "launcher.name: got 'slurm'; accepted: helm, k8s, local", disttrain_home)


def test_dry_run_prints_every_task_command_and_tf_config(tmp_path, disttrain_home):
    result = cli("train", "--dry-run", "--set", f"run_dir={tmp_path / 'r'}", check=True)
    configs = {
        name: json.loads(tf)
        for name, tf in re.findall(r"\[(\S+)\]\n  TF_CONFIG=(.*)", result.stdout)
    }
    assert sorted(configs) == ["chief-0", "evaluator-0", "ps-0", "worker-0", "worker-1"]
    addresses = [a for role in configs["chief-0"]["cluster"].values() for a in role]
    assert len(set(addresses)) == len(addresses) == 4, addresses  # chief, ps, 2 workers
    assert set(configs["worker-1"]["cluster"]) == {"chief", "worker", "ps"}
    assert list(configs["evaluator-0"]["cluster"]) == ["evaluator"]
    assert result.stdout.count("-m disttrain task --config") == 5
    assert result.stdout.count("GRPC_FAIL_FAST=use_caller") == 5
    assert not (tmp_path / "r").exists() and not (disttrain_home / "local").exists()


def test_help_does_not_import_tensorflow_or_kubernetes():
    import subprocess
    import sys

    code = (
        "import sys; from disttrain.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('tensorflow', 'kubernetes', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_kubernetes_options_with_the_local_launcher_are_refused(disttrain_home):
    result = cli("train", "--context", "prod", "--dry-run")
    assert_refused(result, "--context does not apply to launcher 'local'", disttrain_home)


def test_an_unknown_role_for_logs_is_refused_with_the_roles_there_are():
    result = cli("logs", "mnist", "tensorboard", env={"COLUMNS": "200"})
    assert result.returncode == 2
    assert "'tensorboard' is not one of 'chief', 'worker', 'ps', 'evaluator'" in result.stderr


def test_a_dry_run_warns_about_a_host_path_scratch_as_submit_does(tmp_path):
    result = cli(
        "train", "-l", "k8s", "--dry-run", "-c", "configs/azure.yaml",
        "--set", "launcher.k8s.storage.scratch_host_path=/mnt/ssd",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'WARNING: not "restricted" Pod Security' in result.stderr
    assert "hostPath" in result.stderr


def test_a_bad_config_in_a_run_dir_is_named_as_the_run_dirs_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("train:\n  steps: 0\n")
    result = cli("eval", "--run-dir", str(run_dir), "--once")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"train.steps: got 0; accepted: an integer >= 1 (in config file '{run_dir}/config.yaml')"
    )


def test_overrides_that_cannot_be_applied_are_reported_together():
    result = cli("train", "--dry-run", "--set", "train.steps.x=1", "--set", "data.source.y=2")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "error: the config has 2 problems:"
    overrides = [line.split(":")[0].strip() for line in lines[1:]]
    assert overrides == ["override 'train.steps.x=1'", "override 'data.source.y=2'"]


# Nothing listens on port 9 (discard): every request fails to connect.
UNREACHABLE_STORAGE = (
    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
    f"BlobEndpoint=http://127.0.0.1:9/{ACCOUNT};"
)


@pytest.mark.parametrize(
    ("verb", "what"),
    [(["eval", "--once"], "cannot read config.yaml"), (["board"], "cannot be read")],
)
def test_eval_and_board_on_unreachable_storage_say_so_in_one_line(verb, what):
    env = {"AZURE_STORAGE_CONNECTION_STRING": UNREACHABLE_STORAGE}
    result = cli(*verb, "--run-dir", "az://runs/x", env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: run dir az://runs/x: {what}: cannot reach the storage endpoint "
        "(ServiceRequestError: Cannot connect to host 127.0.0.1:9 ssl:default "
        "[Connect call failed ('127.0.0.1', 9)])"
    ]
    assert ACCOUNT_KEY not in result.stderr
