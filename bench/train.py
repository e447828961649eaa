"""Training speed: the report's loop against ours, at the same model, resolution and batch size.

The report's loop (reimplemented here as the report wrote it, with Keras 3): per step,
``G.predict`` makes the fakes, ``D.train_on_batch`` on the real pair, ``D.train_on_batch`` on the
fake pair, then ``GAN.train_on_batch`` on the composite model (D frozen inside it, losses BCE and
MAE weighted 1 and 100). Its batches come from arrays in memory, as the report's did.

Ours: ``Pix2Pix.train_step`` (one compiled two-tape step, the step ``fit`` runs, its optimiser
``FusedAdam``: Keras's Adam through TensorFlow's fused kernel) fed by the
training input pipeline (``models.data.make_dataset``); the time spent waiting for the next batch
is measured apart from the step. A ``fit`` run at batch 1 checks that fit costs the same.

Both at 256x256, the report's generator and discriminator (preset ``seed``, width 64), batch 1
and batch 8, float32 and mixed bfloat16 (where the CPU has it). FLOPs per training image are
3 x the forward FLOPs of G + 2 D (forward, and backward at twice the forward).

    python bench/train.py            # about 8-10 minutes on 2 cores
    python bench/train.py --quick    # batch 1 only, fewer steps
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import PRESET, ROOT, SIZE, WIDTH, conv_flops, machine, matmul_gflops, median, table


def dataset_files(tmp: Path) -> tuple[list[Path], str]:
    folder = ROOT / "var" / "default-model" / "datasets" / "default-train"
    files = sorted(folder.glob("*.jpg"))
    if files:
        return files, f"{folder} ({len(files)} photographs)"
    from PIL import Image

    from tests.photos import make_photo

    files = []
    for i in range(12):
        path = tmp / f"photo{i}.jpg"
        Image.fromarray(make_photo(640, 480, seed=i)).save(path, quality=92)
        files.append(path)
    return files, "synthetic (12 photographs, 640x480)"


def networks(policy: str):
    import keras

    from models.networks import build_discriminator, build_generator

    keras.utils.set_random_seed(0)
    dtype = None if policy == "float32" else policy
    return (
        build_generator(SIZE, 3, 3, width=WIDTH, dtype=dtype),
        build_discriminator(SIZE, 3, 3, width=WIDTH, dtype=dtype),
    )


def report_loop(policy: str, batches: list, warmup: int, steps: int) -> dict:
    """The report's training step, timed per step after ``warmup`` steps."""
    import keras

    generator, discriminator = networks(policy)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)  # the report: sigmoid + BCE
    discriminator.compile(
        optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss=bce, loss_weights=[0.5], jit_compile=False
    )
    source, target = batches[0]
    patches = np.asarray(discriminator([source, target], training=False)).shape[1:]  # (16, 16, 1) at 256
    real = np.ones((source.shape[0], *patches), np.float32)
    fake = np.zeros_like(real)
    # Keras 3 reads trainability when it traces: trace D's own step while it is trainable.
    discriminator.train_on_batch([source, target], real)
    discriminator.trainable = False
    image = keras.Input((SIZE, SIZE, 3))
    generated = generator(image)
    gan = keras.Model(image, [discriminator([image, generated]), generated])
    gan.compile(
        optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
        loss=[bce, "mae"],
        loss_weights=[1, 100],
        jit_compile=False,
    )
    times = []
    for step in range(warmup + steps):
        source, target = batches[step % len(batches)]
        start = time.perf_counter()
        fakes = generator.predict(source, verbose=0)
        discriminator.train_on_batch([source, target], real)
        discriminator.train_on_batch([source, fakes], fake)
        gan.train_on_batch(source, [real, target])
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"step": median(times), "wait": 0.0}


def our_step(policy: str, files: list[Path], batch_size: int, warmup: int, steps: int) -> dict:
    """Pix2Pix.train_step compiled, fed by make_dataset; the wait for each batch timed apart."""
    import tensorflow as tf

    from models.data import make_dataset
    from models.pix2pix import Pix2Pix

    generator, discriminator = networks(policy)
    model = Pix2Pix(generator, discriminator)
    model.compile()
    step_fn = tf.function(model.train_step)
    iterator = iter(make_dataset(files, SIZE, batch_size, PRESET))
    waits, totals = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        batch = next(iterator)
        got = time.perf_counter()
        logs = step_fn(batch)
        float(logs["g_loss"])  # wait for the step to finish
        end = time.perf_counter()
        if step >= warmup:
            waits.append(got - start)
            totals.append(end - start)
    return {"step": median(totals), "wait": sum(waits) / sum(totals)}


