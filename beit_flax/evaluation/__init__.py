"""Benchmark evaluation: dataset readers for the released formats (`datasets`), the metric and relative protocols
(`protocols`), the metrics (`metrics`), and the run over a dataset (`runner`); `beit-depth evaluate` is its command
(`beit_flax.cli.evaluate`). Importing it imports no model and no h5py (read only for NYU's labelled .mat)."""

from beit_flax.evaluation.datasets import DATASETS, open_dataset
from beit_flax.evaluation.metrics import depth_errors
from beit_flax.evaluation.protocols import metric_scores, relative_scores

__all__ = ["DATASETS", "depth_errors", "metric_scores", "open_dataset", "relative_scores"]
