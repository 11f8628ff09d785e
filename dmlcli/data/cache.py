"""A parsed LIBSVM file kept on disk as memory-mapped numpy arrays, keyed by the file's identity.

Users sweep over one file many times; parsing its text is what each run would otherwise pay before
round 0. The first run that scans a file of at least MIN_CACHED_BYTES writes an entry: a directory
`libsvm-<path hash>-<identity hash>/` in the cache directory holding `labels.npy`, `indptr.npy` (row
pointers), `indices.npy` (feature indices as written, int32), `values.npy` and `offsets.npy` (each
row's byte offset, for a rank that cannot see the entry), plus `meta.json` with the identity. Later
runs open the arrays with `np.load(mmap_mode="r")`: rank 0 reads the labels and row pointers, and each
worker reads only its own rows' bytes (`CacheEntry.read_ranges`).

On the issue-8 file (76 MB of text, 200,000 rows, 6 million nonzeros) the entry takes 77 MB, and a
repeated scan and read of every row costs 0.47 s of CPU where the first costs 3.5 s (and
`load_svmlight_file` 4.5 s; see dmlcli/data/libsvm.py). Indices are stored as int32 (LIBSVM's indices
are C ints), which keeps the entry about the size of the text.

The cache directory is `$DMLCLI_CACHE_DIR`, else `$XDG_CACHE_HOME/dmlcli`, else `~/.cache/dmlcli`;
`DMLCLI_CACHE_DIR=` (empty) turns the cache off. Deleting the directory clears it (an entry is always
rebuilt from the file when missing).

Never wrong data from a stale or broken entry:
- the identity is the absolute path, size, mtime_ns, ctime_ns, inode and device; any change to the
  file (rewritten, touched, replaced) gives a new identity and so a miss, and writing an entry removes
  the older entries of the same path;
- a file modified less than RACY_SECONDS before it was read is not cached: a write within the same
  timestamp tick as the one we saw would go unnoticed (git's "racy clean" problem);
- an entry is written into a temporary directory and renamed into place, so a reader sees all of it
  or nothing; `meta.json` must repeat the identity, and every array's header must have the dtype and
  length it names, and the row pointers and labels must hold together, else the entry is replaced by a
  new parse;
- a worker checks the rows it reads (indices in range and ascending, values finite) and that the entry
  is still the one rank 0 saw; otherwise it reads its rows from the text, at the scan's row offsets;
- an unwritable cache directory, a full disk or any other failure to write just means no entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib import format as npy_format

CACHE_ENV = "DMLCLI_CACHE_DIR"
FORMAT_VERSION = 1
# Smaller files are parsed each time: a 1 MB file parses in about 40 ms, and an entry would only add
# files to the cache directory for runs (tests, examples) that gain nothing from it.
MIN_CACHED_BYTES = 1 << 20
# How long before the read a file must have last changed for its parse to be cached (FAT's
# timestamps have a 2-second granularity, most others far finer).
RACY_SECONDS = 2.0
# The arrays of an entry: name -> dtype.
ARRAYS = {"labels": np.float64, "indptr": np.int64, "offsets": np.int64, "indices": np.int32, "values": np.float64}
# A .npy header for any 1-D array of these dtypes is 128 bytes (format 1.0 pads to 64), so the streamed
# arrays reserve that much and write their header once their length is known.
_HEADER_BYTES = 128
# Elements of a cache array read at once when gathering a worker's rows (see CacheEntry.read_ranges): the
# window and the few index arrays of its length that place its elements take about 5 MiB.
WINDOW_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class FileIdentity:
    """What tells one version of a file from another without reading it."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        stat = os.stat(path)
        return cls(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)

    def racy(self) -> bool:
        """Whether the file changed too recently for a later change to be seen in its identity."""
        return time.time_ns() - max(self.mtime_ns, self.ctime_ns) < RACY_SECONDS * 1e9


