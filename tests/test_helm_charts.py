"""The Helm charts: `helm lint --strict`, strict schemas, and the same objects as the Python
builders from the same values (a differential test: one input, both renderers, whole objects).

Uses the real helm 4 binary that `make test` installs into .tools/bin (scripts/install-tools.sh).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate.utils import validate
from test_e2e_helm import sample_values

from disttrain.config import Config, ConfigError, config_from_dict
from launchers import load_job
from launchers.chart_schema import main as chart_schema_main
from launchers.chart_schema import schema_text
from launchers.chart_values import RELEASE_SUFFIX, values_from_config
from launchers.helm import CHARTS_DIR, HelmOptions, helm_binary, plan_job
from launchers.k8s_objects import job_objects, objects_from_values
from launchers.k8s_options import K8sOptions
from launchers.pod_security import restricted_violations

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ("distrib-tensorflow", "eval-tensorflow", "tensorboard")
K8S_VERSIONS = ("1.37.0", "1.26.0")
EXAMPLE_VALUES = ROOT / "configs" / "values.override.yaml"
PLANTED_KEY = "PLANTEDkey0123456789+/abcdefSECRETVALUE=="
BASE = [
    "name=mnist",
    "run_dir=/azure/tfshare/runs/mnist",
    "launcher.k8s.namespace=ml",
    "launcher.k8s.storage.azure_file_share=tfshare",
    "launcher.k8s.storage.secret=azure-storage",
    "launcher.k8s.tensorboard.enabled=true",
]
SHAPES = {
    "1w0ps": [
        "cluster.workers=1",
        "cluster.ps=0",
        "cluster.hung_task_seconds=0",
        # TensorBoard reached by port-forward alone: its policy has no ingress rule.
        "launcher.k8s.tensorboard.allowed_from.same_namespace=false",
    ],
    "2w1ps": ["cluster.workers=2", "cluster.ps=1", "launcher.k8s.worker.gpus=1"],
    "4w2ps": [
        "cluster.workers=4",
        "cluster.ps=2",
        "cluster.hung_task_seconds=90",
        "launcher.k8s.worker.node_selector={jobrole: worker}",
        "launcher.k8s.ps.node_selector={jobrole: ps}",
        "launcher.k8s.ps.tolerations=[{key: dedicated, operator: Equal, value: ps, "
        "effect: NoSchedule}]",
        "launcher.k8s.storage.scratch_size_limit=50Gi",
        "launcher.k8s.active_deadline_seconds=3600",
        "launcher.k8s.ttl_seconds_after_finished=60",
        "launcher.k8s.tensorboard.allowed_from.namespaces=[ingress-nginx]",
        "launcher.k8s.tensorboard.allowed_from.cidrs=[10.8.0.0/16, 2001:db8::/64]",
    ],
    # Blob through workload identity: a service account and the account's name, no Secret.
    "1w1ps-identity": [
        "cluster.workers=1",
        "cluster.ps=1",
        "run_dir=az://runs/mnist",
        "launcher.k8s.storage.secret=",
        "launcher.k8s.storage.azure_file_share=",
        "launcher.k8s.service_account=trainer",
        "launcher.k8s.storage.account_name=mystorage",
        "launcher.k8s.image_pull_secrets=[acr-pull]",
    ],
}
CASES = [(shape, evaluator) for shape in SHAPES for evaluator in (True, False)]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def config_for(shape: str, evaluator: bool) -> tuple[Config, K8sOptions]:
    shapes = {**SHAPES, **SHAPES_BEYOND_RESTRICTED}
    overrides = [*BASE, *shapes[shape], f"eval.enabled={str(evaluator).lower()}"]
    config, launcher = load_job(None, overrides, "helm")
    return config, launcher.options["k8s"]


def render(config: Config, k8s: K8sOptions) -> str:
    """What `train -l helm --dry-run` prints for this job: `helm template` of its releases."""
    return plan_job(config, k8s, HelmOptions()).render()


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, bool], list[dict]]:
    """helm template objects for every launcher case the restricted standard admits."""
    return {case: documents(render(*config_for(*case))) for case in CASES}


def test_install_tools_gives_helm_4():
    assert helm("version", "--short").stdout.startswith("v4.")


@pytest.mark.parametrize("chart", CHARTS)
def test_charts_pass_helm_lint_strict(chart):
    result = helm("lint", "--strict", str(CHARTS_DIR / chart), "-f", str(EXAMPLE_VALUES))
    assert "0 chart(s) failed" in result.stdout


def test_charts_link_the_one_shared_helper_values_and_schema():
    """One copy in launchers/charts/_shared, a relative link in each chart (it survives a
    clone anywhere); `_shared` has no Chart.yaml, so nothing takes it for a chart."""
    shared = CHARTS_DIR / "_shared"
    assert not (shared / "Chart.yaml").exists()
    for chart in CHARTS:
        for name in ("templates/_disttrain.tpl", "values.yaml", "values.schema.json"):
            link = CHARTS_DIR / chart / name
            assert link.is_symlink() and not os.path.isabs(os.readlink(link)), link
            assert link.resolve() == (shared / Path(name).name).resolve(), link


# ---------------------------------------------------------------- one input, two renderers
#
# Every values file the charts are given here is rendered by `helm template` and by the
# Python builders (`objects_from_values`), and the two must give the same objects. Only what
# legitimately differs is normalised, in `comparable`.


def comparable(objects: list[dict], name: str) -> dict[tuple[str, str], dict]:
    """Objects by (kind, name), normalised where Helm and the Python builders may differ:
    helm template lists them by kind per chart, Python in creation order, so they are
    compared as a mapping, whole, but for these three things:"""
    found = {}
    for obj in json.loads(json.dumps(objects)):
        labels = obj["metadata"]["labels"]
        # 1. Helm's bookkeeping labels on each chart-made object (not on the pods): who
        #    installed it and from which chart version. Python's objects are not Helm's.
        if labels.pop("app.kubernetes.io/managed-by", "Helm") != "Helm":
            raise AssertionError(f"{obj['metadata']['name']}: not managed by Helm")
        labels.pop("helm.sh/chart", None)
        # 2. The eval chart installs on its own, so it carries its own copy of the config,
        #    NAME-eval-config; the k8s launcher's evaluator mounts the job's NAME-config.
        #    Both copies must hold the same config: a second one must equal the first.
        _rename_config_map(obj, f"{name}-eval-config", f"{name}-config")
        # 3. The config as the tasks load it, not as text: the chart writes `values.config`
        #    as given (toYaml sorts keys) with its own keys laid over it, Python dumps the
        #    resolved config; the tasks read either through the same loader.
        if obj["kind"] == "ConfigMap":
            obj["data"]["config.yaml"] = config_from_dict(
                yaml.safe_load(obj["data"]["config.yaml"])
            )
        key = (obj["kind"], obj["metadata"]["name"])
        assert found.setdefault(key, obj) == obj, f"two different {key}"
    return found


def _rename_config_map(obj: dict, old: str, new: str) -> None:
    if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == old:
        obj["metadata"]["name"] = new
    for volume in obj.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
        if volume.get("configMap", {}).get("name") == old:
            volume["configMap"]["name"] = new


def assert_same_objects(helm_objects: list[dict], python_objects: list[dict], name: str) -> None:
    charts, python = comparable(helm_objects, name), comparable(python_objects, name)
    assert sorted(charts) == sorted(python)
    for key, obj in python.items():
        assert charts[key] == obj, key


# The launcher's cases, plus storage the restricted standard refuses (hostPath scratch) and a
# claim instead of an inline share, with a NoExecute toleration that has seconds.
LAUNCHER_CASES = {
    **{
        f"{shape}-{'eval' if evaluator else 'noeval'}": (shape, evaluator)
        for shape, evaluator in CASES
    },
    "claim-hostpath": ("claim-hostpath", True),
}
SHAPES_BEYOND_RESTRICTED = {
    "claim-hostpath": [
        "cluster.workers=1",
        "cluster.ps=1",
        "launcher.k8s.storage.azure_file_claim=tf-share-claim",
        "launcher.k8s.storage.scratch_host_path=/mnt/scratch",
        "launcher.k8s.ps.tolerations=[{key: spot, operator: Exists, effect: NoExecute, "
        "toleration_seconds: 30}]",
    ],
}


@pytest.mark.parametrize("case", sorted(LAUNCHER_CASES))
def test_the_charts_render_the_launchers_values_as_the_python_builders_do(case):
    config, k8s = config_for(*LAUNCHER_CASES[case])
    plan = plan_job(config, k8s, HelmOptions())
    charts = [chart for _, chart in plan.releases]
    python = objects_from_values(plan.values, plan.k8s.namespace, charts=charts)
    # The values file carries the whole job: read back, it builds what the k8s launcher sends.
    assert python == job_objects(config, plan.k8s)
    assert_same_objects(documents(plan.render()), python, config.name)


def test_the_azure_example_config_renders_the_same_through_both():
    config, launcher = load_job("configs/azure.yaml", ["launcher.k8s.namespace=ml"], "helm")
    plan = plan_job(config, launcher.options["k8s"], HelmOptions())
    charts = [chart for _, chart in plan.releases]
    python = objects_from_values(plan.values, "ml", charts=charts)
    assert_same_objects(documents(plan.render()), python, config.name)


def helm_template(values: dict, release: str, tmp_path: Path) -> list[dict]:
    """The three charts installed by hand, as the 2017 sample's README does: releases
    RELEASE, RELEASE-eval and RELEASE-tensorboard, with one values file."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    found = []
    for chart in CHARTS:
        release_ = release + RELEASE_SUFFIX[chart]
        target = ["--namespace", "ml", "-f", str(path)]
        found += documents(helm("template", release_, str(CHARTS_DIR / chart), *target).stdout)
    return found


