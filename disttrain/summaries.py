"""TensorBoard event files: written locally, mirrored into the run dir in the background.

The training loop and the evaluator write events to a local folder (TensorFlow's writer
is fast and never blocks on the network) and `SummaryMirror` copies that folder to
`<run_dir>/logs/train` or `logs/eval` from a thread of its own, periodically, when asked,
and once more at `close()`: a storage outage costs fresh curves, never training time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from disttrain.storage import RunDir, describe, with_retries


class SummaryMirror:
    """Uploads a local event-file folder to `<run_dir>/<remote>` when files change.

    One thread does the uploads, one sync at a time: every `every_seconds`, soon after
    `request_sync()`, and a final one in `close()`, which the caller waits for. Event files
    only grow, so a changed size means new events; uploading the whole file keeps the
    remote copy a valid event file at every moment. A failed upload is logged and tried
    again at the next sync: summaries never stop training.
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
        self._one_sync_at_a_time = threading.Lock()
        self._wanted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"mirror-{remote}", daemon=True)
        self._thread.start()

    def request_sync(self) -> None:
        """Ask for a sync soon; returns at once (the upload happens on the mirror's thread)."""
        self._wanted.set()

    def close(self) -> bool:
        """Stop the thread after one last sync; False when something could not be uploaded."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        return self.sync()

    def sync(self) -> bool:
        """Upload what changed, in the caller's thread; False when something failed (logged)."""
        with self._one_sync_at_a_time:
            return all([self._upload(path) for path in self._changed_files()])

    def _run(self) -> None:
        while not self._closing:
            self._wanted.wait(self.every)
            self._wanted.clear()
            if not self._closing:  # close() does the final sync itself, and waits for it
                self.sync()

    def _changed_files(self) -> list[Path]:
        if not self.local_dir.exists():
            return []
        files = [p for p in sorted(self.local_dir.rglob("*")) if p.is_file()]
        return [p for p in files if self._sizes.get(self._relative(p)) != p.stat().st_size]

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.local_dir).as_posix()

    def _upload(self, path: Path) -> bool:
        relative = self._relative(path)
        size = path.stat().st_size  # before the upload: events appended meanwhile go next time
        try:
            with_retries(
                lambda: self.run_dir.put_file(path, f"{self.remote}/{relative}"),
                f"upload {self.run_dir.url_of(f'{self.remote}/{relative}')}",
                attempts=3,
                log=self.log,
            )
        except Exception as exc:
            self.log(f"summaries | WARNING | {self.remote}/{relative} | {describe(exc)}")
            return False
        self._sizes[relative] = size
        return True
