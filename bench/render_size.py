"""What the default model's render size costs: one photograph through the whole colorize path
(prepare, model, finish) at each side the recipe chooses among, in float32, as a ratio of the time
at 128 px (the size it was trained at). Sizes are timed in interleaved rounds so that a busy
spell of the machine falls on all of them; the table gives medians.

    python bench/render_size.py            # about a minute on 2 cores
    python bench/render_size.py --quick
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from common import machine, median, megapixels, photographs, table, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rounds, repeat = (3, 3) if args.quick else (5, 5)

    from models.colorize import colorize_array
    from models.recipe import RENDER_SIZES
    from models.store import DEFAULT_MODEL_DIR, ModelStore

    model = ModelStore.load_dir(DEFAULT_MODEL_DIR, "default")
    photos, source = photographs(1)
    photo = megapixels(photos[0], 1.0)
    sized = {s: replace(model, metadata={**model.metadata, "render_size": s}) for s in RENDER_SIZES}
    times: dict[int, list[float]] = {s: [] for s in RENDER_SIZES}
    for _ in range(rounds):
        for size, m in sized.items():
            times[size] += timed(lambda m=m: colorize_array(m, photo), repeat)
    base = median(times[RENDER_SIZES[0]])
    rows = [
        (f"{s}{' (served)' if s == model.render_size else ''}", median(t) * 1000, median(t) / base)
        for s, t in times.items()
    ]
    print(machine())
    print(f"photograph: {photo.shape[1]}x{photo.shape[0]} from {source}; {rounds * repeat} calls per size")
    print(table("default model, whole colorize path", ["render size", "median ms", "x 128 px"], rows))


if __name__ == "__main__":
    main()
