"""`disttrain predict` on a real best export: the table, JSON, remote files, and its errors.

The command runs in this process (Typer's CliRunner), so TensorFlow is loaded once for the
module and a `memory://` run dir is visible to it; the trained job in
test_local_launcher.py runs it as a process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf
from typer.testing import CliRunner, Result

from disttrain.cli import app
from disttrain.export import BYTES_SIGNATURE, export_saved_model, publish_export
from disttrain.storage import RunDir

CLASSES = ["circle", "cross", "ring", "square", "stripes", "triangle"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A local SavedModel exported as the evaluator exports one (a small random model)."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(len(CLASSES))]
    )
    path = tmp_path_factory.mktemp("export") / "model"
    export_saved_model(model, 32, CLASSES, path)
    return path


@pytest.fixture(scope="module")
def run_dir(exported, tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("run"))
    publish_export(RunDir(url), exported, {"step": 300, "accuracy": 0.5, "class_names": CLASSES})
    return url


def predict(*args: str, monkeypatch) -> Result:
    # The command sets TensorFlow's log level for its process: keep it out of this one's.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return CliRunner().invoke(app, ["predict", *args])


def expected(exported: Path, files: list[Path]) -> list[dict]:
    """What the export's bytes signature says of each file, called directly."""
    classify = tf.saved_model.load(str(exported)).signatures[BYTES_SIGNATURE]
    found = classify(image_bytes=tf.constant([f.read_bytes() for f in files]))
    return [
        {"image": str(f), "class": CLASSES[i], "probability": float(p[i])}
        for f, i, p in zip(files, found["class_index"].numpy(), found["probabilities"].numpy())
    ]


def test_predict_prints_each_images_class_and_probability(
    run_dir, exported, builtin_data, monkeypatch
):
    files = [
        builtin_data / "test" / "ring" / "00007.jpg",
        builtin_data / "test" / "cross" / "00002.jpg",
    ]
    want = expected(exported, files)

    table = predict("--run-dir", run_dir, *map(str, files), monkeypatch=monkeypatch)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CLASS", "PROBABILITY"]
    assert [line.split() for line in lines[1:]] == [
        [row["image"], row["class"], f"{row['probability']:.4f}"] for row in want
    ]

    as_json = predict("--run-dir", run_dir, "-o", "json", *map(str, files), monkeypatch=monkeypatch)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [
        {**row, "probability": pytest.approx(row["probability"])} for row in want
    ]


def test_predict_reads_a_remote_run_dir_and_remote_images(exported, builtin_data, monkeypatch):
    image = builtin_data / "test" / "square" / "00001.jpg"
    remote = RunDir("memory://predict-run")
    publish_export(remote, exported, {"step": 300, "class_names": CLASSES})
    remote.write_bytes("images/square.jpg", image.read_bytes())
    result = predict(
        "--run-dir",
        "memory://predict-run",
        "-o",
        "json",
        "memory://predict-run/images/square.jpg",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0, result.output
    (want,) = expected(exported, [image])
    assert json.loads(result.stdout) == [
        {
            **want,
            "image": "memory://predict-run/images/square.jpg",
            "probability": pytest.approx(want["probability"]),
        }
    ]


def test_predict_errors_are_one_line_naming_the_run_dir_or_the_file(
    run_dir, builtin_data, tmp_path, monkeypatch
):
    image = str(builtin_data / "test" / "ring" / "00007.jpg")
    empty = str(tmp_path / "no-export")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(image).read_bytes()[:200])
    cases = {
        (empty, image): f"no best export in {empty}: the evaluator writes export/best/ when it "
        "evaluates a checkpoint (eval.enabled: true while training), or run `disttrain eval "
        f"--run-dir {empty} --once` on a run with checkpoints",
        (run_dir, str(tmp_path / "missing.jpg")): f"image not found: {tmp_path / 'missing.jpg'}",
        (run_dir, str(truncated)): f"{truncated} is not a JPEG or PNG image that can be decoded",
    }
    for (where, path), message in cases.items():
        result = predict("--run-dir", where, image, path, monkeypatch=monkeypatch)
        assert (result.exit_code, result.stderr) == (2, f"error: {message}\n")
        assert result.stdout == ""


def test_predict_says_so_when_the_export_predates_the_bytes_signature(
    tmp_path, builtin_data, monkeypatch
):
    import keras

    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    old = tmp_path / "old"
    archive = keras.export.ExportArchive()  # what export/best/ held before serving_bytes
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {"logits": model(tf.cast(images, tf.float32))},
        input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, "images")],
    )
    archive.write_out(str(old), verbose=False)
    run = RunDir(str(tmp_path / "run"))
    for path in (p for p in old.rglob("*") if p.is_file()):
        run.put_file(path, f"export/best/{path.relative_to(old).as_posix()}")
    run.write_text("export/best/metrics.json", json.dumps({"step": 100}))

    result = predict(
        "--run-dir",
        run.url,
        str(builtin_data / "test" / "ring" / "00007.jpg"),
        monkeypatch=monkeypatch,
    )
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: the best export in {run.url}/export/best has no serving_bytes signature (only "
        "serving_default): an older disttrain wrote it; the evaluator's next best export has it\n",
    )
