"""The Helm charts: `helm lint --strict`, strict schemas, and parity with the Python launcher.

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

from disttrain.config import Config, config_from_dict
from launchers import load_job
from launchers.helm import CHARTS_DIR, HelmOptions, helm_binary, plan_job, values_from_config
from launchers.k8s_objects import job_objects
from launchers.k8s_options import K8sOptions
from launchers.pod_security import restricted_violations

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ("distrib-tensorflow", "eval-tensorflow", "tensorboard")
K8S_VERSIONS = ("1.37.0", "1.25.0")
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
    "1w0ps": ["cluster.workers=1", "cluster.ps=0"],
    "2w1ps": ["cluster.workers=2", "cluster.ps=1", "launcher.k8s.worker.gpus=1"],
    "4w2ps": [
        "cluster.workers=4",
        "cluster.ps=2",
        "launcher.k8s.worker.node_selector={jobrole: worker}",
        "launcher.k8s.ps.node_selector={jobrole: ps}",
        "launcher.k8s.ps.tolerations=[{key: dedicated, operator: Equal, value: ps, "
        "effect: NoSchedule}]",
        "launcher.k8s.storage.scratch_size_limit=50Gi",
        "launcher.k8s.active_deadline_seconds=3600",
        "launcher.k8s.ttl_seconds_after_finished=60",
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
    overrides = [*BASE, *SHAPES[shape], f"eval.enabled={str(evaluator).lower()}"]
    config, launcher = load_job(None, overrides, "helm")
    return config, launcher.options["k8s"]


def render(config: Config, k8s: K8sOptions) -> str:
    """What `train -l helm --dry-run` prints for this job: `helm template` of its releases."""
    return plan_job(config, k8s, HelmOptions()).render()


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, bool], tuple[list[dict], list[dict]]]:
    """(Python launcher objects, helm template objects) for every parity case, rendered once."""
    found = {}
    for shape, evaluator in CASES:
        config, k8s = config_for(shape, evaluator)
        found[(shape, evaluator)] = (job_objects(config, k8s), documents(render(config, k8s)))
    return found


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


@pytest.mark.parametrize(("shape", "evaluator"), CASES)
def test_helm_and_python_launcher_render_the_same_tasks(rendered, shape, evaluator):
    python_objects, helm_objects = rendered[(shape, evaluator)]
    python, charts = by_key(python_objects), by_key(helm_objects)
    python_pods = {k: o for k, o in python.items() if k[0] in ("Job", "Deployment")}
    helm_pods = {k: o for k, o in charts.items() if k[0] in ("Job", "Deployment")}
    assert sorted(python_pods) == sorted(helm_pods)
    for key, python_obj in python_pods.items():
        py_pod = python_obj["spec"]["template"]["spec"]
        helm_pod = helm_pods[key]["spec"]["template"]["spec"]
        (py_c,), (helm_c,) = py_pod["containers"], helm_pod["containers"]
        assert _env(helm_c).get("TF_CONFIG") == _env(py_c).get("TF_CONFIG"), key
        assert helm_c["command"] == py_c["command"]
        assert [e["name"] for e in helm_c["env"]] == [e["name"] for e in py_c["env"]]
        assert helm_c["image"] == py_c["image"]
        pod_labels = [
            o["spec"]["template"]["metadata"]["labels"] for o in (helm_pods[key], python_obj)
        ]
        assert pod_labels[0] == pod_labels[1], key
        assert helm_c["resources"] == py_c["resources"]
        assert helm_c["volumeMounts"] == py_c["volumeMounts"]
        # Beyond the contract: the whole pod spec matches, but for the evaluator's own
        # ConfigMap (the eval chart installs on its own, so it carries its config).
        assert _same_config_map(helm_pod) == _same_config_map(py_pod), key
        assert helm_pods[key]["spec"].get("backoffLimit") == python_obj["spec"].get("backoffLimit")
        for field in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            assert helm_pods[key]["spec"].get(field) == python_obj["spec"].get(field)
    for key in [k for k in python if k[0] == "Service"]:
        assert charts[key]["spec"] == python[key]["spec"]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def _same_config_map(pod: dict) -> dict:
    pod = json.loads(json.dumps(pod))
    for volume in pod["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = "<config>"
    return pod


def test_the_charts_config_map_holds_the_same_resolved_config():
    config, k8s = config_for("2w1ps", True)
    objects = by_key(documents(render(config, k8s)))
    for name in ("mnist-config", "mnist-eval-config"):
        text = objects[("ConfigMap", name)]["data"]["config.yaml"]
        assert config_from_dict(yaml.safe_load(text)) == config


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_chart_object_validates_strictly_and_meets_restricted(rendered, version):
    for _, helm_objects in rendered.values():
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


def test_the_chart_schema_and_the_config_accept_the_same_quantities():
    from launchers.kube_syntax import is_quantity

    schema = json.loads((CHARTS_DIR / "distrib-tensorflow" / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["worker"]["properties"]["memory"]["pattern"])
    good = ["1", "500m", "0.5", ".5", "2.", "1.5Gi", "512Mi", "1e3", "4k", "1E-2", "100u", "5n"]
    bad = ["two", "8GB", "1.2.3", "-1", "1 Gi", "", "Gi", "1gi", "0x10"]
    assert [bool(pattern.search(q)) for q in good + bad] == [is_quantity(q) for q in good + bad]
    assert all(map(is_quantity, good)) and not any(map(is_quantity, bad))
