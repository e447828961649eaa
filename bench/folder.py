"""Folder throughput of ``colorizer colorize``: the pipeline against the old one-at-a-time loop.

In one run, with the report's generator (the ``seed`` preset: 256x256, width 64, random weights:
speed does not depend on them) published into a temporary store, on folders of JPEG photographs
at 256x256 and at about 2 MP:

1. the old loop: open, EXIF-transpose, ``colorize_array`` (float32 Keras generator, batch 1),
   save, one file after another (the command before the pipeline);
2. the pipeline (``cli.colorize.FolderRun``, what the command runs now): decoding and encoding
   thread pools around the engine's batched model, in float32 and in the served precision
   (bfloat16 where the CPU has it).

Each row is the median images/s over a few rounds, model loading excluded (it is reported once,
as the command's start-up). Outputs are PNG (the command's default) and JPEG. Prints Markdown.

    python bench/folder.py            # about 3 minutes on 2 cores
    python bench/folder.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import (
    PRESET,
    SIZE,
    WIDTH,
    jpeg,
    machine,
    median,
    megapixels,
    photographs,
    report_generator,
    square,
    table,
)


def write_folder(folder: Path, photos: list, count: int) -> None:
    """``count`` JPEG files cycling through ``photos``."""
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"photo{i:03d}.jpg").write_bytes(jpeg(photos[i % len(photos)]))


def old_loop(model, folder: Path, out_dir: Path, fmt: str) -> int:
    """The command's loop before the pipeline (service/cli.py at 2bc1a3e), minus the progress bar."""
    import numpy as np
    from PIL import Image, ImageOps

    from models.colorize import colorize_array

    out_dir.mkdir(parents=True)
    done = 0
    for path in sorted(folder.iterdir()):
        with Image.open(path) as img:
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        target = out_dir / f"{path.stem}.{'jpg' if fmt == 'jpeg' else fmt}"
        result = Image.fromarray(colorize_array(model, rgb))
        result.save(target, format=fmt.upper(), **({"quality": 95} if fmt != "png" else {}))
        done += 1
    return done


def pipeline(engine, model, folder: Path, out_dir: Path, fmt: str, jobs: int, window: int) -> int:
    from cli.colorize import FolderRun, plan_outputs
    from inference.pipeline import Pipeline

    tasks = plan_outputs((folder,), out_dir, fmt)
    failures: list[str] = []
    run = FolderRun(
        Pipeline(engine, max_pixels=10**9),
        model,
        fmt=fmt,
        render_size=None,
        jobs=jobs,
        window=window,
    )
    run.run(tasks, lambda task, error: failures.append(f"{task.source}: {error}") if error else None)
    if failures:
        raise RuntimeError(f"{len(failures)} failed, e.g. {failures[0]}")
    return len(tasks)


def rate(fn, folder: Path, work: Path, rounds: int) -> float:
    """Median images/s of ``fn(folder, out_dir)`` over ``rounds`` runs into fresh folders."""
    rates = []
    for i in range(rounds):
        out_dir = work / f"out-{time.monotonic_ns()}-{i}"
        start = time.perf_counter()
        count = fn(folder, out_dir)
        rates.append(count / (time.perf_counter() - start))
        shutil.rmtree(out_dir)
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller folders, fewer rounds")
    args = parser.parse_args()
    counts = {"256x256": 24 if args.quick else 48, "2 MP": 8 if args.quick else 16}
    rounds = 2 if args.quick else 3
    total_start = time.perf_counter()

    from models.device import configure_tensorflow

    configure_tensorflow("cpu")
    from common.settings import Settings
    from inference.engine import Engine
    from models.store import ModelStore

    settings = Settings()
    jobs = min(4, os.cpu_count() or 1)
    window = max(2 * settings.max_batch_size, 2 * jobs)
    print(f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    photos, source = photographs()
    sets = {"256x256": [square(p, SIZE) for p in photos], "2 MP": [megapixels(p, 2.0) for p in photos]}
    print(
        f"Model: the report's generator (preset {PRESET}: {SIZE}x{SIZE}, width {WIDTH}); photographs: "
        f"{source}, 2 MP = {sets['2 MP'][0].shape[1]}x{sets['2 MP'][0].shape[0]}; pipeline: {jobs} decode "
        f"+ {jobs} encode threads, {window} in flight, batches of up to {settings.max_batch_size}"
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = ModelStore(work / "models")
        store.publish(report_generator(), {"preset": PRESET, "image_size": SIZE, "width": WIDTH})
        folders = {}
        for name, pictures in sets.items():
            folders[name] = work / name.replace(" ", "")
            write_folder(folders[name], pictures, counts[name])

        engines = {}
        startup = {}
        for precision in ("float32", "auto"):
            engine = Engine(
                store,
                device_preference="cpu",
                precision=precision,
                max_batch_size=settings.max_batch_size,
                batch_timeout=settings.batch_timeout_ms / 1000.0,
                max_queue=window + 1,
                cache_size=1,
            )
            started = time.perf_counter()
            model = engine.model(1)
            startup[model.serving.precision] = time.perf_counter() - started
            engines[model.serving.precision] = (engine, model)
        old_model = store.load(1)

        for name, folder in folders.items():
            for fmt in ("png", "jpeg"):
                runs = [
                    (
                        "old loop, one file at a time",
                        "float32",
                        lambda f, o, fmt=fmt: old_loop(old_model, f, o, fmt),
                    )
                ]
                for precision, (engine, model) in engines.items():
                    if precision == "float32" and fmt == "png" and len(engines) > 1:
                        continue  # the precision's effect shows in the JPEG rows
                    runs.append(
                        (
                            "pipeline (FolderRun)",
                            precision,
                            lambda f, o, e=engine, m=model, fmt=fmt: pipeline(e, m, f, o, fmt, jobs, window),
                        )
                    )
                base = None
                for label, precision, fn in runs:
                    images_per_second = rate(fn, folder, work, rounds)
                    base = base or images_per_second
                    rows.append(
                        [name, fmt, label, precision, images_per_second, f"{images_per_second / base:.2f}x"]
                    )
                    print(f"  {name} {fmt} {label} {precision}: {images_per_second:.2f} images/s", flush=True)
        for engine, _ in engines.values():
            engine.stop()

    header = ["photographs", "output", "path", "precision", "images/s", "x old loop"]
    title = f"Folder throughput (median of {rounds} rounds; {counts['256x256']} and {counts['2 MP']} files)"
    print(table(title, header, rows))
    print(
        "\nCommand start-up (load, precision twin, warm-up of every batch bucket), not in the rates: "
        + ", ".join(f"{p} {s:.1f} s" for p, s in startup.items())
    )
    print(f"\nTotal benchmark time: {time.perf_counter() - total_start:.0f} s; ", end="")
    print(f"load average at the end {os.getloadavg()[0]:.2f} (the benchmark's own work included)")


if __name__ == "__main__":
    main()
