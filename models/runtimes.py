"""Which runtime runs a served generator on the CPU: TensorFlow or OpenVINO.

TensorFlow trains the generators, is the reference every other runtime is checked against, and
is the only runtime on a GPU. On a CPU, Intel's OpenVINO runs the same graph up to about
twice as fast as TensorFlow, depending on the model and the CPU, while where bfloat16 is native
TensorFlow's bfloat16 may win instead (docs/performance.md). So ``auto`` measures both on the
model at hand when it loads (``choose``) and serves with the faster.

An OpenVINO model is the serving function itself (the generator with its view averaging, at one
render side, any batch size) converted by ``openvino.convert_model`` and, before it serves,
checked against TensorFlow's float32 output on a fixed input (``TOLERANCE``). It is cached on
disk under a key of everything it is made from (the weights, the serving options, the side, the
OpenVINO version), with the checksums of its files written last: a restart reads it back instead
of converting again; a cached conversion whose files do not match their checksums, that does not
load, or that fails the check is deleted and converted again, never served.

``auto``'s choice is remembered in the same cache (``ConversionCache.remember``), under a key of
the weights, the serving options, the precision and this machine (``machine``: CPU, cores,
kernel settings): a restart, or another server sharing the cache on the same machine, serves
with the same runtime instead of measuring again. Runtimes differ in their last bits, so a
photograph comes out the same from every such server and after every restart, even where two
runtimes measure about equally fast.

OpenVINO's conversion sends usage data to Google Analytics unless the user has opted out, from a
forked copy of the calling process per event (a serving process: most of the CPU for seconds, no
internet here); this module declines it before converting (``_decline_telemetry``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "tensorflow", "openvino")
# Largest (max, mean) absolute difference from TensorFlow's float32 output on the check input, in
# the generator's output units ([-1, 1]; an a/b unit of Lab is 1/110 of it in the lab presets).
# OpenVINO in float32 differs by about 1e-6 (the default and the report's generators).
TOLERANCE = (1e-3, 1e-4)
# OpenVINO runs in float32 only. Its bfloat16 (where the CPU has it) is 1.8x its float32 on the
# default generator, but its colours differ from TensorFlow float32's by a mean CIEDE2000 of 0.61
# on the 62 validation photographs (TensorFlow's own bfloat16: 0.40; `python bench/agreement.py`),
# above the 0.5 that "the same colours" is held to here.
CONVERSION_FORMAT = 1  # bump when conversion changes what it writes
# auto keeps TensorFlow, without converting, for a model taking less than this per image at the
# largest batch: seconds of conversion for under a millisecond a photograph (test-sized models).
TRIVIAL_SECONDS = 0.002
KEEP_CHOICES = 64  # auto's remembered choices kept (models x sides x machines)
_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
_FILES = ("model.xml", "model.bin")


class RuntimeUnavailable(Exception):
    """The runtime cannot serve this model here; the message says why, in one sentence."""


class LoadCancelled(Exception):
    """A warm-up (tracing, conversion, ``auto``'s measurement) given up at one of its steps because
    its caller is stopping: nothing half done is kept or served."""


def check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    """Raises LoadCancelled when ``cancelled`` says so (None: never)."""
    if cancelled is not None and cancelled():
        raise LoadCancelled("the warm-up was given up: its caller is stopping")


@dataclass(frozen=True)
class Runner:
    """A compiled model call: (n, s, s, C) float32 in, (n, s, s, out) float32 out, thread-safe."""

    runtime: str  # "tensorflow" or "openvino"
    precision: str  # "float32" or "bfloat16"
    call: Callable[[np.ndarray], np.ndarray]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return self.call(inputs)

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


# -- OpenVINO ------------------------------------------------------------------------------------------


def _decline_telemetry() -> None:
    """Make OpenVINO's telemetry see a declined consent (as after ``opt_in_out --opt_out``). Must
    run before ``openvino`` is first imported: importing it sets the telemetry up (``_openvino``)."""
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:  # OpenVINO without its telemetry package sends nothing
        return
    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined


@functools.cache
def _openvino() -> Any:
    """The ``openvino`` module, imported with its telemetry declined."""
    _decline_telemetry()
    import openvino

    return openvino


def openvino_version() -> str:
    """The installed OpenVINO's version; raises RuntimeUnavailable when it cannot be imported."""
    try:
        openvino = _openvino()
    except Exception as exc:  # not installed, or a wheel that does not load on this CPU
        raise RuntimeUnavailable(f"OpenVINO cannot be imported: {type(exc).__name__}: {exc}") from exc
    return openvino.get_version()


def openvino_precisions() -> tuple[str, ...]:
    """The precisions OpenVINO's CPU plugin computes natively here (float32, and bfloat16 with
    AVX512_BF16 or AMX): what bench/agreement.py compares; the service uses float32 only."""
    ov = _openvino()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("float32", "bfloat16") if "BF16" in capabilities else ("float32",)


def convert(function: Any, side: int, channels: int) -> Any:
    """The ov.Model of ``function`` (a tf.function with input signature (None, side, side,
    channels)): one input, its first output only (Keras's resize layers leave shape tensors as
    extra outputs), any batch size."""
    ov = _openvino()
    converted = ov.convert_model(function.get_concrete_function())
    model = ov.Model([converted.output(0)], converted.get_parameters(), "generator")
    model.reshape([-1, side, side, channels])
    return model


def compile_openvino(model: Any, precision: str) -> Runner:
    """A Runner for an ov.Model on the CPU in ``precision``: one stream on every core (the engine
    runs one batch at a time), threads not pinned to cores. Pinned, they ran about 6x slower
    whenever another process wanted a core (a training job at nice 19 beside a 2-core server);
    unpinned, about 2x slower, and as fast on an idle machine."""
    ov = _openvino()
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        },
    )
    # One infer request (its buffers sized for the largest batch seen), one call at a time: the
    # engine runs one batch at a time unless COLORIZER_BATCHES_IN_FLIGHT says more (which then
    # gains nothing on OpenVINO: its calls queue here), and a request per thread would keep a copy of the
    # buffers alive for every thread that ever called (the model watcher's among them).
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def call(inputs: np.ndarray) -> np.ndarray:
        with lock:
            request.infer({0: np.ascontiguousarray(inputs, np.float32)})
            return request.get_output_tensor(0).data.copy()  # the buffer is reused next call

    return Runner("openvino", precision, call)