def example_values(**changes) -> dict:
    values = yaml.safe_load(EXAMPLE_VALUES.read_text())
    return {**values, **changes}


@pytest.mark.parametrize(
    ("case", "release"),
    [
        ("example", "mnist"),
        ("example-eval-once", "mnist"),
        ("2017-sample", "sample"),
        ("e2e-sample", "sample"),
        ("cluster-left-out", "mnist"),
    ],
)
def test_the_charts_render_values_files_as_the_python_builders_do(case, release, tmp_path):
    values = {
        "example": example_values(),
        "example-eval-once": example_values(eval={"once": True}),
        "2017-sample": yaml.safe_load(legacy_values(tmp_path).read_text()),
        # What the test cluster installs by hand (tests/test_e2e_helm.py), rendered here too.
        "e2e-sample": sample_values("ml", "sample"),
        # The chart's cluster keys (values.yaml's defaults) win over the config's.
        "cluster-left-out": {
            **{k: v for k, v in example_values().items() if k != "cluster"},
            "config": {"cluster": {"workers": 4, "ps": 2, "max_restarts": 7}},
        },
    }[case]
    python = objects_from_values(values, "ml", release)
    assert_same_objects(
        helm_template(values, release, tmp_path), python, python[0]["metadata"]["name"]
    )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs").glob("*values*.yaml")), ids=lambda path: path.name
)
def test_every_values_file_in_configs_renders_as_the_python_builders_do(path, tmp_path):
    """Whatever values file lands in configs/ is covered, not only the ones named above."""
    values = yaml.safe_load(path.read_text())
    python = objects_from_values(values, "ml", "mnist")
    assert_same_objects(
        helm_template(values, "mnist", tmp_path), python, python[0]["metadata"]["name"]
    )


