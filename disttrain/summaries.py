"""TensorBoard event files: written locally, mirrored into the run dir."""

from __future__ import annotations

import time
from pathlib import Path

from disttrain.storage import RunDir, with_retries


class SummaryMirror:
    """Uploads a local event-file folder to `<run_dir>/<remote>` when files change.

    Event files only grow, so a changed size means new events; uploading the whole
    file keeps the remote copy a valid event file at every moment.
    """

    def __init__(self, local_dir: Path, run_dir: RunDir, remote: str, every_seconds: float = 10.0):
        self.local_dir, self.run_dir, self.remote = local_dir, run_dir, remote
        self.every = every_seconds
        self._sizes: dict[str, int] = {}
        self._last = 0.0

    def maybe_sync(self) -> None:
        if time.monotonic() - self._last >= self.every:
            self.sync()

    def sync(self) -> None:
        self._last = time.monotonic()
        for path in sorted(self.local_dir.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(self.local_dir).as_posix()
            size = path.stat().st_size
            if self._sizes.get(relative) != size:
                with_retries(
                    lambda p=path, r=relative: self.run_dir.put_file(p, f"{self.remote}/{r}"),
                    f"upload {self.remote}/{relative}",
                )
                self._sizes[relative] = size
