"""Issue 14, item 8: a model that downsamples the input below one pixel per position is flagged before training.

Truth is independent of the code: published output strides (ResNet and VGG: 32, five halvings) and
strides multiplied by hand for a spec.
"""

from __future__ import annotations

import pytest

import cnnlab
from cnnlab.models.downsampling import downsampling_factor, downsampling_warning, smallest_input_side


@pytest.mark.parametrize(("model", "size", "factor"), [
    ("resnet18", (3, 224, 224), 32),  # He et al. 2016: conv1/2, max-pool/2, conv3_1..conv5_1 /2 each
    ("vgg11", (3, 224, 224), 32),  # Simonyan & Zisserman 2015: five 2x2 max-pools
    ("resnet20", (3, 32, 32), 4),  # the CIFAR ResNets: two stride-2 stages
    ("conv3x3-8/s2 maxpool2 conv3x3-8/s3 fc10", (1, 48, 48), 12),  # 2 * 2 * 3
])
def test_downsampling_factor_matches_the_architecture(model, size, factor):
    assert downsampling_factor(model, size, 10) == factor


def test_resnet18_on_8x8_digits_is_warned_with_the_size_that_works():
    assert smallest_input_side("resnet18", (1, 8, 8), 10) == 32
    note = downsampling_warning("resnet18", (1, 8, 8), 10)
    assert "32x" in note and "--image-size 32" in note and "8x8" in note
    assert downsampling_warning("resnet18", (3, 32, 32), 10) == ""
    assert downsampling_warning("simple_cnn", (1, 8, 8), 10) == ""


class _Stop(Exception):
    pass


class _StopBeforeTraining(cnnlab.Callback):
    def on_epoch_start(self, trainer, epoch):
        raise _Stop


def test_the_trainer_warns_before_the_first_step(tmp_path, capsys):
    with pytest.raises(_Stop):
        cnnlab.train(model="resnet18", data="digits", epochs=1, out=str(tmp_path / "run"), callbacks=[_StopBeforeTraining()],
                     quiet=True, plots=False)
    err = capsys.readouterr().err
    assert "warning: model 'resnet18' downsamples its input 32x" in err and "--image-size 32" in err
