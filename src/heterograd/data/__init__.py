"""Offline datasets for heterograd.

>>> ds = load_dataset("digits")
>>> ds.x_train.shape, ds.y_train.dtype, ds.n_classes
(torch.Size([1437, 64]), torch.int64, 10)

Names: ``digits``, ``mnist1d``, ``teacher`` (regression), ``fashion-mnist``, ``idx:<dir>`` (any
folder with the four MNIST-style IDX files), ``cifar10:<dir>`` and ``cifar100:<dir>`` (the official
binary or Python files). See `load_dataset` for what each one holds; ``image=True`` gives image
datasets as ``(N, C, H, W)`` for convolutional models, and `heterograd.data.images` holds the
per-channel normalisation and the seeded crop/flip augmentation.
"""

from heterograd.data.dataset import Dataset, iterate_minibatches
from heterograd.data.idx import read_idx
from heterograd.data.images import Augment, channel_stats, normalize_channels, random_crop, random_hflip
from heterograd.data.sequences import sorting_task
from heterograd.data.sources import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "Augment",
    "Dataset",
    "channel_stats",
    "iterate_minibatches",
    "load_dataset",
    "normalize_channels",
    "random_crop",
    "random_hflip",
    "read_idx",
    "sorting_task",
]
