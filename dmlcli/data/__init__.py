"""Data sets for dmlcli: opening a data spec as a streaming DataSource, and dividing rows among workers.

`open_source` accepts a builtin name, `synthetic:key=value,...`, or a .svm/.libsvm/.csv/.npz path;
`agree_index_base` gives a LIBSVM training file and its test file one feature index base;
`partition` and `split_test` turn row counts into per-worker and train/test index arrays.
"""

from dmlcli.data.builtin import BUILTIN_DATASETS
from dmlcli.data.libsvm import agree_index_base
from dmlcli.data.partition import PARTITION_SCHEMES, partition, split_test
from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.specs import open_source

__all__ = ["open_source", "agree_index_base", "DataSource", "DatasetInfo", "partition", "split_test", "BUILTIN_DATASETS",
           "PARTITION_SCHEMES"]
