"""A launcher from outside disttrain: it brings its own `launcher.echo` options section, and
"starts" a job by writing its plan to a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launchers import Launcher, Plan


@dataclass
class EchoOptions:
    greeting: str = "hello"
    out: str = "echo-job.txt"  # where submit writes the plan

    RULES = {"greeting": (lambda v: bool(v.strip()), "a non-empty greeting")}


@dataclass
class EchoPlan(Plan):
    greeting: str = ""
    steps: int = 0
    out: str = ""

    def render(self) -> str:
        return f"{self.greeting} {self.name}: {self.steps} steps"


class EchoLauncher(Launcher):
    name = "echo"
    sections = {"echo": EchoOptions}

    def plan(self, config) -> EchoPlan:
        options = self.options["echo"]
        return EchoPlan(config.name, [], options.greeting, config.train.steps, options.out)

    def submit(self, plan, wait: bool = True, follow: bool = False) -> int:
        Path(plan.out).write_text(plan.render())
        return 0

    def status(self, name: str) -> str:
        return f"job {name}: echoed"

    def logs(self, name, role, index, follow, previous=False) -> None:
        print(f"job {name} has no logs")

    def stop(self, name: str) -> str:
        return f"job {name}: nothing to stop"
