"""How closely each CPU runtime and precision reproduces TensorFlow float32's colours, on photographs.

Colorizes every photograph of a folder (recursively) with a model through TensorFlow float32 (the
reference) and through every other runtime and precision this CPU runs natively (OpenVINO float32;
TensorFlow and OpenVINO bfloat16 where the CPU has it), at full resolution, and prints the mean
CIEDE2000 between each and the reference, overall and per sub-folder (a category), and the worst
photograph. Issue 19's bar: below 0.5 on the default model's validation photographs.

    python bench/agreement.py                       # the default model on var/default-model/validation
    python bench/agreement.py --photos DIR --model DIR
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import RECIPE_PHOTOS, median, table

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=RECIPE_PHOTOS)
    parser.add_argument("--model", type=Path, help="a model version folder (default: the shipped default)")
    args = parser.parse_args()

    import numpy as np

    from models.device import configure_tensorflow

    configure_tensorflow("cpu")
    from skimage.color import deltaE_ciede2000, rgb2lab

    from inference.images import decode_image
    from models import runtimes
    from models.colorize import finish, prepare
    from models.device import bfloat16_supported
    from models.serving import InferenceModel
    from models.store import load_generator_dir, packaged_default

    model = load_generator_dir(args.model or packaged_default(), "default" if args.model is None else 1)
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        sys.exit(f"no photographs under {args.photos} (make default-model fetches the validation set)")
    cache = runtimes.ConversionCache(tempfile.mkdtemp(prefix="agreement-"))
    runs = {"tensorflow float32": InferenceModel(model, "float32", "CPU:0", "tensorflow")}
    if bfloat16_supported("CPU:0"):
        runs["tensorflow bfloat16"] = InferenceModel(model, "bfloat16", "CPU:0", "tensorflow")
    for precision in runtimes.openvino_precisions():
        runs[f"openvino {precision}"] = InferenceModel(model, precision, "CPU:0", "openvino", cache)
    for run in runs.values():
        run.warm_up(model.render_size, (1,))
    deltas: dict[str, dict[str, float]] = {name: {} for name in runs if name != "tensorflow float32"}
    for path in photos:
        pixels = decode_image(path.read_bytes(), 10**9).pixels
        inputs, light, _ = prepare(model, pixels)
        outputs = {name: finish(model, run.predict(inputs[None])[0], light) for name, run in runs.items()}
        reference = rgb2lab(outputs["tensorflow float32"])
        for name in deltas:
            key = str(path.relative_to(args.photos))
            deltas[name][key] = float(deltaE_ciede2000(reference, rgb2lab(outputs[name])).mean())
    categories = sorted({str(Path(key).parent) for key in next(iter(deltas.values()))})
    rows = []
    for name, found in deltas.items():
        by_category = [
            float(np.mean([v for k, v in found.items() if str(Path(k).parent) == c])) for c in categories
        ]
        worst = max(found, key=found.get)
        rows.append(
            [
                name,
                float(np.mean(list(found.values()))),
                median(list(found.values())),
                *by_category,
                f"{found[worst]:.2f} ({worst})",
            ]
        )
    header = ["runtime", "mean", "median", *categories, "worst photograph"]
    title = (
        f"Mean CIEDE2000 against TensorFlow float32, {len(photos)} photographs of {args.photos} "
        f"(model {args.model or 'default'}, {model.render_size} px)"
    )
    print(table(title, header, rows))


if __name__ == "__main__":
    main()
