"""The best export: a SavedModel of the best checkpoint, for clients and TensorFlow Serving.

It has two signatures. `serving_default` takes uint8 pixels as the input pipeline ships
them; `serving_bytes` takes encoded JPEG or PNG files of any size and decodes, crops and
resizes them with the evaluation's own decoder (data/decode.py), so a served image is
classified exactly as the evaluator scored it. Both normalise as evaluation does.

The run dir holds it twice:

    export/best/             the SavedModel and metrics.json: what disttrain itself reads
    export/serving/<step>/   the same SavedModel as TensorFlow Serving's numbered version
                             of the base path export/serving/; only the current best

Publishing and reading need no TensorFlow (it is imported where a model is exported), so
`disttrain predict` can say that a run has no export before it loads TensorFlow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from disttrain.progress import log
from disttrain.storage import (
    BEST_EXPORT,
    BEST_EXPORT_NEXT,
    BEST_METRICS,
    BEST_NEXT_METRICS,
    SERVING_EXPORT,
    RunDir,
    with_retries,
)

if TYPE_CHECKING:
    import keras

SERVING_SIGNATURE = "serving_default"  # uint8 pixels in
BYTES_SIGNATURE = "serving_bytes"  # encoded image files in
# Beside each SavedModel; written last and deleted first, so it marks a complete folder.
EXPORT_METRICS = "metrics.json"
# No reader takes a folder for a SavedModel without it: a serving version's last file.
SAVED_MODEL_FILE = "saved_model.pb"


def export_saved_model(
    model: keras.Model, image_size: int, class_names: list[str], path: Path
) -> None:
    """Write `model` as a SavedModel with both serving signatures (see the module doc).

    `serving_default`: `images`, uint8 [N, size, size, 3] -> `logits`, `probabilities`,
    `classes` (the index). `serving_bytes`: `image_bytes`, string [N] -> `probabilities`,
    `class_index` and `class_name`, from `class_names` in label order (an output name
    without a `_bytes` suffix: TensorFlow Serving's REST API returns it as text, not base64).
    """
    import keras
    import tensorflow as tf

    from disttrain.data.decode import decode_central_crop
    from disttrain.data.pipeline import prepare_on_device

    names = tf.constant(list(class_names))

    def logits_of(images):
        logits = model(prepare_on_device(images, training=False), training=False)
        return tf.cast(logits, tf.float32)

    def serve_pixels(images):
        logits = logits_of(images)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
        }

    def serve_files(image_bytes):
        pixels = tf.map_fn(
            lambda data: decode_central_crop(data, image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        logits = logits_of(pixels)
        index = tf.argmax(logits, axis=-1)
        return {
            "probabilities": tf.nn.softmax(logits),
            "class_index": index,
            "class_name": tf.gather(names, index),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, "images")
    archive.add_endpoint(name=SERVING_SIGNATURE, fn=serve_pixels, input_signature=[pixels])
    files = tf.TensorSpec([None], tf.string, "image_bytes")
    archive.add_endpoint(name=BYTES_SIGNATURE, fn=serve_files, input_signature=[files])
    archive.write_out(str(path), verbose=False)


def best_export_folder(run_dir: RunDir) -> str | None:
    """The folder that holds the complete best export (None when there is none).

    That is export/best/, unless a replacement was cut short while rewriting it: then the
    complete copy is export/best.next/ (see `publish_export`).
    """
    for folder, metrics in ((BEST_EXPORT, BEST_METRICS), (BEST_EXPORT_NEXT, BEST_NEXT_METRICS)):
        if run_dir.exists(metrics):
            return folder
    return None


def best_metrics(run_dir: RunDir) -> dict | None:
    """The metrics of the current best export (None when there is none)."""
    for metrics in (BEST_METRICS, BEST_NEXT_METRICS):
        try:
            return json.loads(run_dir.read_text(metrics))
        except FileNotFoundError:
            continue
    return None


def publish_export(run_dir: RunDir, local: Path, metrics: dict) -> None:
    """Replace export/best/ so that the run dir always holds one complete best export, then
    make it TensorFlow Serving's current version (`publish_serving_version`).

    Blob storage cannot rename a folder, so export/best/ is rewritten in place and is
    incomplete while that happens. A complete copy must exist elsewhere first: the new
    export goes to export/best.next/, then export/best/ is rewritten, then best.next/ is
    deleted. An outage anywhere leaves export/best/ complete (old or new) or best.next/
    complete (new); `best_metrics` and retention read both, `repair_best_export` finishes
    an interrupted swap. (Moving the old export aside instead would mean copying remote
    files; the new ones are here on local disk.)
    """
    if run_dir.exists(BEST_METRICS):  # export/best/ is complete: it stays until best.next/ is
        _write_export(run_dir, local, metrics, BEST_EXPORT_NEXT)
    # Otherwise export/best/ is incomplete already (the first export, or a swap cut short
    # whose complete copy stays in best.next/ until export/best/ is whole again).
    _write_export(run_dir, local, metrics, BEST_EXPORT)
    _delete_export(run_dir, BEST_EXPORT_NEXT)
    publish_serving_version(run_dir, local, metrics["step"])


def _write_export(run_dir: RunDir, local: Path, metrics: dict, folder: str) -> None:
    """Upload a SavedModel to `folder`, with metrics.json deleted first and written last."""
    _delete_export(run_dir, folder)
    _upload(run_dir, local, folder)
    marker, text = f"{folder}/{EXPORT_METRICS}", json.dumps(metrics, sort_keys=True, indent=1)
    with_retries(lambda: run_dir.write_text(marker, text), f"write {marker}", log=log)


def _delete_export(run_dir: RunDir, folder: str) -> None:
    """Its metrics.json first: a deletion cut short never leaves a folder that looks complete."""
    marker = f"{folder}/{EXPORT_METRICS}"
    with_retries(lambda: run_dir.delete(marker), f"delete {marker}", log=log)
    with_retries(lambda: run_dir.delete(folder), f"delete {folder}", log=log)


def _upload(run_dir: RunDir, local: Path, folder: str) -> None:
    """Every file of `local` into `folder`, saved_model.pb last."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.relative_to(local).as_posix() == SAVED_MODEL_FILE):
        relative = f"{folder}/{path.relative_to(local).as_posix()}"
        with_retries(
            lambda p=path, r=relative: run_dir.put_file(p, r), f"upload {relative}", log=log
        )


def serving_version(step: int) -> str:
    return f"{SERVING_EXPORT}/{step}"


def publish_serving_version(run_dir: RunDir, local: Path, step: int) -> None:
    """Make the SavedModel in `local` version `step` of export/serving/, the only one.

    TensorFlow Serving watches the base path and loads the highest-numbered folder as soon
    as it is listed, so a version must never be seen half-written. In a local run dir (a
    mounted share included) it is written under a name TF Serving skips (not a number) and
    renamed into place, one atomic step; object storage has no rename, so there
    saved_model.pb, without which no reader takes a folder for a SavedModel, goes last. A
    step's weights never change, so a complete version is not written again. Older
    versions go once the new one is complete (TF Serving unloads them after loading it).
    """
    version = serving_version(step)
    if not run_dir.exists(f"{version}/{SAVED_MODEL_FILE}"):
        target = f"{SERVING_EXPORT}/partial-{step}" if run_dir.is_local else version
        for folder in dict.fromkeys((target, version)):  # an upload cut short
            with_retries(lambda f=folder: run_dir.delete(f), f"delete {folder}", log=log)
        _upload(run_dir, local, target)
        if target != version:
            run_dir.rename(target, version)
    for name in run_dir.list_names(SERVING_EXPORT):
        if name != str(step):
            older = f"{SERVING_EXPORT}/{name}"
            with_retries(lambda o=older: run_dir.delete(o), f"delete {older}", log=log)


def repair_best_export(run_dir: RunDir, scratch: Path) -> None:
    """Finish a publication that was cut short (the evaluator calls it when it starts).

    A replacement cut short while export/best/ was being rewritten: copy the complete
    export/best.next/ into export/best/. One cut short before its serving version was
    complete (or a run dir from before export/serving/): publish export/best/ as that
    version. Both go through local scratch.
    """
    if not run_dir.exists(BEST_METRICS) and run_dir.exists(BEST_NEXT_METRICS):
        metrics = _download_export(run_dir, BEST_EXPORT_NEXT, scratch)
        publish_export(run_dir, scratch, metrics)
        log(f"eval | repaired {BEST_EXPORT} | ckpt-{metrics['step']} from {BEST_EXPORT_NEXT}")
    elif run_dir.exists(BEST_METRICS):
        step = json.loads(run_dir.read_text(BEST_METRICS))["step"]
        if run_dir.exists(f"{serving_version(step)}/{SAVED_MODEL_FILE}"):
            return
        _download_export(run_dir, BEST_EXPORT, scratch)
        publish_serving_version(run_dir, scratch, step)
        log(f"eval | repaired {serving_version(step)} | ckpt-{step} from {BEST_EXPORT}")
    shutil.rmtree(scratch, ignore_errors=True)


def _download_export(run_dir: RunDir, folder: str, scratch: Path) -> dict:
    """The SavedModel of `folder` into `scratch` (emptied first); its metrics."""
    metrics = json.loads(run_dir.read_text(f"{folder}/{EXPORT_METRICS}"))
    shutil.rmtree(scratch, ignore_errors=True)
    for relative in run_dir.list_files(folder):
        if relative != EXPORT_METRICS:
            run_dir.get_file(f"{folder}/{relative}", scratch / relative)
    return metrics
