"""Offline datasets for heterograd.

>>> ds = load_dataset("digits")
>>> ds.x_train.shape, ds.y_train.dtype, ds.n_classes
(torch.Size([1437, 64]), torch.int64, 10)

Names: ``digits``, ``mnist1d``, ``teacher`` (regression), ``fashion-mnist`` and ``idx:<dir>`` (any
folder with the four MNIST-style IDX files). See :func:`load_dataset` for what each one holds.
"""

from heterograd.data.dataset import Dataset, iterate_minibatches
from heterograd.data.idx import read_idx
from heterograd.data.sequences import sorting_task
from heterograd.data.sources import DATASETS, load_dataset

__all__ = ["DATASETS", "Dataset", "iterate_minibatches", "load_dataset", "read_idx", "sorting_task"]
