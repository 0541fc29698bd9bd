"""Looking inside a trained network: kernels, feature maps, saliency, Grad-CAM and its worst mistakes.

maps.py computes (tensors in, tensors out), draw.py turns them into PNG bytes, show.py does both for a
run directory (`cnnlab show …`). Importing this package imports torch; `cnnlab.inspect` does not import it.
"""

from cnnlab.inspect.visual.maps import (
    Mistake,
    confident_mistakes,
    default_layers,
    feature_maps,
    first_conv,
    grad_cam,
    gradient_saliency,
    last_conv_stage,
    predict_images,
    spatial_layers,
)
from cnnlab.inspect.visual.show import METHODS, Shown, show_errors, show_features, show_filters, show_saliency

__all__ = [
    "METHODS",
    "Mistake",
    "Shown",
    "confident_mistakes",
    "default_layers",
    "feature_maps",
    "first_conv",
    "grad_cam",
    "gradient_saliency",
    "last_conv_stage",
    "predict_images",
    "show_errors",
    "show_features",
    "show_filters",
    "show_saliency",
    "spatial_layers",
]
