"""Any ``torch.nn`` model learns by local plasticity: `convert`, the plastic layers and `probe`."""

from .convert import FEEDBACK_INITS, NORM_FEEDBACK, convert, plastic_layers
from .layers import (
    PlasticBatchNorm1d,
    PlasticBatchNorm2d,
    PlasticBatchNorm3d,
    PlasticConv1d,
    PlasticConv2d,
    PlasticEmbedding,
    PlasticGroupNorm,
    Plasticity,
    PlasticLayerNorm,
    PlasticLinear,
    PlasticModule,
)
from .probe import ProbeReport, probe

__all__ = [
    "FEEDBACK_INITS",
    "NORM_FEEDBACK",
    "PlasticBatchNorm1d",
    "PlasticBatchNorm2d",
    "PlasticBatchNorm3d",
    "PlasticConv1d",
    "PlasticConv2d",
    "PlasticEmbedding",
    "PlasticGroupNorm",
    "PlasticLayerNorm",
    "PlasticLinear",
    "PlasticModule",
    "Plasticity",
    "ProbeReport",
    "convert",
    "plastic_layers",
    "probe",
]
