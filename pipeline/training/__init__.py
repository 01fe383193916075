"""Training of the chain's networks (``dicomnode train``): data, loops, checkpoints, bundle.

One module per job: ``data`` (per-slice tensors from a data set's cases, via
``pipeline.preprocess``), ``sampling`` (seeds, class-balanced orders), ``augment``
(affine + random erasing in torch), ``checkpoint`` (per-epoch state, resume),
``validation`` (figures per epoch), ``bundle`` (card + weights), ``loop`` (the run).
"""

from .checkpoint import TrainError
from .loop import TrainOutcome, TrainSettings, train_role
from .params import AugmentParams, TrainParams

__all__ = ["AugmentParams", "TrainError", "TrainOutcome", "TrainParams", "TrainSettings", "train_role"]