def test_the_charts_config_map_holds_the_same_resolved_config():
    config, k8s = config_for("2w1ps", True)
    objects = by_key(documents(render(config, k8s)))
    for name in ("mnist-config", "mnist-eval-config"):
        text = objects[("ConfigMap", name)]["data"]["config.yaml"]
        assert config_from_dict(yaml.safe_load(text)) == config


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_chart_object_validates_strictly_and_meets_restricted(rendered, version):
    for helm_objects in rendered.values():
        for obj in helm_objects:
            validate(obj, version, strict=True)
            assert restricted_violations(obj) == []


def test_the_example_values_file_serves_all_three_charts(tmp_path):
    for chart in CHARTS:
        out = helm("template", "mnist", str(CHARTS_DIR / chart), "-f", str(EXAMPLE_VALUES)).stdout
        for obj in documents(out):
            validate(obj, K8S_VERSIONS[0], strict=True)
            assert obj["metadata"]["name"].startswith("mnist")


def test_eval_chart_runs_once_when_asked():
    out = helm(
        "template",
        "m",
        str(CHARTS_DIR / "eval-tensorflow"),
        "-f",
        str(EXAMPLE_VALUES),
        "--set",
        "eval.once=true",
    ).stdout
    (job,) = [o for o in documents(out) if o["kind"] == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["disttrain", "eval", "--config", "/etc/disttrain/config.yaml", "--once"]


def test_tensorboard_notes_show_the_port_forward():
    result = helm(
        "install",
        "--dry-run=client",
        "mnist-tb",
        str(CHARTS_DIR / "tensorboard"),
        "-f",
        str(EXAMPLE_VALUES),
    )
    assert "kubectl port-forward -n default service/mnist-tensorboard 6006:6006" in result.stdout


def legacy_values(tmp_path: Path) -> Path:
    """A values file in the 2017 sample's own shape."""
    values = {
        "storage": {
            "accountbase64": base64.b64encode(b"mystorageaccount").decode(),
            "keybase64": base64.b64encode(PLANTED_KEY.encode()).decode(),
            "sharename": "tensorflow",
        },
        "traindir": "/azure/tensorflow/train",
        "evaldir": "/azure/tensorflow/eval",
        "logdir": "/azure/tensorflow",
    }
    path = tmp_path / "values.override.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_2017_values_file_still_works_and_its_key_stays_in_the_secret(tmp_path):
    values = legacy_values(tmp_path)
    planted_b64 = base64.b64encode(PLANTED_KEY.encode()).decode()
    # The sample names no job: the releases do, as the helm launcher names them.
    releases = {"distrib-tensorflow": "sample", "eval-tensorflow": "sample-eval"}
    for chart in CHARTS:
        release = releases.get(chart, "sample-tensorboard")
        helm("lint", "--strict", str(CHARTS_DIR / chart), "-f", str(values))
        result = helm(
            "install", "--dry-run=client", release, str(CHARTS_DIR / chart), "-f", str(values)
        )
        objects = documents(result.stdout.split("NOTES:")[0].split("MANIFEST:")[-1])
        for obj in objects:  # one job, "sample": status, logs and stop find every object
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "sample"
            assert obj["metadata"]["name"].startswith("sample")
            assert not obj["metadata"]["name"].startswith(
                ("sample-eval-eval", "sample-tensorboard-")
            )
            if obj["kind"] == "Secret":
                assert chart == "distrib-tensorflow", "only the training chart makes the Secret"
                assert obj["data"]["azurestorageaccountkey"] == planted_b64
                continue
            text = yaml.safe_dump(obj)
            assert planted_b64 not in text and PLANTED_KEY not in text
            spec = obj.get("spec", {}).get("template", {}).get("spec")
            if spec:
                mounts = spec["containers"][0]["volumeMounts"]
                assert {"name": "azure-share", "mountPath": "/azure/tensorflow"} in mounts
                (share,) = [v for v in spec["volumes"] if v["name"] == "azure-share"]
                assert share["csi"]["volumeAttributes"]["secretName"] == "sample-storage"
        notes = result.stdout.split("NOTES:")[-1]
        assert "Prefer an existing" in notes and "disttrain secret create" in notes
        assert planted_b64 not in notes


def test_no_secret_value_in_the_helm_dry_run(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", PLANTED_KEY)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": f"AccountKey={PLANTED_KEY}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "disttrain",
            "train",
            "-l",
            "helm",
            "-c",
            "configs/azure.yaml",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "kind: Job" in result.stdout
    assert PLANTED_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["cluster.workers=0", "cluster.ps=1"], "at '/cluster/workers'"),
        (["worker.gpus=-1"], "at '/worker/gpus'"),
        (["ps.image=disttrain/ps"], "at '/ps/image'"),
        (["runDir=runs/mnist"], "at '/runDir'"),
        (["storage.shareName=typo"], "shareName"),
        (["worker.memory=8GB"], "at '/worker/memory'"),
        (["ps.cpu=1.2.3"], "at '/ps/cpu'"),
        (["storage.accountName=acct"], "storage.accountName: set with a Secret"),
        # Where no pod could reach the run dir, as the launcher's own checks refuse it.
        (["runDir=/azure/other/x"], "runDir /azure/other/x: no pod can reach it"),
        (["storage.azureFileShare=", "runDir=/azure/tfshare/x"], "no pod can reach it"),
        (
            ["storage.secret=", "storage.azureFileShare=", "runDir=az://c/x"],
            "runDir az://c/x: the pods have no Azure credentials",
        ),
        (
            ["storage.secret=", "storage.azureFileShare=", "runDir=az://c/x", "serviceAccount=sa"],
            "runDir az://c/x names no storage account",
        ),
    ],
)
def test_chart_schema_rejects_bad_values(values, message):
    args = [a for v in values for a in ("--set", v)]
    result = helm(
        "template",
        "m",
        str(CHARTS_DIR / "distrib-tensorflow"),
        "-f",
        str(EXAMPLE_VALUES),
        *args,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_chart_without_a_run_dir_says_what_is_missing():
    result = helm("template", "m", str(CHARTS_DIR / "distrib-tensorflow"), check=False)
    assert (
        result.returncode != 0
        and "runDir (or the 2017 sample's traindir) is required" in result.stderr
    )


def test_helm_launcher_values_are_what_the_schema_accepts(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values_from_config(*config_for("4w2ps", True))))
    for chart in CHARTS:
        helm("lint", "--strict", str(CHARTS_DIR / chart), "-f", str(path))


