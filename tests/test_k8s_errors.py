"""What the k8s verbs say when the cluster cannot serve them: one line, exit 1, no traceback.

The API server is unreachable (nothing listens), mute (it accepts connections and never
answers), or real (the test cluster) and refusing the request.
"""

from __future__ import annotations

import socket
import threading

import pytest
from kubecluster.fixtures import kube_cluster, kube_namespace  # noqa: F401
from processes import cli

from launchers.local import free_ports

SHARE_JOB = [
    "--set=run_dir=/azure/tfshare/runs/x",
    "--set=launcher.k8s.storage.azure_file_share=tfshare",
    "--set=launcher.k8s.storage.secret=azure-storage",
]
VERBS = [
    ["status", "mnist", "-l", "k8s"],
    ["logs", "mnist", "-l", "k8s"],
    ["stop", "mnist", "-l", "k8s"],
    ["list", "-l", "k8s"],
    ["secret", "create"],
    ["train", "-l", "k8s", *SHARE_JOB],
    ["train", "-l", "helm", *SHARE_JOB],
]


def kubeconfig_for(path, server: str) -> dict[str, str]:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        f"clusters:\n- name: c\n  cluster: {{server: '{server}'}}\n"
        "users:\n- name: u\n  user: {token: x}\n"
        "contexts:\n- name: dev\n  context: {cluster: c, user: u, namespace: ml-team}\n"
        "- name: prod\n  context: {cluster: c, user: u}\n"
    )
    return {"KUBECONFIG": str(path), "AZURE_STORAGE_ACCOUNT_NAME": "acct"}


def assert_one_line_error(result, *expected: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: "), result.stderr[-3000:]
    for part in expected:
        assert part in error, error


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:3]))
def test_an_unreachable_api_server_is_named_in_one_line(tmp_path, verb):
    (port,) = free_ports(1)  # nothing listens there
    env = kubeconfig_for(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    result = cli(*verb, env=env, timeout=120)
    assert_one_line_error(
        result, f"no answer from http://127.0.0.1:{port}", "Connection refused", "ml-team"
    )


@pytest.fixture
def mute_server():
    """Accepts connections and never answers, like a server behind a broken proxy."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept_forever():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_mute_api_server_times_out_instead_of_hanging(tmp_path, mute_server):
    env = kubeconfig_for(tmp_path / "kubeconfig", mute_server)
    train = VERBS[5]  # every verb's requests go through one wrapper with the timeout
    result = cli(*train, env=env, timeout=120)  # before: no request timeout, hung forever
    assert_one_line_error(result, f"no answer from {mute_server}", "timed out")


@pytest.mark.parametrize("verb", [VERBS[0], [*VERBS[5], "--dry-run"]], ids=["status", "dry-run"])
def test_an_unknown_context_lists_the_contexts_there_are(tmp_path, verb):
    """Even a dry run, which contacts nothing: its namespace would be another context's."""
    env = kubeconfig_for(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    result = cli(*verb, "--context", "staging", env=env)
    assert_one_line_error(
        result, "context 'staging' does not exist", "contexts in the kubeconfig: dev, prod"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: v1\nkind: [Config\n", "cannot be used: while parsing a flow sequence"),
        ("apiVersion: v1\ncurrent-context: gone\ncontexts: []\n", "Expected object with name gone"),
    ],
    ids=["not-yaml", "no-current-context"],
)
def test_a_broken_kubeconfig_is_named_not_taken_for_a_missing_one(tmp_path, text, expected):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    for verb in (VERBS[0], [*VERBS[5], "--dry-run"]):
        result = cli(*verb, env={"KUBECONFIG": str(path)})
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"error: kubeconfig {path} cannot be used" in result.stderr
        assert expected in result.stderr


def test_a_missing_job_and_a_refused_request_say_what_the_server_said(
    kube_cluster,  # noqa: F811
    kube_namespace,  # noqa: F811
):
    env = kube_cluster.env
    where = ["-n", kube_namespace]
    result = cli("status", "nosuch", "-l", "k8s", *where, env=env)
    assert_one_line_error(result, f"no job 'nosuch' in namespace {kube_namespace}")
    result = cli("stop", "nosuch", "-l", "k8s", *where, env=env, check=True)
    assert result.stdout.strip() == f"job nosuch: nothing found in namespace {kube_namespace}"
    # The server refuses the name; its own message names the field.
    result = cli(
        "secret", "create", "--name", "Azure_Storage", *where,
        env={**env, "AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "k"},
    )  # fmt: skip
    assert_one_line_error(
        result, "create Secret", "422 Unprocessable Entity", "metadata.name", "'Azure_Storage'"
    )
