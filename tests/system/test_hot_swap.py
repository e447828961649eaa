"""Hot swap under load, in real processes: versions (good and corrupt) appear in the store while
clients post continuously to a real uvicorn API; no request fails and no corrupt version is served."""

from __future__ import annotations

import io
import json
import os
import threading

import httpx
import pytest
from PIL import Image

from models.store import ModelStore
from tests.photos import make_photo
from tests.procs import Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 180  # seconds for anything that needs a worker to start and import TensorFlow


# -- hot swap under load: versions (good and corrupt) appear while clients post continuously -----


def _metric(text: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def _publish_seeded(store: ModelStore, seed: int) -> int:
    """A tiny lab generator whose weights depend on ``seed``: each version colours differently."""
    from keras.utils import set_random_seed

    from models.networks import build_generator

    set_random_seed(seed)
    return store.publish(build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32})


def _place_version(store: ModelStore, files: dict[str, bytes]) -> int:
    """Put a hand-made version folder in the store atomically (the next number); returns it."""
    version = store.versions()[-1] + 1
    staging = store.root / f".hand-{version}"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    os.rename(staging, store.root / str(version))
    return version


def test_versions_swapped_under_load_fail_no_request_and_corrupt_ones_are_never_served(tmp_path, procs):
    import numpy as np

    from models.colorize import colorize_array
    from models.networks import build_generator
    from models.store import GENERATOR_FILE, METADATA_FILE

    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    good = [_publish_seeded(store, seed=1)]
    # float32 in the server, so its answers can be compared with each version run here
    env = colorizer_env(data_dir, COLORIZER_INFERENCE_PRECISION="float32", COLORIZER_RELOAD_INTERVAL="0.2")
    port = free_port()
    api = Proc(colorizer("serve", "--port", str(port)), env, tmp_path / "api.log")
    procs.append(api)
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base_url}/readyz").status_code == 200, TIMEOUT, "version 1 served", (api,))

    gray = make_photo(48, 40, seed=9).mean(axis=2).astype(np.uint8)
    upload = io.BytesIO()
    Image.fromarray(gray).save(upload, "PNG")
    payload = upload.getvalue()
    answers: list[list[tuple[int, str, bytes]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def keep_posting(mine: list[tuple[int, str, bytes]]) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post("/colorize", content=payload, headers={"content-type": "image/png"})
                    mine.append((r.status_code, r.headers.get("x-model-version", ""), r.content))
                except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                    mine.append((0, "", repr(exc).encode()))

    clients = [threading.Thread(target=keep_posting, args=(a,), daemon=True) for a in answers]
    for thread in clients:
        thread.start()

    def served(version: int) -> bool:
        return any(v == str(version) for a in answers for _, v, _ in a[-8:])

    def corrupt_tried(version: int) -> bool:
        listed = httpx.get(f"{base_url}/models").json()["versions"]
        return any(v["version"] == version and v["error"] for v in listed)

    keras_file = (store.root / "1" / GENERATOR_FILE).read_bytes()
    lab_meta = json.dumps({"preset": "lab", "image_size": 32}).encode()
    seed_generator = tmp_path / "seed-generator.keras"
    build_generator(32, 3, 3, width=4).save(seed_generator)  # 3->3 channels: the wrong shape for lab
    corrupt = {
        "truncated .keras": {GENERATOR_FILE: keras_file[: len(keras_file) // 2], METADATA_FILE: lab_meta},
        "bad JSON": {GENERATOR_FILE: keras_file, METADATA_FILE: b'{"preset": "lab", "image_'},
        "wrong shapes": {GENERATOR_FILE: seed_generator.read_bytes(), METADATA_FILE: lab_meta},
        "partial (no generator)": {METADATA_FILE: lab_meta},
    }
    bad: dict[int, str] = {}
    try:
        wait_for(lambda: sum(map(len, answers)) >= 8, TIMEOUT, "first answers", (api,))
        for seed, (kind, files) in enumerate(corrupt.items(), start=2):
            good.append(_publish_seeded(store, seed))
            wait_for(lambda: served(good[-1]), 60, f"version {good[-1]} served", (api,))
            version = _place_version(store, files)
            bad[version] = kind
            wait_for(lambda v=version: corrupt_tried(v), 60, f"{kind} version {version} tried", (api,))
        good.append(_publish_seeded(store, seed=9))
        wait_for(lambda: served(good[-1]), 60, f"version {good[-1]} served", (api,))
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)

    every = [answer for a in answers for answer in a]
    failed = [(status, body[:200]) for status, _, body in every if status != 200]
    assert not failed, failed
    assert len(every) >= 40
    versions_seen = {v for _, v, _ in every}
    assert versions_seen == {str(v) for v in good}, (versions_seen, good, bad)
    for mine in answers:  # each client saw versions only move forward
        numbers = [int(v) for _, v, _ in mine]
        assert numbers == sorted(numbers)

    # Each answer is the work of the version it names: closest to that version's own output here.
    expected = {str(v): colorize_array(store.load(v), gray).astype(np.int16) for v in good}
    for _, version, body in every[:: max(1, len(every) // 60)]:
        got = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.int16)
        distances = {v: float(np.abs(got - e).mean()) for v, e in expected.items()}
        assert distances[version] < 1.0 and min(distances, key=distances.get) == version, distances

    text = httpx.get(f"{base_url}/metrics").text
    assert _metric(text, "colorizer_model_reload_failures_total") == len(bad)
    assert _metric(text, "colorizer_model_reloads_total") == len(good)
    listed = {v["version"]: v for v in httpx.get(f"{base_url}/models").json()["versions"]}
    for version, kind in bad.items():
        assert listed[version]["error"] and not listed[version]["served"], (kind, listed[version])
    assert "cannot be served" in api.log()