def test_the_committed_values_schema_is_what_make_charts_generates():
    assert (CHARTS_DIR / "_shared" / "values.schema.json").read_text() == schema_text()
    assert chart_schema_main(["--check"]) == 0


def test_the_schema_refuses_what_the_options_rules_refuse():
    """The derived part: each Syntax rule of launcher.k8s is the schema's check, in Helm too."""
    cases = {
        "storage.scratchSizeLimit=10GB": "at '/storage/scratchSizeLimit'",
        "storage.scratchHostPath=mnt": "at '/storage/scratchHostPath'",
        "serviceAccount=-sa": "at '/serviceAccount'",
        "cluster.port=70000": "at '/cluster/port'",
        "ttlSecondsAfterFinished=-2": "at '/ttlSecondsAfterFinished'",
        "imagePullSecrets[0]=ACR": "at '/imagePullSecrets/0'",
    }
    for value, message in cases.items():
        args = ["template", "m", str(CHARTS_DIR / "distrib-tensorflow"), "-f", str(EXAMPLE_VALUES)]
        result = helm(*args, "--set", value, check=False)
        assert result.returncode != 0 and message in result.stderr, value
        key, _, raw = value.partition("=")
        override = {
            "storage.scratchSizeLimit": "launcher.k8s.storage.scratch_size_limit",
            "storage.scratchHostPath": "launcher.k8s.storage.scratch_host_path",
            "serviceAccount": "launcher.k8s.service_account",
            "cluster.port": "launcher.k8s.port",
            "ttlSecondsAfterFinished": "launcher.k8s.ttl_seconds_after_finished",
            "imagePullSecrets[0]": "launcher.k8s.image_pull_secrets",
        }[key]
        raw = f"[{raw}]" if key.endswith("[0]") else raw
        with pytest.raises(ConfigError, match=re.escape(override)):
            load_job(None, [f"{override}={raw}"], "helm")


