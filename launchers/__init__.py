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


class LauncherError(RuntimeError):
    """A job that cannot be started, found or reached (the CLI exits 1); says why."""


class Launcher(ABC):
    """The verbs every launcher offers. `plan` is pure; `submit` executes exactly that plan."""

    name: str
    # Keyword options the constructor takes (e.g. namespace, context); none for most.
    option_names: tuple[str, ...] = ()

    @abstractmethod
    def dry_run(self, config: Config) -> str:
        """What `submit` would start, as text (commands, manifests, ...); starts nothing."""

    @abstractmethod
    def submit(self, config: Config, wait: bool = True, follow: bool = False) -> int:
        """Start the job; with `wait` (or `follow`: printing the chief's output), return the
        job's exit code when it ends."""

    @abstractmethod
    def status(self, name: str) -> str:
        """A table of the job's tasks and its result."""

    @abstractmethod
    def logs(
        self, name: str, role: str | None, index: int, follow: bool, previous: bool = False
    ) -> None:
        """Print a task's output (every task's when role is None); `previous`: the output of
        the task's run before its last restart."""

    @abstractmethod
    def stop(self, name: str) -> str:
        """Stop the job and everything it started; says what was stopped."""

    def list_jobs(self) -> str:
        """A table of the jobs this launcher can see."""
        raise ConfigError(f"launcher {self.name} cannot list jobs")


def available_launchers() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def get_launcher(name: str, **options: str | None) -> Launcher:
    """The launcher called `name`; `options` left as None are not passed on."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        accepted = ", ".join(available_launchers()) or "none installed"
        raise ConfigError(f"launcher: got {name!r}; accepted: {accepted}")
    launcher_class = found[0].load()
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(launcher_class.option_names))
    if unknown:
        takes = ", ".join(f"--{o}" for o in launcher_class.option_names) or "no options"
        raise ConfigError(f"--{unknown[0]} does not apply to launcher {name!r} (it takes {takes})")
    return launcher_class(**given)
