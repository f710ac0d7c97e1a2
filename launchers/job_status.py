"""What `status` and `list` show: plain data a launcher fills in, which the CLI prints as a
table (`render()`), JSON or YAML.

Table columns are as wide as their widest value, so a phase such as CrashLoopBackOff is
never cut, and a column empty on every row is left out. A run's progress comes from two
places: its run dir holds the last published checkpoint (`checkpoints/LATEST`) and the
evaluations (`eval/results.jsonl`); examples/s and the ETA exist only in the chief's
`train | step: ...` log lines, so the last one is read from the chief's log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from disttrain.progress import parse_eval_line, parse_train_line


@dataclass
class JobStatus:
    """One job: its result, one row per task (the launcher's columns), its progress."""

    name: str
    # starting, running, succeeded, failed or stopped; local: "launcher lost" (it died)
    result: str
    reason: str = ""
    namespace: str | None = None  # k8s and helm
    tasks: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        where = f" (namespace {self.namespace})" if self.namespace else ""
        head = f"job {self.name}{where}: {self.result}"
        lines = [head + (f" ({self.reason})" if self.reason else ""), format_table(self.tasks)]
        return "\n".join(lines + progress_lines(self.progress))


@dataclass
class JobList:
    """The jobs a launcher sees, one row each; `empty` says where none was found."""

    jobs: list[dict[str, Any]]
    empty: str

    def render(self) -> str:
        return format_table(self.jobs) if self.jobs else self.empty


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned columns headed by their upper-cased keys; None is shown as `-`."""
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if _has_values(rows, c)]
    cells = [[c.upper().replace("_", " ") for c in columns]]
    cells += [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells
    )


def _has_values(rows: list[dict[str, Any]], column: str) -> bool:
    return any(row.get(column) not in (None, "") for row in rows)


def _cell(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


def progress_lines(progress: dict[str, Any]) -> list[str]:
    """`progress: step 1200/5000 | ...` and `last eval: ...`, for what is known."""
    lines = []
    step = progress.get("step", progress.get("checkpoint_step"))
    if step is not None:
        total = progress.get("total_steps")
        parts = [f"step {step}" + (f"/{total}" if total else "")]
        if progress.get("examples_per_second") is not None:
            parts.append(f"examples/s {progress['examples_per_second']:.1f}")
        if progress.get("eta"):
            parts.append(f"eta {progress['eta']}")
        if progress.get("checkpoint_step") is not None:
            parts.append(f"checkpoint {progress['checkpoint_step']}")
        lines.append("progress: " + " | ".join(parts))
    last_eval = progress.get("last_eval")
    if last_eval:
        lines.append(
            f"last eval: step {last_eval['step']} | accuracy {last_eval['accuracy']:.4f} | "
            f"loss {last_eval['loss']:.4f}"
        )
    if progress.get("run_dir_error"):
        lines.append(f"run dir: {progress['run_dir_error']}")
    return lines


def training_progress(
    chief_log: str, running: bool, run_dir: str | None = None, evaluator_log: str = ""
) -> dict[str, Any]:
    """The last step, examples/s and ETA from the chief's log (no ETA once the job ended);
    the last checkpoint and evaluation from `run_dir`, else the last evaluation from the
    evaluator's log."""
    progress: dict[str, Any] = {}
    train = _last(chief_log, parse_train_line)
    if train:
        progress["step"], progress["total_steps"] = train["step"], train["total_steps"]
        progress["examples_per_second"] = train["examples_per_second"]
        progress["eta"] = train["eta"] if running else None
    if run_dir:
        progress.update(run_dir_progress(run_dir))
    else:
        last_eval = _last(evaluator_log, parse_eval_line)
        progress["last_eval"] = _eval_fields(last_eval) if last_eval else None
    return progress


def run_dir_progress(url: str) -> dict[str, Any]:
    """The step of `checkpoints/LATEST` and the last line of `eval/results.jsonl`; a run
    dir that cannot be read is said, not raised (status still shows the tasks)."""
    from disttrain.checkpoints import latest_manifest
    from disttrain.storage import EVAL_RESULTS, RunDir, describe

    try:
        run_dir = RunDir(url, retries=False)  # status only looks: it says, it does not wait
        latest = latest_manifest(run_dir)
        results = run_dir.read_text(EVAL_RESULTS) if run_dir.exists(EVAL_RESULTS) else ""
    except Exception as exc:  # a missing credential, a network error: one line in status
        return {"run_dir_error": f"{url}: {describe(exc)}"}
    lines = [line for line in results.splitlines() if line.strip()]
    return {
        "checkpoint_step": latest.step if latest else None,
        "last_eval": _eval_fields(json.loads(lines[-1])) if lines else None,
    }


def _eval_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in ("step", "accuracy", "loss")}


def _last(log: str, parse: Callable[[str], dict | None]) -> dict | None:
    for line in reversed(log.splitlines()):
        found = parse(line)
        if found:
            return found
    return None