def our_fit(policy: str, files: list[Path], batch_size: int, warmup: int, steps: int) -> dict:
    """Pix2Pix.fit as a training job runs it, timed per step (callback) after ``warmup`` steps."""
    import keras

    from models.data import make_dataset
    from models.pix2pix import Pix2Pix

    generator, discriminator = networks(policy)
    model = Pix2Pix(generator, discriminator)
    model.compile()
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    dataset = make_dataset(files, SIZE, batch_size, PRESET)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[Stamp()], verbose=0)
    intervals = np.diff(stamps[warmup - 1 :])
    return {"step": float(np.median(intervals)), "wait": float("nan")}


def memory_batches(files: list[Path], batch_size: int, count: int) -> list:
    """``count`` batches from the training pipeline, as numpy arrays in memory (the report's way)."""
    from models.data import make_dataset

    iterator = iter(make_dataset(files, SIZE, batch_size, PRESET))
    return [tuple(np.asarray(t) for t in next(iterator)) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer steps")
    args = parser.parse_args()
    total_start = time.perf_counter()

    from models.device import bfloat16_supported, configure_tensorflow

    configure_tensorflow("cpu")
    print(f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    limit = {"float32": matmul_gflops("float32")}
    policies = ["float32"]
    if bfloat16_supported("CPU:0"):
        limit["mixed_bfloat16"] = matmul_gflops("bfloat16")
        policies.append("mixed_bfloat16")
    generator, discriminator = networks("float32")
    g_flops = conv_flops(generator, [(SIZE, SIZE, 3)])
    d_flops = conv_flops(discriminator, [(SIZE, SIZE, 3), (SIZE, SIZE, 3)])
    del generator, discriminator
    train_gflop = 3 * (g_flops + 2 * d_flops) / 1e9
    flops = f"G {g_flops / 1e9:.1f} + D {d_flops / 1e9:.1f} GFLOP forward"
    print(f"Model: preset {PRESET}, {SIZE}x{SIZE}, width {WIDTH}: {flops}; ", end="")
    print(f"{train_gflop:.0f} GFLOP per training image (3 x (G + 2 D))")
    # The report's loop does more arithmetic per image: G.predict (G), D trained on the real and on
    # the fake pair (2 x 3 D), then the composite model (3 G for G, and D forward plus its input
    # gradients, about 2 D, with D frozen): 4 G + 8 D, 4/3 of ours. The rest of a step is memory
    # bound: Keras's Adam (a dozen passes over G's 54M parameters, two D updates a step) against
    # our fused one, and four Keras calls against one compiled step.
    report_gflop = (4 * g_flops + 8 * d_flops) / 1e9
    print(
        f"The report's loop: about {report_gflop:.0f} GFLOP per image (4 G + 8 D), "
        f"{report_gflop / train_gflop:.2f}x ours; optimiser updates and call overheads come on top"
    )
    print("Limit: " + ", ".join(f"{k} matmul {v:.0f} GFLOP/s" for k, v in limit.items()))

    plans = [(1, 2, 6 if args.quick else 12)]
    if not args.quick:
        plans.append((8, 1, 3))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, source = dataset_files(Path(tmp))
        print(f"Photographs: {source}")
        for batch_size, warmup, steps in plans:
            batches = memory_batches(files, batch_size, 4)
            for policy in policies:
                runs = {
                    "report loop (predict + 3 x train_on_batch)": report_loop(policy, batches, warmup, steps),
                    "ours: Pix2Pix.train_step + make_dataset": our_step(
                        policy, files, batch_size, warmup, steps
                    ),
                }
                if batch_size == 1 and policy == "float32" and not args.quick:
                    runs["ours: Pix2Pix.fit (as a job runs)"] = our_fit(
                        policy, files, batch_size, warmup, steps
                    )
                base = batch_size / runs["report loop (predict + 3 x train_on_batch)"]["step"]
                for name, run in runs.items():
                    images = batch_size / run["step"]
                    share = images * train_gflop / limit.get(policy, limit["float32"])
                    wait = run["wait"]
                    rows.append(
                        [
                            name,
                            policy,
                            batch_size,
                            1.0 / run["step"],
                            images,
                            images / base,
                            f"{100 * share:.1f}%",
                            "-" if wait != wait else f"{100 * wait:.1f}%",
                        ]
                    )
    header = ["loop", "precision", "batch", "steps/s", "images/s", "x report", "of limit", "input stall"]
    print(table(f"Training speed at {SIZE}x{SIZE} (medians after warm-up)", header, rows))
    print(f"\nTotal benchmark time: {time.perf_counter() - total_start:.0f} s")


if __name__ == "__main__":
    main()
