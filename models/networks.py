"""The report's networks: a U-Net generator and a 70x70 PatchGAN discriminator.

Blocks are pure functions (TF pix2pix tutorial style). Depth follows the image size: a square image
of side ``s`` gets ``log2(s)`` stride-2 levels (256 -> 8, the report's U-Net), and ``width`` scales
every filter count (64 is the report), so tests can build tiny models.
"""

from __future__ import annotations

import keras
from keras import layers

from models import hint_net
from models.presets import DECODERS, ENCODERS, MOBILENET_V2, REPORT_DECODER, REPORT_ENCODER, levels_for


def init() -> keras.initializers.Initializer:
    """Weights N(0, 0.02), as pix2pix and the report."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


def encoder_filters(depth: int, width: int) -> list[int]:
    """Filters per down level: 64,128,256,512,512,... for width 64 (the last is the bottleneck)."""
    return [min(width * 2**i, width * 8) for i in range(depth)]


def downsample(x, filters: int, batchnorm: bool = True, name: str | None = None, dtype=None):
    """Encoder block: Conv 4x4 stride 2 -> BatchNorm (optional) -> LeakyReLU 0.2."""
    x = layers.Conv2D(
        filters, 4, strides=2, padding="same", kernel_initializer=init(), name=f"{name}_conv", dtype=dtype
    )(x)
    if batchnorm:
        x = layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
    return layers.LeakyReLU(negative_slope=0.2, name=f"{name}_act", dtype=dtype)(x)


def up_conv(x, filters: int, decoder: str = REPORT_DECODER, name: str | None = None, dtype=None):
    """Double the resolution: ConvTranspose 4x4 stride 2 (the report's, ``transpose``), or bilinear
    upsampling then Conv 3x3 (``resize``), which cannot make ConvTranspose's checkerboard pattern
    (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""
    if decoder == REPORT_DECODER:
        return layers.Conv2DTranspose(
            filters,
            4,
            strides=2,
            padding="same",
            kernel_initializer=init(),
            name=f"{name}_deconv",
            dtype=dtype,
        )(x)
    if decoder != "resize":
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize", dtype=dtype)(x)
    return layers.Conv2D(
        filters, 3, padding="same", kernel_initializer=init(), name=f"{name}_upconv", dtype=dtype
    )(x)


def decoder_of(generator: keras.Model) -> str:
    """Which decoder a generator ``build_generator`` made was built with."""
    names = {layer.name for layer in generator.layers}
    return "resize" if "out_upconv" in names else REPORT_DECODER


def encoder_of(generator: keras.Model) -> str:
    """Which encoder a generator ``build_generator`` made was built with: "unet" or "mobilenet_v2"."""
    names = {layer.name for layer in generator.layers}
    return MOBILENET_V2 if MOBILENET_V2 in names else REPORT_ENCODER


def width_of(generator: keras.Model) -> int:
    """The ``width`` a generator ``build_generator`` made was built with; ValueError for others."""
    name = "dec_out_conv" if encoder_of(generator) == MOBILENET_V2 else "enc1_conv"
    return int(generator.get_layer(name).filters)


def upsample(
    x, skip, filters: int, dropout: bool, name: str | None = None, dtype=None, decoder: str = REPORT_DECODER
):
    """Decoder block: up_conv (ConvTranspose 4x4 stride 2 in the report) -> BatchNorm -> Dropout 0.5
    -> concat skip -> ReLU."""
    x = up_conv(x, filters, decoder, name=name, dtype=dtype)
    x = layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
    if dropout:
        x = layers.Dropout(0.5, name=f"{name}_dropout", dtype=dtype)(x)
    x = layers.Concatenate(name=f"{name}_skip", dtype=dtype)([x, skip])
    return layers.Activation("relu", name=f"{name}_act", dtype=dtype)(x)


# The layers of a generator that compute in float32 under every dtype policy: its output (a
# serving twin under another policy keeps them so: models.serving.precision_twin).
FLOAT32_LAYERS = ("out_tanh", "hint_propagation")


def build_generator(
    image_size: int = 256,
    in_channels: int = 3,
    out_channels: int = 3,
    width: int = 64,
    dtype: str | None = None,
    decoder: str = REPORT_DECODER,
    encoder: str = REPORT_ENCODER,
    hints: bool = False,
) -> keras.Model:
    """U-Net generator. At 256, width 64, 3->3 channels it is the report's (54,429,315 params).

    ``dtype`` is a Keras dtype policy for every layer but the output ("mixed_bfloat16",
    "mixed_float16"; None: the global policy, float32 by default); the output stays float32.
    ``decoder`` is how the decoder upsamples (see ``up_conv``; "transpose" is the report's).
    ``encoder`` "mobilenet_v2" makes ``pretrained_unet`` instead (1 channel in only), which can
    also take colour ``hints``.
    Raises ValueError for an image size that is not a power of two in range, an unknown decoder,
    or hints without the mobilenet_v2 encoder.
    """
    if encoder == MOBILENET_V2:
        return pretrained_unet(image_size, in_channels, out_channels, width, dtype, decoder, hints)
    if encoder != REPORT_ENCODER:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if hints:
        raise ValueError("colour hints need the mobilenet_v2 encoder")
    depth = levels_for(image_size)
    filters = encoder_filters(depth, width)
    # Spatial dims stay open so serving can render at any multiple of 2**depth.
    inputs = keras.Input((None, None, in_channels), name="gray")
    skips = []
    x = inputs
    # Encoder: (bs, 128, 128, 64) -> (bs, 64, 64, 128) -> ... -> (bs, 2, 2, 512) at 256.
    for i, f in enumerate(filters[:-1]):
        x = downsample(x, f, batchnorm=i > 0, name=f"enc{i + 1}", dtype=dtype)
        skips.append(x)
    # Bottleneck: (bs, 1, 1, 512) at 256; Conv + ReLU, no BatchNorm (as the report).
    x = layers.Conv2D(
        filters[-1],
        4,
        strides=2,
        padding="same",
        kernel_initializer=init(),
        name="bottleneck_conv",
        dtype=dtype,
    )(x)
    x = layers.Activation("relu", name="bottleneck_act", dtype=dtype)(x)
    # Decoder mirrors the encoder: (bs, 2, 2, 1024) -> ... -> (bs, 128, 128, 128) at 256.
    for i, (f, skip) in enumerate(zip(reversed(filters[:-1]), reversed(skips), strict=True)):
        x = upsample(x, skip, f, dropout=i < 3, name=f"dec{i + 1}", dtype=dtype, decoder=decoder)
    x = up_conv(x, out_channels, decoder, name="out", dtype=dtype)
    outputs = layers.Activation("tanh", name=FLOAT32_LAYERS[0], dtype="float32")(x)
    return keras.Model(inputs, outputs, name="generator")


def pretrained_unet(
    image_size: int = 256,
    in_channels: int = 1,
    out_channels: int = 2,
    width: int = 32,
    dtype: str | None = None,
    decoder: str = "resize",
    hints: bool = False,
) -> keras.Model:
    """A U-Net whose encoder is MobileNetV2 (models.backbones; ImageNet weights are loaded apart,
    by ``models.backbones.pretrained_mobilenet_v2``) and stays frozen, batch norm included: the
    decoder (bilinear upsampling, Conv 3x3, BatchNorm, dropout 0.5 in its first three blocks,
    skips from the encoder's stride 16, 8, 4 and 2 features and from the input) learns the colours.
    With ``hints``, the input has the hint channels too, and each hint's colour is carried to the
    pixels like it (``models.hint_net.HintPropagation``).
    """
    from models.backbones import mobilenet_v2_features

    if levels_for(image_size) < 5:
        raise ValueError("a MobileNetV2 encoder needs an image_size of at least 32")
    if in_channels != 1 or decoder != "resize":
        raise ValueError("a MobileNetV2 encoder takes the lab preset (1 channel in) and the resize decoder")
    if hints:
        inputs, gray, hint_channels = hint_net.split_input(in_channels, dtype)
    else:
        inputs = gray = keras.Input((None, None, 1), name="gray")
    # the encoder as a model of its own (frozen as one); on a hint model, of the photograph's channel
    encoder_in = keras.Input((None, None, 1), name="gray") if hints else gray
    features, skips = mobilenet_v2_features(encoder_in, dtype=dtype)
    encoder = keras.Model(encoder_in, [features, *skips], name=MOBILENET_V2)
    encoder.trainable = False
    features, *skips = encoder(gray)

    x = layers.Conv2D(width * 8, 1, kernel_initializer=init(), name="dec_reduce_conv", dtype=dtype)(features)
    x = layers.BatchNormalization(name="dec_reduce_bn", dtype=dtype)(x)
    x = layers.Activation("relu", name="dec_reduce_act", dtype=dtype)(x)
    for i, (filters, skip) in enumerate(zip((8, 4, 2, 1), reversed(skips), strict=True)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i + 1}_resize", dtype=dtype)(x)
        x = layers.Concatenate(name=f"dec{i + 1}_skip", dtype=dtype)([x, skip])
        x = layers.Conv2D(
            width * filters,
            3,
            padding="same",
            kernel_initializer=init(),
            name=f"dec{i + 1}_conv",
            dtype=dtype,
        )(x)
        x = layers.BatchNormalization(name=f"dec{i + 1}_bn", dtype=dtype)(x)
        x = layers.Activation("relu", name=f"dec{i + 1}_act", dtype=dtype)(x)
        if i < 3:
            x = layers.Dropout(0.5, name=f"dec{i + 1}_dropout", dtype=dtype)(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="dec_out_resize", dtype=dtype)(x)
    x = layers.Concatenate(name="dec_out_skip", dtype=dtype)([x, gray])
    x = layers.Conv2D(width, 3, padding="same", kernel_initializer=init(), name="dec_out_conv", dtype=dtype)(
        x
    )
    x = layers.Activation("relu", name="dec_out_act", dtype=dtype)(x)
    last_features = x
    x = layers.Conv2D(
        out_channels, 3, padding="same", kernel_initializer=init(), name="out_upconv", dtype=dtype
    )(x)
    outputs = layers.Activation("tanh", name=FLOAT32_LAYERS[0], dtype="float32")(x)
    if hints:
        outputs = hint_net.HintPropagation(name=FLOAT32_LAYERS[1], dtype="float32")(
            [outputs, hint_channels, last_features, gray]
        )
    return keras.Model(inputs, outputs, name="generator")


def build_discriminator(
    image_size: int = 256,
    in_channels: int = 3,
    out_channels: int = 3,
    width: int = 64,
    dtype: str | None = None,
) -> keras.Model:
    """70x70 PatchGAN on the concatenated (input, output) pair; returns one logit per patch.

    The report ends in a sigmoid and BCE; we return logits and use BCE(from_logits=True), the
    same loss computed stably. Output (bs, 16, 16, 1) at 256. ``dtype`` as in build_generator;
    the logits stay float32.
    """
    levels_for(image_size)
    source = keras.Input((None, None, in_channels), name="input_image")
    target = keras.Input((None, None, out_channels), name="target_image")
    x = layers.Concatenate(name="pair", dtype=dtype)([source, target])
    x = downsample(x, width, batchnorm=False, name="d1", dtype=dtype)  # (bs, 128, 128, 64)
    x = downsample(x, width * 2, name="d2", dtype=dtype)  # (bs, 64, 64, 128)
    x = downsample(x, width * 4, name="d3", dtype=dtype)  # (bs, 32, 32, 256)
    x = downsample(x, width * 8, name="d4", dtype=dtype)  # (bs, 16, 16, 512)
    x = layers.Conv2D(width * 8, 4, padding="same", kernel_initializer=init(), name="d5_conv", dtype=dtype)(x)
    x = layers.BatchNormalization(name="d5_bn", dtype=dtype)(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="d5_act", dtype=dtype)(x)  # (bs, 16, 16, 512)
    logits = layers.Conv2D(
        1, 4, padding="same", kernel_initializer=init(), name="patch_logits", dtype="float32"
    )(x)  # (bs, 16, 16, 1)
    return keras.Model([source, target], logits, name="discriminator")
