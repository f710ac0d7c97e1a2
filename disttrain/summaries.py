"""TensorBoard event files: written locally, mirrored into the run dir.

The training loop and the evaluator write events to a local folder (TensorFlow's writer
is fast and never blocks on the network) and `SummaryMirror` copies that folder to
`<run_dir>/logs/train` or `logs/eval`, periodically and at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from disttrain.storage import RunDir, describe, with_retries


class SummaryMirror:
    """Uploads a local event-file folder to `<run_dir>/<remote>` when files change.

    Event files only grow, so a changed size means new events; uploading the whole
    file keeps the remote copy a valid event file at every moment. A failed upload is
    logged and tried again at the next sync: summaries never stop training.
    """

    def __init__(
        self,
        local_dir: Path,
        run_dir: RunDir,
        remote: str,
        every_seconds: float = 10.0,
        log: Callable[[str], None] = print,
    ):
        self.local_dir, self.run_dir, self.remote = local_dir, run_dir, remote
        self.every, self.log = every_seconds, log
        self._sizes: dict[str, int] = {}
        self._last = 0.0

    def maybe_sync(self) -> None:
        if time.monotonic() - self._last >= self.every:
            self.sync()

    def sync(self) -> bool:
        """Upload what changed; False when something could not be uploaded (it is logged)."""
        self._last = time.monotonic()
        complete = True
        for path in sorted(self.local_dir.rglob("*")) if self.local_dir.exists() else []:
            if not path.is_file():
                continue
            relative = path.relative_to(self.local_dir).as_posix()
            size = path.stat().st_size
            if self._sizes.get(relative) == size:
                continue
            try:
                with_retries(
                    lambda p=path, r=relative: self.run_dir.put_file(p, f"{self.remote}/{r}"),
                    f"upload {self.remote}/{relative}",
                    attempts=3,
                    log=self.log,
                )
                self._sizes[relative] = size
            except Exception as exc:
                complete = False
                self.log(f"summaries | WARNING | {self.remote}/{relative} | {describe(exc)}")
        return complete
