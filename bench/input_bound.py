"""Is training input-bound? Steps/s with the real pipeline vs a cached synthetic batch.

Same model, same step function (make_train_chunk), same batch size, one process: the
only difference is where the batches come from. On the built-in dataset (32x32 JPEGs,
decoded and cropped on the host while the step runs) vs one cached uint8 batch that
costs nothing to produce. A ratio near 1 means the pipeline keeps up with the model
(target >= 0.95 for small_cnn).

    .venv/bin/python bench/input_bound.py [--model small_cnn] [--steps 600]
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

from disttrain.config import DataConfig, ModelConfig, TrainConfig
from disttrain.data.pipeline import list_split, train_dataset
from disttrain.models import build_model
from disttrain.steps import make_optimizer, make_train_chunk

STEPS_PER_CHUNK = 10


def steps_per_second(config: DataConfig, model_name: str, steps: int) -> float:
    split = list_split(config, "train")
    model = build_model(ModelConfig(name=model_name), config.image_size, len(split.class_names))
    optimizer = make_optimizer(TrainConfig(), model)
    chunk = make_train_chunk(tf.distribute.get_strategy(), model, optimizer)
    iterator = iter(train_dataset(config, split, 1, 0))
    float(chunk(iterator, tf.constant(STEPS_PER_CHUNK))[0])  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps // STEPS_PER_CHUNK):
        float(chunk(iterator, tf.constant(STEPS_PER_CHUNK))[0])
    return steps // STEPS_PER_CHUNK * STEPS_PER_CHUNK / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    real = DataConfig(source="builtin", batch_size=args.batch_size)
    synthetic = DataConfig(source="synthetic", synthetic_classes=6, batch_size=args.batch_size)
    # Alternate to spread machine noise over both, then keep each one's best.
    rates = {"real": [], "synthetic": []}
    for _ in range(2):
        rates["synthetic"].append(steps_per_second(synthetic, args.model, args.steps))
        rates["real"].append(steps_per_second(real, args.model, args.steps))
    real_rate, cached_rate = max(rates["real"]), max(rates["synthetic"])
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps per measurement")
    print(f"real pipeline (built-in JPEGs) : {real_rate:7.1f} steps/s")
    print(f"cached synthetic batch         : {cached_rate:7.1f} steps/s")
    print(f"real / cached                  : {real_rate / cached_rate:5.2f}   (target >= 0.95)")


if __name__ == "__main__":
    main()