def test_the_chart_schema_and_the_config_accept_the_same_quantities():
    from launchers.kube_syntax import is_quantity

    schema = json.loads((CHARTS_DIR / "distrib-tensorflow" / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["worker"]["properties"]["memory"]["pattern"])
    good = ["1", "500m", "0.5", ".5", "2.", "1.5Gi", "512Mi", "1e3", "4k", "1E-2", "100u", "5n"]
    bad = ["two", "8GB", "1.2.3", "-1", "1 Gi", "", "Gi", "1gi", "0x10"]
    assert [bool(pattern.search(q)) for q in good + bad] == [is_quantity(q) for q in good + bad]
    assert all(map(is_quantity, good)) and not any(map(is_quantity, bad))


def test_the_charts_values_file_holds_the_launcher_and_cluster_defaults():
    """values.yaml stays written by hand for its comments; every default in it is the
    options dataclasses' and the trainer's own (name and runDir are the release's)."""
    from disttrain.config import Config
    from launchers.chart_values import values_from_config

    documented = yaml.safe_load((CHARTS_DIR / "_shared" / "values.yaml").read_text())
    defaults = values_from_config(Config(), K8sOptions())
    for key, value in defaults.items():
        if key in ("name", "runDir", "config"):
            continue
        if isinstance(value, dict):  # storage also documents the 2017 sample's keys
            assert {k: documented[key].get(k) for k in value} == value, key
        else:
            assert documented[key] == value, key
