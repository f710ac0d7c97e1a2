"""Which optional parts of disttrain are installed, and the one line that says what to add.

A machine that only submits to a cluster installs neither TensorFlow nor, for the local
launcher alone, the Kubernetes client: a verb that needs one says so before it starts,
instead of a ModuleNotFoundError traceback. Checked by module, not by distribution name
(the GPU image installs `tensorflow[and-cuda]`, not `tensorflow-cpu`).
"""

from __future__ import annotations

import importlib.util

from disttrain.config import ConfigError

# What a task imports to train, evaluate or serve TensorBoard: pyproject's `train` extra.
TRAIN_MODULES = ("tensorflow", "numpy", "PIL")
# What the k8s and helm launchers import to reach a cluster: the `k8s` extra.
K8S_MODULES = ("kubernetes",)


def require(extra: str, modules: tuple[str, ...], needed_for: str) -> None:
    """Fail with one line when any of `modules` is missing: what needs them, what to install."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"{needed_for}: {', '.join(missing)} not installed here; "
            f"install disttrain[{extra}] (pip install '.[{extra}]' in a clone)"
        )
