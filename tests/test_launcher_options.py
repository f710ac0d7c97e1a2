"""Launcher options: each launcher declares its `launcher.<section>`, the config loader
validates it with the trainer's error format, and the trainer's config never holds it."""

import re
import subprocess
import sys

import pytest
import yaml

from disttrain.config import ConfigError, dump_config, load_config
from launchers import get_launcher, load_job
from launchers.k8s_options import K8sOptions
from launchers.local import LocalOptions


def test_the_default_config_runs_the_local_launcher_with_its_defaults():
    config, launcher = load_job(None, [])
    assert launcher.name == "local"
    assert launcher.options == {"local": LocalOptions()}
    assert not hasattr(config, "launcher")


def test_the_tasks_config_holds_no_launcher_settings():
    config, _ = load_job("configs/azure.yaml", [])
    assert "launcher" not in yaml.safe_load(dump_config(config))
    # and an older config.yaml that still holds one loads for the tasks
    assert load_config("configs/azure.yaml").name == config.name


def test_an_unknown_launcher_section_names_the_sections_installed():
    with pytest.raises(ConfigError) as error:
        load_job(None, ["launcher.k8z.namespace=ml"])
    assert str(error.value).startswith("unknown config key 'launcher.k8z'")
    assert "helm, k8s, local" in str(error.value)


def test_launcher_problems_come_with_the_trainers_all_at_once():
    with pytest.raises(ConfigError) as error:
        load_job(
            None, ["train.steps=0", "launcher.k8s.port=0", "launcher.k8s.worker.cpu=2 cores"], "k8s"
        )
    lines = str(error.value).splitlines()
    assert lines[0] == "the config has 3 problems:"
    keys = sorted(line.strip().split(":")[0] for line in lines[1:])
    assert keys == ["launcher.k8s.port", "launcher.k8s.worker.cpu", "train.steps"]


def test_only_the_chosen_launcher_is_imported_and_reads_its_sections():
    code = (
        "import sys; from launchers import load_job; "
        "config, launcher = load_job('configs/azure.yaml', ['launcher.k8s.port=0'], 'local'); "
        "print(launcher.name, sorted(m for m in sys.modules if m.startswith('launchers.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the k8s section (port 0 included) is not local's
    assert out.stdout.split(" ", 1)[0] == "local"
    assert "launchers.kubernetes" not in out.stdout and "launchers.helm" not in out.stdout


def test_flag_values_are_taken_as_typed_by_every_verb():
    _, train = load_job("configs/azure.yaml", [], "k8s", {"namespace": "012", "context": "no"})
    assert (train.options["k8s"].namespace, train.options["k8s"].context) == ("012", "no")
    status = get_launcher("k8s", {"namespace": "012", "context": "no"})
    assert status.options["k8s"] == train.options["k8s"].__class__(namespace="012", context="no")


def test_the_namespace_flag_is_the_k8s_options_namespace_key():
    _, launcher = load_job(None, [], "k8s", {"namespace": "ml", "context": None})
    assert launcher.options["k8s"].namespace == "ml"
    assert get_launcher("helm", {"namespace": "ml"}).options["k8s"] == K8sOptions(namespace="ml")
    with pytest.raises(ConfigError, match="--namespace does not apply to launcher 'local'"):
        load_job(None, [], "local", {"namespace": "ml"})
    with pytest.raises(ConfigError, match="--namespace does not apply to launcher 'local'"):
        load_job("configs/azure.yaml", ["launcher.name=local"], None, {"namespace": "ml"})
    with pytest.raises(ConfigError, match="launcher.k8s.namespace: got"):
        load_job(None, [], "k8s", {"namespace": "Bad_NS"})


def test_the_trainer_imports_no_launcher_options():
    code = (
        "import sys, disttrain.config, disttrain.cluster; "
        "print(sorted(m for m in sys.modules if m.startswith('launchers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "launcher.k8s.worker.cpu=two",
            "launcher.k8s.worker.cpu: got 'two'; accepted: a Kubernetes quantity",
        ),
        ("launcher.k8s.ps.memory=8GB", "launcher.k8s.ps.memory: got '8GB'"),
        ("launcher.k8s.storage.scratch_size_limit=lots", "scratch_size_limit: got 'lots'"),
        (
            "launcher.k8s.worker.node_selector={pool: gpu nodes}",
            "node_selector: got {'pool': 'gpu nodes'}",
        ),
        ("launcher.k8s.chief.node_selector={'bad key!': x}", "chief.node_selector: got"),
        (
            "launcher.k8s.worker.tolerations=[{key: spot, operator: Exists, value: x}]",
            "tolerations: got [{'key': 'spot', 'operator': 'Exists', 'value': 'x', 'effect': '', "
            "'toleration_seconds': None}]",
        ),
        ("launcher.k8s.worker.tolerations=[{key: 'a b', value: x}]", "worker.tolerations: got"),
        ("launcher.k8s.worker.tolerations=[{value: x}]", "worker.tolerations: got"),
        ("launcher.k8s.image_pull_secrets=[ACR_Pull]", "image_pull_secrets: got ['ACR_Pull']"),
    ],
)
def test_values_kubernetes_would_refuse_are_refused_with_their_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_job(None, [override], "k8s")


def test_values_kubernetes_accepts_are_accepted():
    _, launcher = load_job(
        None,
        [
            "launcher.name=k8s",
            "launcher.k8s.worker.cpu=500m",
            "launcher.k8s.worker.memory=1.5Gi",
            "launcher.k8s.storage.scratch_size_limit=100Gi",
            "launcher.k8s.worker.node_selector={kubernetes.io/os: linux, agentpool: gpu_1, x: ''}",
            "launcher.k8s.worker.tolerations=[{key: spot, operator: Exists}, {operator: Exists}]",
        ],
    )
    assert launcher.options["k8s"].worker.node_selector["kubernetes.io/os"] == "linux"


def test_a_refused_list_item_is_one_problem_not_two():
    with pytest.raises(ConfigError) as error:
        load_job(None, ["launcher.k8s.worker.tolerations=[{key: spot, operator: Exist}]"], "k8s")
    assert str(error.value).startswith("launcher.k8s.worker.tolerations[0].operator: got 'Exist'")
    assert "\n" not in str(error.value)
