"""Two small public data sets shipped with dmlcli, for examples, recipes and smoke tests.

`builtin_sets.npz` (118 kB) holds them exactly as scikit-learn 1.9.1's `load_breast_cancer` and
`load_digits` return them (float64 features for breast cancer, uint8 pixels for digits, uint8
labels), so a run needs no scikit-learn: importing it and parsing its CSV cost every rank about
0.8 s of start-up. Sources (UCI Machine Learning Repository, CC BY 4.0): Wisconsin Diagnostic
Breast Cancer (Wolberg, Street, Mangasarian 1995; 569 rows, 30 features, labels 0 malignant /
1 benign) and Optical Recognition of Handwritten Digits (Alpaydin, Kaynak 1998; the 1,797-row
8×8 test set, labels 0–9). tests/test_data.py checks the file against scikit-learn when it is
installed (the `test` extra).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from dmlcli.data.source import DatasetInfo, DataSource

BUILTIN_DATASETS = ("breast_cancer", "digits")


class BuiltinSource(DataSource):
    """A builtin data set, held in memory (a few hundred kilobytes)."""

    def __init__(self, name: str):
        super().__init__(name)
        self._features: np.ndarray | None = None

    def _scan(self) -> DatasetInfo:
        with resources.files("dmlcli.data").joinpath("builtin_sets.npz").open("rb") as handle, \
                np.load(handle) as sets:
            self._features = np.ascontiguousarray(sets[f"{self.name}_X"], dtype=np.float64)
            labels = sets[f"{self.name}_y"].astype(np.float64)
        n, d = self._features.shape
        return DatasetInfo(n=n, d=d, y=labels, sparse=False)

    def _read_sorted(self, rows: np.ndarray, width: int) -> np.ndarray:
        return self._features[rows]
