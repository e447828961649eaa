"""What the default model's render size and flip averaging cost: one photograph through the whole
colorize path (prepare, model, finish) at each side the recipe chooses among, without and with
flip averaging, in float32, as a ratio of the time at 128 px without it (the size it was trained
at). Settings are timed in interleaved rounds so that a busy
spell of the machine falls on all of them; the table gives medians.

    python bench/render_size.py            # about a minute on 2 cores
    python bench/render_size.py --quick
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from harness import machine, median, megapixels, photographs, table, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rounds, repeat = (3, 3) if args.quick else (5, 5)

    from models.colorize import colorize_array
    from models.store import DEFAULT_MODEL_DIR, ModelStore
    from recipe.calibrate import RENDER_SIZES

    model = ModelStore.load_dir(DEFAULT_MODEL_DIR, "default")
    photos, source = photographs(1)
    photo = megapixels(photos[0], 1.0)
    settings = [(s, f) for s in RENDER_SIZES for f in (False, True)]
    runs = {
        key: replace(model, metadata={**model.metadata, "render_size": key[0], "flip_average": key[1]})
        for key in settings
    }
    times: dict[tuple[int, bool], list[float]] = {key: [] for key in settings}
    for _ in range(rounds):
        for key, m in runs.items():
            times[key] += timed(lambda m=m: colorize_array(m, photo), repeat)
    base = median(times[settings[0]])
    served = (model.render_size, model.flip_average)
    rows = [
        (
            f"{s}{' flip-averaged' if f else ''}{' (served)' if (s, f) == served else ''}",
            median(t) * 1000,
            median(t) / base,
        )
        for (s, f), t in times.items()
    ]
    print(machine())
    print(f"photograph: {photo.shape[1]}x{photo.shape[0]} from {source}; {rounds * repeat} calls per setting")
    print(table("default model, whole colorize path", ["render size", "median ms", "x 128 px"], rows))


if __name__ == "__main__":
    main()
