"""Errors that end a run, each with the process exit code it maps to (see README: exit codes)."""


class DmlcliError(Exception):
    """A failure with a message meant for the user; exit code 1."""

    exit_code = 1


class UsageError(DmlcliError):
    """Bad usage or input: unknown option, impossible hyper-parameter, wrong rank count."""

    exit_code = 2


class DataError(UsageError):
    """A data set that is missing, malformed or does not fit the loss."""


class Diverged(DmlcliError):
    """The objective became NaN or infinite at an evaluation."""

    exit_code = 3
