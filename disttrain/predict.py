"""`disttrain predict`: classify image files with a run's best export.

The files go through the export's `serving_bytes` signature, the one TensorFlow Serving
serves, so what it prints is what a served model answers and what the evaluator scored.
Everything that can be wrong with the input (no export, a file that is not there) is found
before TensorFlow is imported; a file that does not decode is found by the signature itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from disttrain.export import BYTES_SIGNATURE, EXPORT_METRICS, best_export_folder
from disttrain.storage import RunDir, StorageError, describe, read_file_at


class PredictError(Exception):
    """Input `disttrain predict` cannot use; the message names it and what to do."""


@dataclass(frozen=True)
class Prediction:
    image: str
    class_name: str
    probability: float

    def to_dict(self) -> dict:
        return {"image": self.image, "class": self.class_name, "probability": self.probability}


def predict_images(run_dir_url: str, images: list[str]) -> list[Prediction]:
    """The most probable class of each image (a path or fsspec URL), in the given order."""
    run_dir = RunDir(run_dir_url)
    try:
        folder = best_export_folder(run_dir)
    except Exception as exc:  # an unreachable or refusing account: one line, no traceback
        cause = f"cannot look for its best export: {describe(exc)}"
        raise StorageError(run_dir.url, cause) from None
    if folder is None:
        raise PredictError(
            f"no best export in {run_dir.url}: the evaluator writes export/best/ when it "
            "evaluates a checkpoint (eval.enabled: true while training), or run `disttrain "
            f"eval --run-dir {run_dir.url} --once` on a run with checkpoints"
        )
    encoded = [read_image(image) for image in images]
    with tempfile.TemporaryDirectory(prefix="disttrain-predict-") as scratch:
        classify = load_bytes_signature(run_dir, folder, Path(scratch))
        return [classify_one(classify, image, data) for image, data in zip(images, encoded)]


def read_image(image: str) -> bytes:
    try:
        return read_file_at(image)
    except FileNotFoundError:
        raise PredictError(f"image not found: {image}") from None
    except Exception as exc:  # a folder, no permission, unreachable storage
        raise PredictError(f"cannot read image {image}: {describe(exc)}") from None


def load_bytes_signature(run_dir: RunDir, folder: str, scratch: Path):
    """The export's bytes signature; a remote export is downloaded into `scratch` first."""
    import tensorflow as tf

    path = run_dir.path(folder)
    if not run_dir.is_local:
        for relative in run_dir.list_files(folder):
            if relative != EXPORT_METRICS:
                run_dir.get_file(f"{folder}/{relative}", scratch / relative)
        path = str(scratch)
    signatures = tf.saved_model.load(path).signatures
    if BYTES_SIGNATURE not in signatures:
        raise PredictError(
            f"the best export in {run_dir.url_of(folder)} has no {BYTES_SIGNATURE} "
            f"signature (only {', '.join(sorted(signatures))}): an older disttrain wrote it; "
            "the evaluator's next best export has it"
        )
    return signatures[BYTES_SIGNATURE]


def classify_one(classify, image: str, data: bytes) -> Prediction:
    """One file through the signature: a file that does not decode fails alone, by name."""
    import tensorflow as tf

    try:
        found = classify(image_bytes=tf.constant([data]))
    except tf.errors.InvalidArgumentError:
        raise PredictError(f"{image} is not a JPEG or PNG image that can be decoded") from None
    index = int(found["class_index"][0])
    return Prediction(
        image=image,
        class_name=found["class_name"][0].numpy().decode(),
        probability=float(found["probabilities"][0, index]),
    )
