"""Launchers: how the tasks of a job are started (processes, Kubernetes objects, Helm).

A launcher never imports TensorFlow. Each one is found by name through the entry-point
group `disttrain.launchers` and imported only when used, so `disttrain --help` stays
fast and another backend is one installed package away.

A launcher owns its settings: it declares the `launcher.<section>` parts of the config it
reads as dataclasses (`sections`); the config loader validates them with the same
all-at-once, key/got/accepted errors as the trainer's keys, and CLI flags such as
`--namespace` are fields of those dataclasses marked with a `flag`. Every launcher works in
three steps: `plan(config) -> Plan` (pure: what would be started, and the warnings),
`Plan.render()` (what `--dry-run` prints) and `submit(plan)`, which starts exactly that.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from disttrain.config import (
    LAUNCHER_KEY,
    Config,
    ConfigError,
    apply_settings,
    job_config_from_dict,
    launcher_named_in,
    load_job_config,
)

if TYPE_CHECKING:
    from launchers.job_status import JobList, JobStatus

ENTRY_POINT_GROUP = "disttrain.launchers"


class LauncherError(RuntimeError):
    """A job that cannot be started, found or reached (the CLI exits 1); says why."""


@dataclass
class Plan:
    """What a launcher would start for one job. `render()` is what `--dry-run` prints;
    `submit` starts exactly this. Warnings are the plan's, so every launcher gives them."""

    name: str
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        raise NotImplementedError


class Launcher(ABC):
    """The verbs every launcher offers; its options come validated from the config."""

    name: ClassVar[str]
    # The config sections it reads: `launcher.<section>` -> the options dataclass.
    sections: ClassVar[dict[str, type]] = {}

    def __init__(self, options: dict[str, Any] | None = None):
        given = options or {}
        self.options = {s: given.get(s) or cls() for s, cls in self.sections.items()}

    @abstractmethod
    def plan(self, config: Config) -> Plan:
        """Everything `submit` would start, decided now; starts nothing."""

    @abstractmethod
    def submit(self, plan: Plan, wait: bool = True, follow: bool = False) -> int:
        """Start exactly `plan`; with `wait` (or `follow`: printing the chief's output),
        return the job's exit code when it ends."""

    def job_status(self, name: str) -> JobStatus:
        """The job's result, its tasks and its training progress (`status -o json|yaml`)."""
        raise LauncherError(f"launcher {self.name} gives no structured status; try -o table")

    def status(self, name: str) -> str:
        """What `disttrain status` prints: the job status as a table."""
        return self.job_status(name).render()

    @abstractmethod
    def logs(
        self, name: str, role: str | None, index: int, follow: bool, previous: bool = False
    ) -> None:
        """Print a task's output (every task's when role is None); `previous`: the output of
        the task's run before its last restart."""

    @abstractmethod
    def stop(self, name: str) -> str:
        """Stop the job and everything it started; says what was stopped."""

    def describe(self, name: str) -> str:
        """The job's tasks as planned (commands or objects), their states and their last
        exits."""
        raise LauncherError(f"launcher {self.name} cannot describe jobs")

    def list_jobs(self) -> JobList:
        """The jobs this launcher can see."""
        raise LauncherError(f"launcher {self.name} cannot list jobs")


def available_launchers() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def launcher_class(name: str) -> type[Launcher]:
    """The launcher installed as `name`, imported now (only the one a command uses)."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        accepted = ", ".join(available_launchers()) or "none installed"
        raise ConfigError(f"launcher.name: got {name!r}; accepted: {accepted}", "launcher.name")
    try:
        return found[0].load()
    except ConfigError:  # bad input its modules read when imported (the environment's)
        raise
    except Exception as exc:  # a broken plug-in is named, not a traceback
        package = found[0].dist.name if found[0].dist else found[0].value
        raise LauncherError(
            f"launcher {name} (from {package}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None


def declared_flags(sections: dict[str, type]) -> dict[str, str]:
    """CLI flag -> config key, from the options fields marked with `flag` metadata."""
    flags = {}
    for section, cls in sections.items():
        for option in dataclasses.fields(cls):
            if "flag" in option.metadata:
                flags[option.metadata["flag"]] = f"{LAUNCHER_KEY}.{section}.{option.name}"
    return flags


def flag_settings(launcher: type[Launcher], flags: dict[str, str | None]) -> dict[str, str]:
    """The config keys the CLI flags given set (None: not given), their values as typed. A
    flag the launcher does not declare is refused by name, not ignored."""
    given = {flag: value for flag, value in flags.items() if value is not None}
    known = declared_flags(launcher.sections)
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(f"--{f}" for f in known) or "no flags (its settings: --set)"
        raise ConfigError(
            f"--{unknown[0]} does not apply to launcher {launcher.name!r} (it takes {takes})"
        )
    return {known[flag]: value for flag, value in given.items()}


def load_job(
    path: str | Path | None,
    overrides: list[str],
    launcher: str | None = None,
    flags: dict[str, str | None] | None = None,
) -> tuple[Config, Launcher]:
    """The config and the launcher that runs it (`launcher`, else `launcher.name` in the
    config). Only that launcher is imported; it validates its own sections, and the other
    installed launchers' sections are left unread."""
    cls = launcher_class(launcher or launcher_named_in(path, overrides))
    settings = flag_settings(cls, flags or {})
    if launcher:
        settings[f"{LAUNCHER_KEY}.name"] = launcher
    others = available_launchers()
    config, choice = load_job_config(path, overrides, cls.sections, others, settings)
    return config, cls(choice.options)


def get_launcher(name: str, flags: dict[str, str | None] | None = None) -> Launcher:
    """The launcher called `name` with its defaults and the CLI flags given (status, logs,
    stop and list read no config file)."""
    cls = launcher_class(name)
    raw: dict[str, Any] = {}
    apply_settings(raw, {f"{LAUNCHER_KEY}.name": name, **flag_settings(cls, flags or {})})
    _, choice = job_config_from_dict(raw, cls.sections)
    return cls(choice.options)
