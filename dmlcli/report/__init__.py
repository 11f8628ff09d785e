"""Outputs of a run: the CSV log, the JSON manifest, progress on rank 0 and the final summary."""

from dmlcli.report.csvlog import BASE_COLUMNS, CsvLog, read_csv
from dmlcli.report.manifest import git_revision, software_versions, utc_now, write_manifest
from dmlcli.report.progress import make_progress
from dmlcli.report.summary import print_summary

__all__ = ["BASE_COLUMNS", "CsvLog", "read_csv", "git_revision", "software_versions", "utc_now", "write_manifest",
           "make_progress", "print_summary"]
