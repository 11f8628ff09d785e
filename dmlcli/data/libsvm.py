"""LIBSVM / SVMlight text files: `label index:value index:value ...`, kept sparse.

Indices are 1-based (index i is column i-1) unless some line has feature index 0 with a nonzero
value, which makes the whole file 0-based (index i is column i). An explicit zero at index 0
(`0:0`) carries no information and decides nothing; read 1-based it would be column -1, so it is
dropped. A training file and its test file must be read with one base: `agree_index_base` settles
it once both are scanned, and `open_source(spec, index_base=...)` makes later readers (the workers)
use the agreed base instead of deciding again. `#` starts a comment and blank lines are skipped.

Text is parsed a block of lines at a time (`parse_block`): numpy checks that every line of the block
is plain (numbers as PLAIN_NUMBER, indices of at most 10 digits, only spaces and tabs, no comment; see
`parse_plain_block`), the indices are read from the digits before each colon with numpy, and the labels
and values are converted by `plain_decimals` (numpy for decimals of up to 15 digits, float() for the
rest), which gives float()'s numbers bit for bit, as the line-by-line parser does. Any block with
something else in it (a comment, a fault, an index of more than 10 digits) is parsed line by line by
`parse_libsvm_line`, which names the fault and its line.

A scanned file of 1 MB or more is kept in the parse cache (`dmlcli.data.cache`): a later scan of the
unchanged file reads labels and row offsets from it, and `rows()` reads only the wanted rows' bytes of
its arrays, each row straight into its place in the caller's order. Rank 0's scan carries the entry to
the workers, so on a first run too they read the cache rank 0 has just written rather than the text.

Measured on the issue-8 file (76 MB, 200,000 rows × 2,000 features, 30 nonzeros a row) in one process:
scan(), then rows() of every row in four shuffled parts (what rank 0 and four workers read), in CPU
seconds (the 2-core development machine was shared with other jobs, 2026-11-24): 12.8 s with the
per-line parser; 3.5 s with the first block parser on a first read (the block parse, writing the cache
entry, the rows from it), 7.2 s with the cache turned off, 0.47 s on a repeated read; now 1.3-1.45 s,
2.7-2.8 s and 0.22-0.26 s. `sklearn.datasets.load_svmlight_file` takes 2.5-4.5 s on the same file. The
first block parser's scan took 2.9 s: float() of the labels and values two fifths of it, picking the
values out (a findall) a fifth, a whole-block regular expression checking the lines a sixth. With
plain_decimals and the checks in numpy the block parse of the whole file takes 1.0 s against 2.7 s,
measured in turn on the same blocks, and agrees with the earlier parser on 40,000 random blocks, taken
or declined.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from dmlcli.data import cache
from dmlcli.data.messages import shown
from dmlcli.data.source import DatasetInfo, DataSource
from dmlcli.data.textfile import PLAIN_NUMBER, block_lines, line_blocks, line_content, parse_number, plain_decimals, row_texts
from dmlcli.errors import DataError
from dmlcli.sparse import scipy_sparse

# LIBSVM's own limit (its indices are C ints); it also keeps every column count within int64 arithmetic.
MAX_FEATURE_INDEX = 2**31 - 1
_MAX_INDEX_DIGITS = len(str(MAX_FEATURE_INDEX))
INDEX_BASES = (0, 1)


def parse_feature_index(key: bytes, where: str) -> int:
    """A feature index written as plain ASCII digits, at most MAX_FEATURE_INDEX."""
    if key.isdigit():
        significant = key.lstrip(b"0") or b"0"
        # The length test comes first: int() refuses strings of thousands of digits with a ValueError.
        if len(significant) <= _MAX_INDEX_DIGITS and int(significant) <= MAX_FEATURE_INDEX:
            return int(significant)
        raise DataError(f"{where}: feature index {shown(key)} is above {MAX_FEATURE_INDEX}, the largest LIBSVM index")
    if key.startswith(b"-") and key[1:].isdigit():
        raise DataError(f"{where}: feature index {shown(key)} is negative; expected 0 or more")
    raise DataError(f"{where}: feature index {shown(key)!r} is not an integer; expected ASCII digits only")


# A whole well-formed line, comment removed: a label, then index:value pairs. Nearly every line
# matches and is parsed without checking token by token; any other line (blank, or with a fault)
# goes through parse_libsvm_tokens, which accepts the same lines and names the fault of the rest.
_PLAIN_LINE = re.compile(rb"\s*NUMBER(?:\s+[0-9]{1,10}:NUMBER)*\s*".replace(b"NUMBER", PLAIN_NUMBER))


def parse_libsvm_line(line: bytes, where: str) -> tuple[float, list[int], list[float]] | None:
    """(label, feature indices as written, values) of one line, or None for a blank or comment line.

    Indices must be plain non-negative integers up to MAX_FEATURE_INDEX in strictly ascending order;
    values and labels plain finite numbers (see parse_number).
    """
    data = line_content(line, where).split(b"#", 1)[0]
    if _PLAIN_LINE.fullmatch(data):
        tokens = data.split()
        pairs = [token.split(b":") for token in tokens[1:]]
        label = float(tokens[0])
        indices = [int(key) for key, _ in pairs]
        values = [float(text) for _, text in pairs]
        # The pattern fixed the forms; order, range and finiteness (1e999 is a plain number) remain.
        ascending = all(map(operator.lt, indices, indices[1:]))
        in_range = not indices or indices[-1] <= MAX_FEATURE_INDEX
        finite = math.isfinite(label) and math.inf not in values and -math.inf not in values
        if ascending and in_range and finite:
            return label, indices, values
    return parse_libsvm_tokens(data, where)


def parse_libsvm_tokens(data: bytes, where: str) -> tuple[float, list[int], list[float]] | None:
    """parse_libsvm_line for a line without comment, checking token by token to name the first fault."""
    tokens = data.split()
    if not tokens:
        return None
    label = parse_number(tokens[0], where, "label")
    indices: list[int] = []
    values: list[float] = []
    previous = -1
    for token in tokens[1:]:
        key, colon, text = token.partition(b":")
        if key.lower() == b"qid":
            raise DataError(f"{where}: {shown(token)!r} is a ranking query id; qid: tokens are not supported")
        if not colon:
            raise DataError(f"{where}: feature {shown(token)!r} is not of the form index:value")
        index = parse_feature_index(key, where)
        if index <= previous:
            raise DataError(f"{where}: feature index {index} follows {previous}; expected strictly ascending indices")
        values.append(parse_number(text, where, f"value of feature {index}"))
        indices.append(index)
        previous = index
    return label, indices, values


@dataclass(frozen=True)
class ParsedRows:
    """The data rows of a block of text, in order: blank and comment lines hold none.

    `starts` and `lines` place each row in the block (byte offset and line, both from 0), `end` is where
    the last row's line ends (its line break included; 0 without rows). Row r's nonzeros are
    `indices[ptr[r]:ptr[r+1]]` (as written, base not applied) and `values[...]`, with ptr the cumulated `counts`.
    """

    labels: np.ndarray
    starts: np.ndarray
    lines: np.ndarray
    counts: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    end: int

    def pointers(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.counts)))


# The bytes of a block parse_plain_block takes; any other (a comment's #, letters, NUL, ...) sends it line by line.
_PLAIN_BYTES = b"0123456789.+-eE: \t\r\n"
_NEWLINE, _RETURN, _COLON, _ZERO, _SPACE = ord("\n"), ord("\r"), ord(":"), ord("0"), ord(" ")
_MAX_INDEX_LENGTH = 10


def parse_block(block: bytes, where: Callable[[int], str]) -> ParsedRows:
    """The data rows of `block` (whole lines), checked as parse_libsvm_line checks each line.

    `where(i)` names line i of the block (from 0) in an error message.
    """
    return parse_plain_block(block) or parse_block_by_line(block, where)


def parse_plain_block(block: bytes) -> ParsedRows | None:
    """The data rows of a block whose every line is plain and valid; None for any other block.

    A plain line has the shape of _PLAIN_LINE with only spaces and tabs between tokens and no comment: a
    label (a PLAIN_NUMBER), then index:value pairs (1 to 10 ASCII digits, a colon, a PLAIN_NUMBER); lines
    end in LF or CR LF. numpy checks that shape on the whole block at once: the tokens are the runs of bytes
    above the space, a line's first has no colon and every other exactly one, with digits before it, and
    plain_decimals checks the numbers as it converts them. On the issue-8 file the whole-block regular
    expression this replaces had become two fifths of the block parse's CPU (0.8 of 2.1 s).
    """
    if block.translate(None, _PLAIN_BYTES):
        return None
    text = np.frombuffer(block, dtype=np.uint8)
    returns = np.flatnonzero(text == _RETURN)
    inside = returns[returns + 1 < text.size]
    if np.any(text[inside + 1] != _NEWLINE):
        return None  # a carriage return that does not end a line
    breaks = np.flatnonzero(text == _NEWLINE)
    line_starts = np.concatenate(([0], breaks + 1))
    line_ends = np.append(breaks + 1, len(block))
    # Tokens: the runs of bytes above the space (spaces, tabs, CR and LF are the only bytes at or below it).
    blank = text <= _SPACE
    edges = np.flatnonzero(blank[1:] != blank[:-1]) + 1
    first = [0] if text.size and not blank[0] else []
    last = [text.size] if text.size and not blank[-1] else []
    edges = np.concatenate((first, edges, last)).astype(np.int64)
    token_starts, token_ends = edges[0::2], edges[1::2]
    token_lines = np.searchsorted(breaks, token_starts)
    is_label = np.ones(token_starts.size, dtype=bool)
    is_label[1:] = token_lines[1:] != token_lines[:-1]
    colons = np.flatnonzero(text == _COLON)
    colons_per_token = np.bincount(np.searchsorted(token_starts, colons, side="right") - 1, minlength=token_starts.size)
    if np.any(colons_per_token != ~is_label):  # a label has no colon, a pair exactly one
        return None
    label_tokens = np.flatnonzero(is_label)
    rows = token_lines[label_tokens]
    counts = np.diff(np.append(label_tokens, token_starts.size)) - 1
    labels = plain_decimals(block, token_starts[label_tokens], token_ends[label_tokens])
    values = plain_decimals(block, colons + 1, token_ends[~is_label])
    indices = _indices_before(text, colons, token_starts[~is_label])
    if labels is None or values is None or indices is None:
        return None
    if not (np.isfinite(labels).all() and np.isfinite(values).all() and strictly_ascending(indices, counts)):
        return None  # line by line, the fault gets its message
    end = int(line_ends[rows[-1]]) if rows.size else 0
    return ParsedRows(labels, line_starts[rows], rows, counts, indices, values, end)


def _indices_before(text: np.ndarray, colons: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
    """The feature index written from each start to its colon, or None unless every one is 1 to 10 ASCII
    digits and at most MAX_FEATURE_INDEX.

    Read digit by digit, right to left, for all colons at once: about a sixth of what float() would cost.
    """
    if np.any(colons <= starts):
        return None
    indices = np.zeros(colons.size, dtype=np.int64)
    digit_count = np.zeros(colons.size, dtype=np.int64)
    reading = np.ones(colons.size, dtype=bool)
    scale = 1
    for back in range(1, _MAX_INDEX_LENGTH + 1):
        digits = text[np.maximum(colons - back, 0)].astype(np.int64) - _ZERO
        reading &= (colons - back >= starts) & (digits >= 0) & (digits <= 9)
        if not reading.any():
            break
        indices += np.where(reading, digits * scale, 0)
        digit_count += reading
        scale *= 10
    if np.any(digit_count != colons - starts) or (indices.size and indices.max() > MAX_FEATURE_INDEX):
        return None
    return indices


def strictly_ascending(indices: np.ndarray, counts: np.ndarray) -> bool:
    """Whether the indices of each row (counts[r] of them, rows one after another) strictly increase."""
    if indices.size < 2:
        return True
    rising = np.diff(indices) > 0
    row_ends = np.cumsum(counts)[:-1]
    rising[row_ends[(row_ends > 0) & (row_ends < indices.size)] - 1] = True  # a row's first index may be anything
    return bool(rising.all())


def parse_block_by_line(block: bytes, where: Callable[[int], str]) -> ParsedRows:
    """parse_block for any block, one line at a time through parse_libsvm_line, which names the first fault."""
    labels, starts, lines, counts = array("d"), array("q"), array("q"), array("q")
    indices, values = array("q"), array("d")
    end = 0
    for line, start, stop in block_lines(block):
        parsed = parse_libsvm_line(block[start:stop], where(line))
        if parsed is not None:
            label, row_indices, row_values = parsed
            labels.append(label)
            starts.append(start)
            lines.append(line)
            counts.append(len(row_indices))
            indices.extend(row_indices)
            values.extend(row_values)
            end = stop
    as_numpy = {"d": np.float64, "q": np.int64}
    parts = (labels, starts, lines, counts, indices, values)
    return ParsedRows(*(np.frombuffer(part, dtype=as_numpy[part.typecode]) for part in parts), end)


class LibsvmSource(DataSource):
    """A LIBSVM file: the scan keeps labels and row offsets (and fills the parse cache), rows() reads
    the wanted rows from the cache entry, or else re-reads their lines.

    `index_base` is None (decide from the file, see the module docstring) or 0 or 1 (read with that
    base; a nonzero value at index 0 in a file read 1-based is then a DataError).
    """

    def __init__(self, path: str, index_base: int | None = None):
        super().__init__(path)
        if index_base not in (None, *INDEX_BASES):
            raise ValueError(f"index_base must be None, 0 or 1, got {index_base!r}")
        self.index_base = index_base
        # Line number of the first nonzero value at feature index 0 (what makes a file 0-based), or None.
        self.zero_base_line: int | None = None
        self._largest_index = -1
        self._offsets: np.ndarray | None = None
        # The cache entry holding this file's parse, when there is one; sent to the workers with the scan.
        self._entry: cache.CacheEntry | None = None

    def _scan(self) -> DatasetInfo:
        entry, identity = cache.lookup(self.name)
        labels = self._scan_entry(entry) if entry is not None else None
        if labels is None:
            if entry is not None:
                cache.discard(entry)  # it does not hold together: this scan writes it anew
            labels = self._scan_text(identity)
        if self.index_base is None:
            self.index_base = 0 if self.zero_base_line is not None else 1
        return DatasetInfo(n=labels.size, d=self._feature_count(self.index_base), y=labels, sparse=True)

    def _scan_entry(self, entry: cache.CacheEntry) -> np.ndarray | None:
        """The labels from a cache entry, with the scan's other findings; None if the entry does not hold together."""
        try:
            labels = np.array(entry.array("labels"))
            pointers = entry.array("indptr")
            offsets = np.array(entry.array("offsets"))
            largest, zero_line = int(entry.facts["largest_index"]), entry.facts["zero_base_line"]
            consistent = (labels.size > 0 and pointers[0] == 0 and pointers[-1] == entry.nonzeros
                          and bool(np.all(np.diff(pointers) >= 0)) and bool(np.all(np.diff(offsets) > 0))
                          and bool(np.isfinite(labels).all()) and 0 <= largest <= MAX_FEATURE_INDEX
                          and (zero_line is None or isinstance(zero_line, int)))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not consistent:
            return None
        self._entry, self._offsets = entry, offsets
        self._largest_index, self.zero_base_line = largest, zero_line
        return labels

    def _scan_text(self, identity: cache.FileIdentity | None) -> np.ndarray:
        """Parse the whole file block by block, writing a cache entry on the way when it may have one."""
        writer = cache.CacheWriter(identity) if identity is not None else None
        labels, starts, counts = [], [], []
        end = 0
        try:
            for first_line, offset, block in line_blocks(self.name):
                parsed = parse_block(block, lambda line, first=first_line: f"{self.name}:{first + line}")
                if not parsed.labels.size:
                    continue
                labels.append(parsed.labels)
                starts.append(parsed.starts + offset)
                counts.append(parsed.counts)
                end = offset + parsed.end
                self._note_indices(parsed, first_line)
                if writer is not None:
                    writer.feed(parsed.indices, parsed.values)
            if not labels:
                raise DataError(f"{self.name}: no data rows; expected lines of the form 'label index:value ...'")
            if self._largest_index < 0:
                raise DataError(f"{self.name}: no features on any line; expected 'label index:value ...'")
            all_labels = np.concatenate(labels)
            self._offsets = np.append(np.concatenate(starts), end)
            if writer is not None:
                pointers = np.concatenate(([0], np.cumsum(np.concatenate(counts))))
                facts = {"largest_index": self._largest_index, "zero_base_line": self.zero_base_line}
                self._entry = writer.commit(all_labels, pointers, self._offsets, facts)
            return all_labels
        finally:
            if writer is not None:
                writer.abandon()

    def _note_indices(self, parsed: ParsedRows, first_line: int) -> None:
        """Track the largest feature index and the first line with a nonzero value at index 0."""
        if parsed.indices.size:
            self._largest_index = max(self._largest_index, int(parsed.indices.max()))
        if self.zero_base_line is None:
            at_zero = np.flatnonzero((parsed.indices == 0) & (parsed.values != 0))
            if at_zero.size:
                row = int(np.searchsorted(parsed.pointers(), at_zero[0], side="right")) - 1
                self.zero_base_line = first_line + int(parsed.lines[row])

    def use_index_base(self, base: int) -> None:
        """Read the file with index base `base` from now on, scan().d following; the file is not read again."""
        if base not in INDEX_BASES:
            raise ValueError(f"index base must be 0 or 1, got {base!r}")
        info = self.scan()
        # scan() caches its result; replacing the cached one keeps every later scan() and rows() consistent.
        self._info = replace(info, d=self._feature_count(base))
        self.index_base = base

    def _feature_count(self, base: int) -> int:
        """Feature columns when the file is read with `base`, from what the scan saw."""
        if base == 1 and self.zero_base_line is not None:
            raise DataError(f"{self.name}:{self.zero_base_line}: feature index 0 has a nonzero value but the file "
                            "is read 1-based; expected indices from 1")
        if self._largest_index + 1 - base < 1:
            raise DataError(f"{self.name}: the only feature index is 0, always with value 0, which a 1-based file "
                            "drops; expected indices from 1")
        return self._largest_index + 1 - base

    def _read_in_order(self, wanted: np.ndarray, width: int):
        """The rows from the cache entry, each read straight into its place (no sorted copy to reorder, which
        would hold a worker's shard twice); from the text, as any source reads them, when there is no entry."""
        read = self._read_cached(wanted) if self._entry is not None else None
        if read is None:
            self._entry = None  # gone or unreadable from here: the text is the truth
            return super()._read_in_order(wanted, width)
        return self._as_csr(*read, width)

    def _read_sorted(self, rows: np.ndarray, width: int):
        return self._as_csr(*self._read_text(rows), width)

    def _as_csr(self, pointers: np.ndarray, indices: np.ndarray, values: np.ndarray, width: int):
        """The CSR matrix of rows read as (row pointers, indices as written, values), in this file's index base."""
        if self.index_base == 1:
            pointers, indices, values = self._without_index_zero(pointers, indices, values)
        columns = indices  # the reader's own array: shifted in place, one shard-sized copy fewer
        columns -= self.index_base
        if columns.size and columns.max() >= width:
            largest = columns.max() + self.index_base
            raise DataError(f"{self.name} changed since it was scanned: feature index {largest} "
                            f"is beyond the {width} columns asked for")
        return scipy_sparse().csr_matrix((values, columns, pointers), shape=(pointers.size - 1, width))

    def _read_cached(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(row pointers, indices as written, values) of `rows` (any order, repeats allowed) from the cache entry;
        None if it cannot be trusted."""
        entry = self._entry
        try:
            if not entry.still_valid():
                return None
            all_pointers = entry.array("indptr")
            firsts, stops = np.asarray(all_pointers[rows]), np.asarray(all_pointers[rows + 1])
            counts = stops - firsts
            if counts.min() < 0 or firsts.min() < 0 or stops.max() > entry.nonzeros:
                return None
            pointers = np.concatenate(([0], np.cumsum(counts)))
            # Indices int32, as scipy would store them anyway; both with room for one more entry a row (an intercept).
            indices = entry.read_ranges("indices", firsts, stops, room=rows.size)
            values = entry.read_ranges("values", firsts, stops, room=rows.size)
        except (OSError, ValueError, IndexError):
            return None
        if indices.size and (indices.min() < 0 or indices.max() > self._largest_index or not np.isfinite(values).all()
                             or not strictly_ascending(indices, counts)):
            return None
        return pointers, indices, values

    def _read_text(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row pointers, indices as written, values) of `rows`, parsed from their lines."""
        counts, indices, values = [], [], []
        done = 0
        for count, text in row_texts(self.name, self._offsets, rows):
            where = f"{self.name} (data rows {rows[done]}-{rows[done + count - 1]})"
            parsed = parse_block(text, lambda _, where=where: where)
            # Checked before using the rows, so that a caller filling a fixed-size array cannot overrun it.
            if parsed.labels.size != count:
                raise DataError(f"{self.name} changed since it was scanned: expected {count} data rows "
                                f"at byte {int(self._offsets[rows[done]])}, found {parsed.labels.size}")
            counts.append(parsed.counts)
            indices.append(parsed.indices)
            values.append(parsed.values)
            done += count
        return np.concatenate(([0], np.cumsum(np.concatenate(counts)))), np.concatenate(indices), np.concatenate(values)

    def _without_index_zero(self, pointers: np.ndarray, indices: np.ndarray, values: np.ndarray):
        """Drop the explicit zeros at feature index 0 of a file read 1-based (see the module docstring)."""
        at_zero = indices == 0
        if not at_zero.any():
            return pointers, indices, values
        if np.any(values[at_zero] != 0):
            raise DataError(f"{self.name} changed since it was scanned: a row now has a nonzero value "
                            "at feature index 0 but the file is read 1-based")
        rows_of_zeros = np.searchsorted(pointers, np.flatnonzero(at_zero), side="right") - 1
        dropped = np.bincount(rows_of_zeros, minlength=pointers.size - 1)
        pointers = pointers - np.concatenate(([0], np.cumsum(dropped)))
        return pointers, indices[~at_zero], values[~at_zero]


def agree_index_base(sources: Iterable[DataSource]) -> int | None:
    """The one index base for all LIBSVM files among `sources` (training and test), applied to each.

    0 if some LIBSVM source has a nonzero value at feature index 0, else 1 if any source is LIBSVM,
    else None. Each LIBSVM source is scanned if it was not already, then switched to the agreed base
    without reading its file again, so its scan().d counts the columns under that base. The agreement
    follows the files' contents only: a base forced through open_source is overridden.
    """
    libsvm_sources = [source for source in sources if isinstance(source, LibsvmSource)]
    if not libsvm_sources:
        return None
    for source in libsvm_sources:
        source.scan()
    base = 0 if any(source.zero_base_line is not None for source in libsvm_sources) else 1
    for source in libsvm_sources:
        source.use_index_base(base)
    return base
