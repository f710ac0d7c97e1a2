"""The ps and worker images: hadolint-clean, non-root, versions consistent with pyproject.

No Docker engine runs here, so the images are not built; these tests check what a build
would do (the Dockerfiles, the requirements they install, the build context).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launchers.k8s_objects import RUN_AS_USER, TASK_COMMAND
from launchers.k8s_options import PS_IMAGE, WORKER_IMAGE

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {
    "worker": ROOT / "docker" / "worker.Dockerfile",
    "ps": ROOT / "docker" / "ps.Dockerfile",
}
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'(?m)^version = "([^"]+)"', PYPROJECT_TEXT).group(1)


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def image_requirements(*args: str) -> list[str]:
    command = [sys.executable, str(ROOT / "docker" / "requirements.py"), *args]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint_without_warnings(image):
    result = subprocess.run([hadolint(), str(DOCKERFILES[image])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install flask\n")
    result = subprocess.run([hadolint(), str(careless)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3013" in result.stdout


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_runs_disttrain_task_as_the_pods_non_root_user(image):
    steps = instructions(DOCKERFILES[image])
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] == str(RUN_AS_USER)
    (cmd,) = [args for keyword, args in steps if keyword == "CMD"]
    assert cmd == '["' + '", "'.join(TASK_COMMAND) + '"]'
    assert any(f"--uid {RUN_AS_USER}" in args for keyword, args in steps if keyword == "RUN")


def run_user_step(dockerfile: Path, tmp_path: Path, before: str = "") -> tuple[str, int]:
    """Run the Dockerfile's user-creating RUN step on a private copy of this machine's /etc
    and an empty /home (a mount namespace of its own), after the shell lines `before`.
    Returns /etc/passwd afterwards and the owner uid of /home/disttrain."""
    (step,) = [a for k, a in instructions(dockerfile) if k == "RUN" and "useradd" in a]
    script = f"""set -e
        mount -t tmpfs etc-copy {tmp_path}/etc && cp -a /etc/. {tmp_path}/etc
        mount --bind {tmp_path}/etc /etc
        mount -t tmpfs home /home
        userdel $(getent passwd 1000 | cut -d: -f1) 2>/dev/null || true  # this machine's own
        {before}
        {step}
        cat /etc/passwd
        stat -c %u /home/disttrain"""
    (tmp_path / "etc").mkdir(parents=True)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *passwd, owner = result.stdout.splitlines()
    return "\n".join(passwd), int(owner)


def uid_1000_user(passwd: str) -> list[str]:
    return [line.split(":")[0] for line in passwd.splitlines() if line.split(":")[2] == "1000"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a private mount namespace")
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_user_step_adds_uid_1000_or_keeps_the_base_images_one(image, tmp_path):
    passwd, home_owner = run_user_step(DOCKERFILES[image], tmp_path / "plain")
    assert uid_1000_user(passwd) == ["disttrain"] and home_owner == 1000
    # An Ubuntu 24.04 base ships "ubuntu" at uid 1000: the step must not fail on useradd.
    ubuntu = "useradd --uid 1000 --user-group --create-home ubuntu"
    passwd, home_owner = run_user_step(DOCKERFILES[image], tmp_path / "ubuntu", before=ubuntu)
    assert uid_1000_user(passwd) == ["ubuntu"] and home_owner == 1000
    steps = instructions(DOCKERFILES[image])
    assert ("ENV", "HOME=/home/disttrain") in steps


def test_worker_image_is_gpu_tensorflow_of_the_version_pyproject_pins():
    (tf_cpu,) = [
        d for d in image_requirements("--extra", "train") if d.startswith("tensorflow-cpu")
    ]
    version = tf_cpu.split("~=")[1]  # 2.21.0
    (base,) = [args for keyword, args in instructions(DOCKERFILES["worker"]) if keyword == "FROM"]
    assert base == f"tensorflow/tensorflow:{version}-gpu"


def test_ps_image_installs_cpu_tensorflow_and_no_data_tooling():
    steps = instructions(DOCKERFILES["ps"])
    (run,) = [args for keyword, args in steps if keyword == "RUN" and "requirements.py" in args]
    args = run.split("requirements.py", 1)[1].split(">")[0].split()
    requirements = image_requirements(*args)
    names = {re.split(r"[<>=~]", r)[0] for r in requirements}
    assert "tensorflow-cpu~=2.21.0" in requirements
    assert not names & {"tensorflow-datasets", "pillow", "tensorflow"}
    (base,) = [a for keyword, a in steps if keyword == "FROM"]
    assert "slim" in base and "gpu" not in base


def test_worker_image_installs_everything_but_the_cpu_build():
    steps = instructions(DOCKERFILES["worker"])
    (run,) = [args for keyword, args in steps if keyword == "RUN" and "requirements.py" in args]
    args = run.split("requirements.py", 1)[1].split(">")[0].split()
    requirements = image_requirements(*args)
    # What pyproject.toml declares, read by a real TOML parser where there is one (3.11+).
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(PYPROJECT_TEXT)["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["train"] + extras["azure"]
    assert sorted(requirements) == sorted(d for d in declared if not d.startswith("tensorflow-cpu"))


def test_images_copy_what_the_package_needs_and_dockerignore_keeps_the_rest_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for heavy in (".venv", ".tools", ".git", "runs", "tests"):
        assert heavy in ignored
    for dockerfile in DOCKERFILES.values():
        copied = {
            args.split()[0] for keyword, args in instructions(dockerfile) if keyword == "COPY"
        }
        for source in copied:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
            assert source not in ignored


def test_default_image_tags_follow_the_package_version_and_make_images():
    version = VERSION
    assert WORKER_IMAGE == f"disttrain/worker:{version}"
    assert PS_IMAGE == f"disttrain/ps:{version}"
    makefile = (ROOT / "Makefile").read_text()
    assert f"IMAGE_TAG ?= {version}" in makefile
    for image, dockerfile in DOCKERFILES.items():
        assert (
            f"docker build -f docker/{dockerfile.name} -t disttrain/{image}:$(IMAGE_TAG) ."
            in makefile
        )