def cache_root() -> str | None:
    """The cache directory (not necessarily existing), or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return os.path.abspath(os.path.expanduser(configured)) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dmlcli")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _entry_prefix(identity: FileIdentity) -> str:
    return f"libsvm-{_digest(identity.path)}-"


def _entry_name(identity: FileIdentity) -> str:
    return _entry_prefix(identity) + _digest(json.dumps([FORMAT_VERSION, asdict(identity)]))


@dataclass(frozen=True)
class CacheEntry:
    """One parsed file in the cache: small enough to send to every worker with its rows.

    `facts` are the scan's findings stored with it (largest feature index, the line of the first
    nonzero value at index 0).
    """

    directory: str
    identity: FileIdentity
    rows: int
    nonzeros: int
    facts: dict

    def array(self, name: str) -> np.ndarray:
        """One array of the entry, memory-mapped; ValueError or OSError if it is not what the entry says."""
        length = self.rows + 1 if name in ("indptr", "offsets") else self.rows if name == "labels" else self.nonzeros
        array = np.load(os.path.join(self.directory, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
        if array.dtype != np.dtype(ARRAYS[name]) or array.shape != (length,):
            raise ValueError(f"cache array {name} has dtype {array.dtype} and shape {array.shape}")
        return array

    def read_ranges(self, name: str, firsts: np.ndarray, stops: np.ndarray, room: int = 0) -> np.ndarray:
        """Elements [firsts[i], stops[i]) of array `name`, range after range in the order given (repeats
        allowed), read from the file rather than mapped: the first elements of an array with `room` more
        after them (where an intercept column's entries can go without copying the rows, see
        dmlcli.runtime.setup).

        A mapping's pages count in a process's resident memory: with a shuffled partition every page of
        the entry holds some worker's rows, so each of the issue-8 run's 4 workers, gathering through the
        mapping, had all 77 MB of the entry resident beside its 18 MiB shard. Here the ranges are taken in
        file order, WINDOW_ELEMENTS at a time, and each is put straight where the caller wants it, so a
        worker holds its rows and one window, and makes no reordering copy. ValueError or OSError if the
        array is not what the entry says or the file is shorter than its header says.
        """
        mapped = self.array(name)  # checks the header; none of its data pages is touched
        offset, dtype = mapped.offset, mapped.dtype
        del mapped
        counts = stops - firsts
        out_starts = np.concatenate(([0], np.cumsum(counts)))
        out = np.empty(int(out_starts[-1]) + room, dtype=dtype)[:int(out_starts[-1])]
        if firsts.size == 0:
            return out
        in_file_order = np.argsort(firsts, kind="stable")
        firsts, counts, out_starts = firsts[in_file_order], counts[in_file_order], out_starts[:-1][in_file_order]
        # Ranges are grouped by the window their first element falls in; a group's span is read in one piece.
        groups = np.flatnonzero(np.diff(firsts // WINDOW_ELEMENTS)) + 1
        group_starts, group_ends = np.concatenate(([0], groups)), np.append(groups, firsts.size)
        with open(os.path.join(self.directory, f"{name}.npy"), "rb", buffering=0) as file:
            for start, end in zip(group_starts.tolist(), group_ends.tolist()):
                group_firsts, group_counts = firsts[start:end], counts[start:end]
                low, high = int(group_firsts[0]), int((group_firsts + group_counts).max())
                span = np.empty(high - low, dtype=dtype)
                file.seek(offset + low * dtype.itemsize)
                if file.readinto(span.view(np.uint8)) != span.nbytes:
                    raise ValueError(f"cache array {name} is shorter than its header says")
                within = np.arange(int(group_counts.sum())) - np.repeat(np.cumsum(group_counts) - group_counts, group_counts)
                out[np.repeat(out_starts[start:end], group_counts) + within] = span[np.repeat(group_firsts - low, group_counts) + within]
        return out

    def still_valid(self) -> bool:
        """Whether the entry on disk is still the one this object describes (read from another rank, later)."""
        return _read_meta(self.directory) == self._meta()

    def _meta(self) -> dict:
        return {"format": FORMAT_VERSION, "identity": asdict(self.identity), "rows": self.rows,
                "nonzeros": self.nonzeros, "facts": self.facts}


def _read_meta(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def lookup(path: str) -> tuple[CacheEntry, FileIdentity] | tuple[None, FileIdentity | None]:
    """(the cache entry for the file as it is now, or None; the file's identity, None if it cannot be had)."""
    root = cache_root()
    try:
        identity = FileIdentity.of(path)
    except OSError:
        return None, None
    if root is None or identity.size < MIN_CACHED_BYTES:
        return None, identity
    directory = os.path.join(root, _entry_name(identity))
    meta = _read_meta(directory)
    if meta is None or meta.get("format") != FORMAT_VERSION or meta.get("identity") != asdict(identity):
        return None, identity
    try:
        entry = CacheEntry(directory, identity, int(meta["rows"]), int(meta["nonzeros"]), dict(meta["facts"]))
    except (KeyError, TypeError, ValueError):
        return None, identity
    return entry, identity


class _StreamedArray:
    """A 1-D .npy file written piece by piece, its header written last, once the length is known."""

    def __init__(self, path: str, dtype):
        self.dtype = np.dtype(dtype)
        self.length = 0
        self.file = open(path, "wb")  # noqa: SIM115  (closed by finish or by the writer's abandon)
        self.file.write(b"\0" * _HEADER_BYTES)

    def append(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.length += values.size

    def finish(self) -> None:
        header = io.BytesIO()
        description = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        npy_format.write_array_header_1_0(header, description)
        if len(header.getvalue()) != _HEADER_BYTES:
            raise ValueError(f"unexpected .npy header length {len(header.getvalue())}")
        self.file.seek(0)
        self.file.write(header.getvalue())
        self.file.close()


class CacheWriter:
    """Builds an entry while a file is scanned: feed() the nonzeros block by block, then commit().

    Any failure on the way turns the writer off (`active` False) and leaves nothing behind.
    """

    def __init__(self, identity: FileIdentity):
        self.identity = identity
        self.active = False
        self._temporary: str | None = None
        self._streams: dict[str, _StreamedArray] = {}
        root = cache_root()
        if root is None or identity.size < MIN_CACHED_BYTES or identity.racy():
            return
        try:
            os.makedirs(root, exist_ok=True)
            self._temporary = tempfile.mkdtemp(prefix=".writing-", dir=root)
            self._streams = {name: _StreamedArray(os.path.join(self._temporary, f"{name}.npy"), ARRAYS[name])
                             for name in ("indices", "values")}
            self.active = True
        except OSError:
            self.abandon()

    def feed(self, indices: np.ndarray, values: np.ndarray) -> None:
        """The nonzeros of the next rows, in file order (indices as written)."""
        if not self.active:
            return
        try:
            self._streams["indices"].append(indices)
            self._streams["values"].append(values)
        except OSError:
            self.abandon()

    def commit(self, labels: np.ndarray, indptr: np.ndarray, offsets: np.ndarray, facts: dict) -> CacheEntry | None:
        """Write the rest and move the entry into place, if the file is still the one that was read.

        Returns the entry, or None when there is none (not cached, or writing failed).
        """
        if not self.active:
            return None
        try:
            if FileIdentity.of(self.identity.path) != self.identity:
                raise OSError("the file changed while it was read")
            for stream in self._streams.values():
                stream.finish()
            for name, array in (("labels", labels), ("indptr", indptr), ("offsets", offsets)):
                np.save(os.path.join(self._temporary, f"{name}.npy"), np.ascontiguousarray(array, dtype=ARRAYS[name]))
            meta = {"format": FORMAT_VERSION, "identity": asdict(self.identity), "rows": int(labels.size),
                    "nonzeros": int(indptr[-1]), "facts": facts}
            with open(os.path.join(self._temporary, "meta.json"), "w", encoding="utf-8") as handle:
                json.dump(meta, handle)
            root = os.path.dirname(self._temporary)
            final = os.path.join(root, _entry_name(self.identity))
            try:
                os.rename(self._temporary, final)
            except OSError:  # another run wrote the same entry first: keep theirs
                self.abandon()
                return lookup(self.identity.path)[0]
            self._temporary = None
            self.active = False
            _remove_older_entries(root, self.identity)
            return CacheEntry(final, self.identity, meta["rows"], meta["nonzeros"], facts)
        except (OSError, ValueError):
            self.abandon()
            return None

    def abandon(self) -> None:
        """Stop and remove whatever was written."""
        self.active = False
        for stream in self._streams.values():
            stream.file.close()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None


def discard(entry: CacheEntry) -> None:
    """Remove an entry found not to hold together, so that the next scan writes it anew."""
    shutil.rmtree(entry.directory, ignore_errors=True)


def _remove_older_entries(root: str, identity: FileIdentity) -> None:
    """Entries of the same path for earlier versions of the file: they can never be used again."""
    prefix, current = _entry_prefix(identity), _entry_name(identity)
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name != current:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
