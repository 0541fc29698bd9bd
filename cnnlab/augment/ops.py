"""The registry of augmentation ops: the name used in pipeline strings -> the op class.

One class per operation, in `geometric.py` (flip, vflip, crop, translate, scale, resized_crop) and
`photometric.py` (exposure, contrast, saturation, erase), `autoaugment.py` (trivial, randaugment: an op
drawn per sample among torchvision's 14); the shared machinery is in `_base.py`.
"""

from __future__ import annotations

from cnnlab.augment._base import Op, check_batch, format_number
from cnnlab.augment._gather import remap
from cnnlab.augment.autoaugment import RandAugment, TrivialAugment
from cnnlab.augment.geometric import Crop, Flip, ResizedCrop, Scale, Translate, VFlip
from cnnlab.augment.photometric import LUMA_601, Contrast, Erase, Exposure, Saturation, luma

OPS: dict[str, type[Op]] = {
    cls.name: cls
    for cls in (Flip, VFlip, Crop, Translate, Scale, ResizedCrop, Exposure, Contrast, Saturation, Erase,
                TrivialAugment, RandAugment)
}

__all__ = [
    "LUMA_601", "OPS", "Contrast", "Crop", "Erase", "Exposure", "Flip", "Op", "RandAugment", "ResizedCrop",
    "Saturation", "Scale", "Translate", "TrivialAugment", "VFlip", "check_batch", "format_number", "luma", "remap",
]
