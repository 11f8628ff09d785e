"""Turning the user's data argument (builtin name, synthetic spec or file path) into a DataSource."""

from __future__ import annotations

import os

from dmlcli.data.builtin import BUILTIN_DATASETS, BuiltinSource
from dmlcli.data.csvfile import CsvSource
from dmlcli.data.libsvm import LibsvmSource
from dmlcli.data.npzfile import NpzSource
from dmlcli.data.source import DataSource
from dmlcli.data.synthetic import SyntheticSource, parse_synthetic_spec
from dmlcli.errors import DataError

FILE_SOURCES = {".svm": LibsvmSource, ".libsvm": LibsvmSource, ".csv": CsvSource, ".npz": NpzSource}


def _file_source(path: str, index_base: int | None) -> DataSource:
    """The reader for a path with a supported extension, once the path is known to be a file."""
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise DataError(f"data file is not a regular file: {path}")
    reader = FILE_SOURCES[os.path.splitext(path)[1].lower()]
    return LibsvmSource(path, index_base) if reader is LibsvmSource else reader(path)


def open_source(spec: str, index_base: int | None = None) -> DataSource:
    """The data source named by `spec`; nothing is read until scan() or rows().

    `index_base` (0 or 1) makes a LIBSVM file use that feature index base instead of deciding from
    its content (see `agree_index_base`); other kinds of data ignore it.
    """
    spec = os.fspath(spec)
    if spec in BUILTIN_DATASETS:
        return BuiltinSource(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticSource(parse_synthetic_spec(spec))
    extension = os.path.splitext(spec)[1].lower()
    if extension in FILE_SOURCES:
        return _file_source(spec, index_base)
    if extension and os.path.isfile(spec):
        raise DataError(f"unsupported data file type {extension!r}: {spec}; expected a .svm, .libsvm, .csv or .npz file")
    raise DataError(
        f"unknown data set {spec!r}: expected a builtin ({', '.join(BUILTIN_DATASETS)}), "
        "synthetic:..., or a .svm/.libsvm/.csv/.npz file"
    )
