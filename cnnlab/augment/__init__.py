"""Data augmentation as batched tensor operations with per-sample randomness.

    >>> from cnnlab.augment import parse_pipeline
    >>> pipeline = parse_pipeline("lecture")        # flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3
    >>> g = torch.Generator().manual_seed(0)
    >>> y = pipeline(x, g)                          # x: (N, C, H, W) float in [0, 1], CPU or CUDA
    >>> y = pipeline(images_uint8, g)               # uint8 in [0, 255] -> float32 in [0, 1]
    >>> str(pipeline)                               # the canonical string, parses back to an equal pipeline

Operations (`cnnlab augment --list`): flip, vflip, crop, translate, scale, resized_crop, exposure,
contrast, saturation, erase, trivial, randaugment; presets: lecture, cifar, erasing, imagenet. Build pipelines from Python
too: `Pipeline([Flip(), Crop(pad=4)])`. Streams of batches (image folders after collation):
`augment_batches(batches, pipeline)`; a torchvision transform per sample instead: `PerSample(T)`.
MixUp / CutMix with λ per sample and soft targets: `parse_mix("mixup:0.2,cutmix:1.0")(x, labels, g, k)`.
"""

from cnnlab.augment.adapters import PerSample, augment_batches, to_unit_float
from cnnlab.augment.grid import augment_grid, preview, save_picture
from cnnlab.augment.mixing import Mix, parse_mix
from cnnlab.augment.ops import (
    OPS,
    Contrast,
    Crop,
    Erase,
    Exposure,
    Flip,
    Op,
    RandAugment,
    ResizedCrop,
    Saturation,
    Scale,
    Translate,
    TrivialAugment,
    VFlip,
)
from cnnlab.augment.pipeline import PRESETS, Pipeline, describe_ops, parse_pipeline

__all__ = [
    "OPS", "PRESETS", "Contrast", "Crop", "Erase", "Exposure", "Flip", "Mix", "Op", "PerSample", "Pipeline",
    "RandAugment", "ResizedCrop", "Saturation", "Scale", "Translate", "TrivialAugment", "VFlip", "augment_batches",
    "augment_grid", "describe_ops", "parse_mix", "parse_pipeline", "preview", "save_picture", "to_unit_float",
]
