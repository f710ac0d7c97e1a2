"""Launchers: how the tasks of a job are started (processes, Kubernetes objects, Helm).

A launcher never imports TensorFlow. Each one is found by name through the entry-point
group `disttrain.launchers` and imported only when used, so `disttrain --help` stays
fast and another backend is one installed package away.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points

from disttrain.config import Config, ConfigError

ENTRY_POINT_GROUP = "disttrain.launchers"


class Launcher(ABC):
    """The verbs every launcher offers. `plan` is pure; `submit` executes exactly that plan."""

    name: str

    @abstractmethod
    def dry_run(self, config: Config) -> str:
        """What `submit` would start, as text (commands, manifests, ...); starts nothing."""

    @abstractmethod
    def submit(self, config: Config, wait: bool = True) -> int:
        """Start the job; with `wait`, return the job's exit code when it ends."""

    @abstractmethod
    def status(self, name: str) -> str:
        """A table of the job's tasks and its result."""

    @abstractmethod
    def logs(self, name: str, role: str | None, index: int, follow: bool) -> None:
        """Print a task's output (every task's when role is None)."""

    @abstractmethod
    def stop(self, name: str) -> str:
        """Stop the job and everything it started; says what was stopped."""


def available_launchers() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def get_launcher(name: str) -> Launcher:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        accepted = ", ".join(available_launchers()) or "none installed"
        raise ConfigError(f"launcher: got {name!r}; accepted: {accepted}")
    return found[0].load()()
