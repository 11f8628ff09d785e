"""Small data sets bundled with scikit-learn, for examples and smoke tests."""

from __future__ import annotations

import numpy as np

from dmlcli.data.source import DatasetInfo, DataSource

BUILTIN_DATASETS = ("breast_cancer", "digits")


class BuiltinSource(DataSource):
    """A scikit-learn toy data set, held in memory (they are a few hundred kilobytes)."""

    def __init__(self, name: str):
        super().__init__(name)
        self._features: np.ndarray | None = None

    def _scan(self) -> DatasetInfo:
        # Imported here: scikit-learn takes half a second to import, on every rank, and only these need it.
        from sklearn import datasets

        features, labels = getattr(datasets, f"load_{self.name}")(return_X_y=True)
        self._features = np.ascontiguousarray(features, dtype=np.float64)
        n, d = self._features.shape
        return DatasetInfo(n=n, d=d, y=np.asarray(labels, dtype=np.float64), sparse=False)

    def _read_sorted(self, rows: np.ndarray, width: int) -> np.ndarray:
        return self._features[rows]
