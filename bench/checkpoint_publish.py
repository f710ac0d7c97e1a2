"""What publishing a checkpoint to Azure Blob costs, measured against Azurite.

All in one run, on one real TensorFlow checkpoint (one large variable set, written by
tf.train.Checkpoint as training does) and one Azurite started here:
  1. throughput: publish_checkpoint (hash, parallel upload, MANIFEST, LATEST, retention)
     vs a raw fsspec `put` of the same files                         target >= 0.9
  2. loop blocked per checkpoint: background publish (write locally + submit) vs
     synchronous (write locally + publish), in a loop that computes between checkpoints
                                                                     target <= 0.5
  3. peak resident memory a publish adds, relative to the checkpoint size, measured in a
     fresh process (no TensorFlow) with the kernel's high-water mark reset  target <= 1.2

    .venv/bin/python bench/checkpoint_publish.py [--megabytes 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the Azurite helper the tests use

from azurite import Azurite  # noqa: E402


def write_checkpoint(prefix: Path, megabytes: int):
    """A real TF checkpoint of `megabytes` of float32 variables; returns its writer."""
    import numpy as np
    import tensorflow as tf

    values = megabytes * (1 << 20) // 4 // 4
    rng = np.random.default_rng(0)
    variables = [tf.Variable(rng.standard_normal(values, dtype=np.float32)) for _ in range(4)]
    checkpoint = tf.train.Checkpoint(variables=variables)
    checkpoint.write(str(prefix))
    return checkpoint


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def time_raw_put(run_dir, folder: Path, target: str) -> float:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    start = time.perf_counter()
    run_dir.fs.put([str(p) for p in files], [run_dir.path(f"{target}/{p.name}") for p in files])
    return time.perf_counter() - start


def time_publish(run_dir, folder: Path, step: int) -> float:
    from disttrain.checkpoints import publish_checkpoint

    start = time.perf_counter()
    publish_checkpoint(run_dir, folder, step, keep=2, log=lambda _: None)
    return time.perf_counter() - start


def throughput_ratio(run_dir, folder: Path, repeats: int) -> tuple[float, float, float]:
    raw, published = [], []
    for i in range(repeats):  # interleaved, so drift in the machine hits both alike
        raw.append(time_raw_put(run_dir, folder, f"raw/{i}"))
        published.append(time_publish(run_dir, folder, 1000 + i))
    raw_s, pub_s = statistics.median(raw), statistics.median(published)
    return raw_s / pub_s, raw_s, pub_s


def blocked_per_checkpoint(run_dir, staging: Path, megabytes: int, checkpoints: int, background):
    """Mean seconds the loop waits per checkpoint; the loop computes between checkpoints."""
    import shutil

    import tensorflow as tf

    from disttrain.checkpoints import BackgroundPublisher, publish_checkpoint, staged_prefix

    checkpoint = write_checkpoint(staging / "init" / "ckpt", megabytes)
    shutil.rmtree(staging / "init")
    publisher = BackgroundPublisher(run_dir, 2, log=lambda _: None) if background else None
    matrix = tf.random.normal([512, 512])
    blocked = []
    for step in range(1, checkpoints + 1):
        compute_until = time.perf_counter() + 4.0  # "training" between checkpoints
        while time.perf_counter() < compute_until:
            matrix = tf.linalg.matmul(matrix, matrix) / 512.0
        start = time.perf_counter()
        prefix = staged_prefix(staging, step)
        checkpoint.write(str(prefix))
        if background:
            publisher.submit(prefix.parent, step)
        else:
            publish_checkpoint(run_dir, prefix.parent, step, keep=2, log=lambda _: None)
            shutil.rmtree(prefix.parent)
        blocked.append(time.perf_counter() - start)
    if publisher is not None:
        publisher.flush()
        assert publisher.published[-1] == checkpoints, publisher.errors
    return statistics.mean(blocked)


def memory_probe(folder: str, url: str) -> None:
    """Child process: publish once, print the resident memory it added (bytes) as JSON."""
    from disttrain.checkpoints import publish_checkpoint
    from disttrain.storage import RunDir

    run_dir = RunDir(url)
    run_dir.write_text("warm-up", "x")  # connect and import everything before measuring
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    publish_checkpoint(run_dir, Path(folder), 5000, keep=2, log=lambda _: None)
    peak = _status_kib("VmHWM")
    print(json.dumps({"before": before * 1024, "peak": peak * 1024}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_ratio(folder: Path, url: str, env: dict) -> tuple[float, dict]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(folder), url],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    ).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    return (measured["peak"] - measured["before"]) / folder_bytes(folder), measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="checkpoint size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=3, help="per blocked-time mode")
    parser.add_argument("--memory-probe", nargs=2, metavar=("FOLDER", "URL"))
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as scratch_name:
        scratch = Path(scratch_name)
        azurite = Azurite(scratch / "azurite")
        azurite.start()
        try:
            run(args, scratch, azurite)
        finally:
            azurite.stop()


def run(args, scratch: Path, azurite: Azurite) -> None:
    os.environ.update(azurite.env())
    from disttrain.checkpoints import staged_prefix
    from disttrain.storage import RunDir

    run_dir = RunDir(f"az://{azurite.create_container()}/bench")
    prefix = staged_prefix(scratch / "staging", 1)
    write_checkpoint(prefix, args.megabytes)
    size = folder_bytes(prefix.parent)
    print(f"checkpoint: {size / 2**20:.0f} MiB in {len(list(prefix.parent.iterdir()))} files")

    ratio, raw_s, pub_s = throughput_ratio(run_dir, prefix.parent, args.repeats)
    print(
        f"1. publish throughput / raw fsspec put: {ratio:.2f}   "
        f"(raw {size / raw_s / 2**20:.0f} MiB/s, publish {size / pub_s / 2**20:.0f} MiB/s)"
        f"   target >= 0.9"
    )
    memory, measured = memory_ratio(prefix.parent, run_dir.url, azurite.env())
    sync_blocked = blocked_per_checkpoint(
        run_dir, scratch / "sync", args.megabytes, args.checkpoints, background=False
    )
    background_blocked = blocked_per_checkpoint(
        run_dir, scratch / "background", args.megabytes, args.checkpoints, background=True
    )
    print(
        f"2. loop blocked per checkpoint, background / synchronous: "
        f"{background_blocked / sync_blocked:.2f}   "
        f"({background_blocked:.2f} s vs {sync_blocked:.2f} s)   target <= 0.5"
    )
    print(
        f"3. peak resident memory added by a publish / checkpoint size: {memory:.2f}   "
        f"({(measured['peak'] - measured['before']) / 2**20:.0f} MiB added, "
        f"{measured['peak'] / 2**20:.0f} MiB peak)   target <= 1.2"
    )


if __name__ == "__main__":
    main()