# -- the cache -----------------------------------------------------------------------------------------

# What changes which kernels run, besides the CPU: the environment settings read at import.
_KERNEL_SETTINGS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "TF_ENABLE_ONEDNN_OPTS")


def machine() -> dict[str, Any]:
    """What a measured choice of runtime holds for: the CPU (its model name and a digest of its
    flags: virtual machines often show one name for several CPUs), the cores this process may use,
    the kernel settings in the environment, and the runtimes' versions."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.strip()
    except OSError:  # not Linux: the platform's own word for it
        import platform

        name = platform.processor()
    try:  # the installed package's version, without importing it
        openvino = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        openvino = None
    import tensorflow as tf

    return {
        "cpu": name,
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "settings": {name: os.environ.get(name) for name in _KERNEL_SETTINGS},
        "tensorflow": tf.__version__,
        "openvino": openvino,
    }


def conversion_key(weights: str, options: dict[str, Any]) -> str:
    """A key of everything a conversion (or a choice of runtime) is made from: the weights
    (``models.store.weights_digest``) and ``options`` (the serving options, the side, the
    runtime's version)."""
    content = {"format": CONVERSION_FORMAT, "weights": weights, **options}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def _file_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for name in _FILES:
        digest = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        sums[name] = digest.hexdigest()
    return sums


class ConversionCache:
    """Converted models on disk, one folder per key: model.xml, model.bin, and sums.json (their
    SHA-256) written last. Writers build in a temporary folder and rename it into place, so
    processes sharing the folder never see half a conversion. Reading a conversion marks it used;
    writing one deletes all but the ``keep`` most recently used (old versions' conversions).
    Beside them, in ``runtime-choices/``, ``auto``'s choices: one small JSON file per key, written
    once (the first process to choose wins), the ``KEEP_CHOICES`` newest kept."""

    def __init__(self, root: Path | str, keep: int = 8):
        self.base = Path(root) / "openvino"
        self.choices = Path(root) / "runtime-choices"
        self.keep = keep

    def folder(self, key: str) -> Path:
        return self.base / key

    def read(self, key: str) -> Any | None:
        """The cached ov.Model for ``key``, or None when absent. A folder whose files do not match
        their checksums, or that OpenVINO cannot read, is deleted (with a log line) and None returned."""
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        try:
            recorded = json.loads((folder / "sums.json").read_text())
            if _file_sums(folder) != recorded:
                raise ValueError("its files do not match their checksums")
            ov = _openvino()
            model = ov.Core().read_model(folder / "model.xml")
            os.utime(folder)  # used: the last to be pruned
            return model
        except Exception as exc:  # OSError, ValueError, OpenVINO's RuntimeError: unusable either way
            self.discard(key, f"{type(exc).__name__}: {exc}")
            return None

    def write(self, key: str, model: Any) -> None:
        """Save ``model`` under ``key`` (weights kept in float32); a failure to write is logged, the
        model still serves."""
        ov = _openvino()
        folder = self.folder(key)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
            ov.save_model(model, building / "model.xml", compress_to_fp16=False)
            (building / "sums.json").write_text(json.dumps(_file_sums(building)))
            try:
                os.rename(building, folder)
            except OSError:  # another process cached the same conversion meanwhile
                shutil.rmtree(building, ignore_errors=True)
            self._prune()
        except OSError as exc:
            log.warning("the OpenVINO conversion could not be cached in %s: %s", folder.parent, exc)

    def _prune(self) -> None:
        entries = [p for p in self.base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[self.keep :]:
            log.info("dropping the cached OpenVINO conversion %s (%d kept)", stale.name, self.keep)
            shutil.rmtree(stale, ignore_errors=True)

    def recall(self, key: str) -> dict[str, Any] | None:
        """The choice remembered under ``key`` ({"runtime", "why", "seconds"}), or None."""
        try:
            choice = json.loads((self.choices / f"{key}.json").read_text())
        except (OSError, ValueError):  # none yet, or unreadable: measured again
            return None
        if not (
            isinstance(choice, dict)
            and choice.get("runtime") in ("tensorflow", "openvino")
            and isinstance(choice.get("why"), str)
            and isinstance(choice.get("seconds"), dict)
        ):
            return None
        return choice

    def remember(self, key: str, choice: dict[str, Any]) -> dict[str, Any]:
        """Keep ``choice`` under ``key`` unless another process kept one first; the one kept."""
        path = self.choices / f"{key}.json"
        try:
            self.choices.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.choices, prefix=".", delete=False) as f:
                json.dump(choice, f)
            try:
                os.link(f.name, path)  # fails when another process was first: theirs holds
            finally:
                os.unlink(f.name)
            kept = sorted(self.choices.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for stale in kept[KEEP_CHOICES:]:
                stale.unlink(missing_ok=True)
        except FileExistsError:
            return self.recall(key) or choice
        except OSError as exc:
            log.warning("the runtime chosen could not be remembered in %s: %s", self.choices, exc)
        return choice

    def discard(self, key: str, reason: str) -> None:
        folder = self.folder(key)
        log.warning("the cached OpenVINO conversion %s is unusable (%s); converting again", key, reason)
        shutil.rmtree(folder, ignore_errors=True)


# -- checking and choosing -------------------------------------------------------------------------------


def disagreement(runner: Runner, inputs: np.ndarray, reference: np.ndarray) -> str | None:
    """Why ``runner``'s output on ``inputs`` is not close enough to TensorFlow's float32
    ``reference`` (TOLERANCE), or None when it is."""
    try:
        out = runner(inputs)
    except Exception as exc:
        return f"it fails on the check input: {type(exc).__name__}: {exc}"
    if out.shape != reference.shape:
        return f"its output has shape {out.shape}, TensorFlow's {reference.shape}"
    diff = np.abs(out.astype(np.float64) - reference)
    worst, mean = float(np.nan_to_num(diff, nan=np.inf).max()), float(diff.mean())
    max_tol, mean_tol = TOLERANCE
    if not (worst <= max_tol and mean <= mean_tol):
        return (
            f"its output differs from TensorFlow's float32 by up to {worst:.3g} (mean {mean:.3g}; "
            f"tolerance {max_tol:g}, mean {mean_tol:g})"
        )
    return None


def openvino_runner(
    function: Any,
    side: int,
    channels: int,
    key_options: dict[str, Any],
    weights: str,
    check_inputs: np.ndarray,
    reference: np.ndarray,
    cache: ConversionCache | None,
) -> Runner:
    """An OpenVINO Runner (float32) of ``function`` that passes the check against ``reference``
    (TensorFlow's float32 output on ``check_inputs``), from the cache when there (under a key of
    ``weights``, their ``models.store.weights_digest``, and ``key_options``), else converted (and
    cached once it passes). Raises RuntimeUnavailable saying why it cannot serve."""
    version = openvino_version()
    key = conversion_key(weights, {**key_options, "side": side, "channels": channels, "openvino": version})
    model = cache.read(key) if cache is not None else None
    from_cache = model is not None
    if model is None:
        model = _converted(function, side, channels)
    runner, reason = _checked(model, check_inputs, reference)
    if reason is not None and from_cache:  # a cached model that fails is converted again, once
        cache.discard(key, reason)  # type: ignore[union-attr]
        model, from_cache = _converted(function, side, channels), False
        runner, reason = _checked(model, check_inputs, reference)
    if runner is None:
        raise RuntimeUnavailable(f"OpenVINO does not reproduce TensorFlow's output: {reason}")
    if not from_cache and cache is not None:
        cache.write(key, model)
    return runner


def _converted(function: Any, side: int, channels: int) -> Any:
    started = time.perf_counter()
    try:
        model = convert(function, side, channels)
    except Exception as exc:  # OpenVINO's frontends raise plain RuntimeErrors, or worse
        raise RuntimeUnavailable(f"OpenVINO cannot convert the model: {type(exc).__name__}: {exc}") from exc
    log.info("converted to OpenVINO in %.1f s", time.perf_counter() - started)
    return model


def _checked(model: Any, check_inputs: np.ndarray, reference: np.ndarray) -> tuple[Runner | None, str | None]:
    """(the compiled model, None), or (None, why it cannot serve: it does not compile, or its
    output on ``check_inputs`` is not TensorFlow's ``reference``)."""
    try:
        runner = compile_openvino(model, "float32")
    except Exception as exc:
        return None, f"it does not compile: {type(exc).__name__}: {exc}"
    reason = disagreement(runner, check_inputs, reference)
    return (None, reason) if reason is not None else (runner, None)


def choose(
    runners: list[Runner], batch: np.ndarray, rounds: int = 3, cancelled: Callable[[], bool] | None = None
) -> tuple[Runner, dict[str, float]]:
    """The runner with the highest rate on ``batch`` (the engine's largest: the rate that counts
    when the service is busy), with each one's seconds per image: medians of ``rounds`` calls, the
    runners interleaved so each sees the same machine, after one call each to warm up. Raises
    LoadCancelled before a call once ``cancelled`` says so.

    One runner serves every batch size: runtimes differ in their last bits (bfloat16: in a few
    levels), and a photograph must come out the same alone or in a batch.
    """
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    for round_ in range(rounds + 1):
        for runner in runners:
            check_cancelled(cancelled)
            start = time.perf_counter()
            runner(batch)
            if round_:
                times[runner.name].append((time.perf_counter() - start) / len(batch))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return min(runners, key=lambda r: medians[r.name]), medians


def per_image_seconds(
    runner: Runner, batch: np.ndarray, rounds: int = 3, cancelled: Callable[[], bool] | None = None
) -> float:
    """The median seconds per image of ``runner`` on ``batch`` over ``rounds`` calls, after one."""
    return choose([runner], batch, rounds, cancelled)[1][runner.name]
