"""The hostile cases: each a declarative record of input files, a command line and what must happen.

A case's `files` maps a path inside its fresh directory to its content: a str (written as UTF-8,
byte for byte, no newline translation), bytes, an `Npz`, `DIR` (an empty directory), a `Symlink`,
`Hardlink` or `Fifo`. `args` follow `dmlcli`; a `train` command gets quick defaults it does not give
itself (see run_hostile.DEFAULT_OPTIONS: --workers 1 --rounds 5 --progress off --out run.csv).
`expect` is the exit code (or the codes accepted); `stderr` fragments must appear (case-insensitive;
a tuple means any one of them); `check(outcome[, reference])` returns a list of problems.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

DIR = object()  # an empty directory


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str  # a path in the case directory, created earlier in `files`


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True, eq=False)
class Npz:
    """A .npz archive: arrays by name (bytes are stored as the raw member `name.npy`), optionally
    with one member's zip headers patched (general-purpose flag bits, compression method) in both
    the local header and the central directory, or the archive cut short."""

    arrays: dict
    compressed: bool = False
    patch_member: str | None = None
    flag_bits: int = 0
    method: int | None = None
    keep_fraction: float | None = None

    def build(self) -> bytes:
        buffer = io.BytesIO()
        compression = zipfile.ZIP_DEFLATED if self.compressed else zipfile.ZIP_STORED
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, value in self.arrays.items():
                if isinstance(value, bytes):
                    data = value
                else:
                    member = io.BytesIO()
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
                    data = member.getvalue()
                archive.writestr(f"{name}.npy", data)
        raw = buffer.getvalue()
        if self.patch_member is not None:
            raw = patch_zip_member(raw, f"{self.patch_member}.npy", self.flag_bits, self.method)
        if self.keep_fraction is not None:
            raw = raw[: int(len(raw) * self.keep_fraction)]
        return raw


def patch_zip_member(raw: bytes, member: str, flag_bits: int, method: int | None) -> bytes:
    """Set flag bits and/or the compression method of `member` in its local and central headers."""
    data = bytearray(raw)
    end = data.rfind(b"PK\x05\x06")
    entries, central = struct.unpack_from("<H", data, end + 10)[0], struct.unpack_from("<I", data, end + 16)[0]
    patched = 0
    position = central
    for _ in range(entries):
        if data[position:position + 4] != b"PK\x01\x02":
            raise ValueError("bad central directory")
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        local = struct.unpack_from("<I", data, position + 42)[0]
        name = bytes(data[position + 46:position + 46 + name_length]).decode()
        if name == member:
            if data[local:local + 4] != b"PK\x03\x04":
                raise ValueError("bad local header")
            for flags_at, method_at in ((position + 8, position + 10), (local + 6, local + 8)):
                flags = struct.unpack_from("<H", data, flags_at)[0]
                struct.pack_into("<H", data, flags_at, flags | flag_bits)
                if method is not None:
                    struct.pack_into("<H", data, method_at, method)
            patched += 1
        position += 46 + name_length + extra_length + comment_length
    if patched != 1:
        raise ValueError(f"member {member} not found")
    return bytes(data)


@dataclass(frozen=True, eq=False)
class Run:
    """A command line with its input files (a case's own run, or the reference run it is compared with)."""

    args: tuple
    files: dict = field(default_factory=dict)
    setup: Callable | None = None


@dataclass(frozen=True, eq=False)
class Case:
    name: str
    args: tuple
    expect: int | tuple
    files: dict = field(default_factory=dict)
    setup: Callable | None = None  # hook(directory) after the files are built (chmod, ...)
    stderr: tuple = ()  # fragments that must appear on stderr (a tuple item: any one of them)
    check: Callable | None = None  # check(outcome) or check(outcome, reference) -> list of problems
    reference: Run | None = None  # run first, in a fresh directory of its own
    max_seconds: float | None = None
    max_stderr_chars: int | None = None
    root_skip: str | None = None  # skipped when running as root, for this reason
    crash_rank: int | None = None  # exit 1: the rank the one stderr line must name
    may_change: tuple = ()  # inputs a successful run may rewrite (an --out given with --force)
    note: str = ""

    @property
    def expected_codes(self) -> tuple:
        return self.expect if isinstance(self.expect, tuple) else (self.expect,)


def opt(flag: str) -> tuple:
    """A message fragment naming an option: as the flag, the recipe key or words (`--test-fraction`,
    `test_fraction`, `test fraction`); any one will do."""
    name = flag.lstrip("-")
    if "-" not in name and "_" not in name:
        return (f"--{name}", f"'{name}'", f"{name}=")
    return (f"--{name.replace('_', '-')}", name.replace("-", "_"), name.replace("_", "-"), name.replace("-", " ").replace("_", " "))


def T(*args: str, algo: str = "ssgd") -> tuple:
    """`dmlcli train ALGO ARGS`."""
    return ("train", algo, *args)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def svm_lines(n: int = 20, labels=None) -> list[str]:
    """n valid, separable-ish LIBSVM lines (1-based indices 1..3), labels alternating -1/+1 by default."""
    lines = []
    for i in range(n):
        y = labels[i % len(labels)] if labels else (1 if i % 2 else -1)
        a = round(0.1 * (i % 5) + (0.6 if y > 0 else 0.0), 3)
        b = round(0.05 * ((i * 7) % 11) + 0.05, 3)
        c = round(0.02 * (i % 13) + 0.01, 3)
        lines.append(f"{y:+g} 1:{a} 2:{b} 3:{c}")
    return lines


def svm(bad: str | None = None, at: int = 3, n: int = 20, eol: str = "\n", labels=None) -> str:
    """LIBSVM text; with `bad`, line `at` (from 1) is replaced by it."""
    lines = svm_lines(n, labels)
    if bad is not None:
        lines[at - 1] = bad
    return eol.join(lines) + eol


GOOD_SVM = svm()


def csv_rows(n: int = 20) -> list[str]:
    rows = []
    for i in range(n):
        y = i % 2
        a = round(0.1 * (i % 5) + (0.6 if y else 0.0), 3)
        b = round(0.05 * ((i * 7) % 11) + 0.05, 3)
        c = round(0.02 * (i % 13) + 0.01, 3)
        rows.append(f"{y},{a},{b},{c}")
    return rows


def csv_text(bad: str | None = None, at: int = 3, n: int = 20, header: str | None = "label,a,b,c", eol: str = "\n") -> str:
    """CSV text with a header (line 1) and n rows; with `bad`, file line `at` is replaced by it."""
    lines = ([header] if header is not None else []) + csv_rows(n)
    if bad is not None:
        lines[at - 1] = bad
    return eol.join(lines) + eol


GOOD_CSV = csv_text()


def blobs_csv(scale: float = 1.0, n: int = 300) -> str:
    """Two classes decided mostly by column a; column a multiplied by `scale` (1e200: near the float limit)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, 3))
    y = (X[:, 0] + 0.3 * X[:, 1] + 0.2 * rng.standard_normal(n) > 0).astype(int)
    lines = ["label,a,b,c"] + [f"{y[i]},{float(X[i, 0]) * scale!r},{float(X[i, 1])!r},{float(X[i, 2])!r}" for i in range(n)]
    return "\n".join(lines) + "\n"


def dense_arrays(n: int = 20, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, d))
    y = np.where(X[:, 0] > 0, 1.0, -1.0)
    y[:2] = (-1.0, 1.0)
    return X, y


def csr_parts(n: int = 20, d: int = 4) -> dict:
    X, y = dense_arrays(n, d)
    X[np.abs(X) < 0.5] = 0.0
    indptr, indices, data = [0], [], []
    for row in X:
        columns = np.flatnonzero(row)
        indices += columns.tolist()
        data += row[columns].tolist()
        indptr.append(len(indices))
    return {"data": np.array(data), "indices": np.array(indices, dtype=np.int32),
            "indptr": np.array(indptr, dtype=np.int32), "shape": np.array([n, d]), "y": y}


def npy_bytes(array: np.ndarray) -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array(member, array)
    return member.getvalue()


X20, Y20 = dense_arrays()
CSR20 = csr_parts()
CR_FRAGMENTS = ("carriage return", "line ending", "\\r")


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def last_row(outcome) -> dict:
    return outcome.read_csv()[-1]


def same_columns(*columns: str):
    """The run's CSV equals the reference run's in these columns, row for row."""
    def check(outcome, reference) -> list[str]:
        mine, theirs = outcome.read_csv(), reference.read_csv()
        if len(mine) != len(theirs):
            return [f"{len(mine)} CSV rows, the reference run {len(theirs)}"]
        for number, (a, b) in enumerate(zip(mine, theirs)):
            for column in columns:
                if a.get(column) != b.get(column):
                    return [f"row {number} {column}: {a.get(column)} vs reference {b.get(column)}"]
        return []
    return check


def close_test_metric(tolerance: float):
    def check(outcome, reference) -> list[str]:
        mine, theirs = float(last_row(outcome)["test_metric"]), float(last_row(reference)["test_metric"])
        if not (math.isfinite(mine) and abs(mine - theirs) <= tolerance):
            return [f"test_metric {mine:.3f}, the same data at unit scale {theirs:.3f} (tolerance {tolerance})"]
        return []
    return check


def model_file(path: str, size: int | None = None, required: bool = True):
    """The saved model: a finite 1-D float array (of `size` entries)."""
    def check(outcome) -> list[str]:
        full = outcome.directory / path
        if not full.exists():
            return [f"{path} not written"] if required and outcome.code == 0 else []
        model = np.load(full, allow_pickle=False)
        problems = []
        if model.ndim != 1 or (size is not None and model.size != size):
            problems.append(f"model shape {model.shape}, expected ({size},)")
        if not np.all(np.isfinite(model)):
            problems.append("model has non-finite entries")
        return problems
    return check


def manifest_config(**expected):
    def check(outcome) -> list[str]:
        config = outcome.manifest()["config"]
        return [f"manifest config {key}={config.get(key)!r}, expected {value!r}"
                for key, value in expected.items() if config.get(key) != value]
    return check


def last_round(rounds: int):
    def check(outcome) -> list[str]:
        got = int(last_row(outcome)["round"])
        return [] if got == rounds else [f"last round {got}, expected {rounds}"]
    return check


def all_of(*checks):
    def check(outcome, *reference) -> list[str]:
        return [problem for one in checks for problem in one(outcome, *reference)]
    return check


def chmod(path: str, mode: int):
    def setup(directory) -> None:
        os.chmod(directory / path, mode)
    return setup


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------

CASES: list[Case] = []


def case(name: str, args: tuple, expect, **options) -> None:
    CASES.append(Case(name, tuple(args), expect, **options))


def bad(name: str, args: tuple, **options) -> None:
    """A case of bad input: exit 2, one line, nothing written."""
    case(name, args, 2, **options)


D_SVM = {"d.svm": GOOD_SVM}
D_CSV = {"d.csv": GOOD_CSV}

# 1. Command-line options -------------------------------------------------------------------------
bad("cli.unknown-algorithm", ("train", "sgdx"), stderr=("sgdx",))
bad("cli.unknown-option", T("--bogus", "1"), stderr=(opt("--bogus"),))
bad("cli.unknown-command", ("trian", "ssgd"))
bad("cli.option-missing-value", T("--lam"))
for value in ("nan", "inf", "-inf", "-1"):
    bad(f"cli.lam={value}", T("--lam", value), stderr=(opt("--lam"),))
bad("cli.l1-ratio=nan", T("--reg", "elastic", "--l1-ratio", "nan"), stderr=(opt("--l1-ratio"),))
bad("cli.l1-ratio=2", T("--reg", "elastic", "--l1-ratio", "2"), stderr=(opt("--l1-ratio"),))
for value in ("nan", "inf", "0", "-1"):
    bad(f"cli.time-limit={value}", T("--time-limit", value), stderr=(opt("--time-limit"),))
for value in ("nan", "1", "-0.1", "inf"):
    bad(f"cli.test-fraction={value}", T("--test-fraction", value), stderr=(opt("--test-fraction"),))
for value in ("nan", "inf", "0", "-1", "-inf"):
    bad(f"cli.lr={value}", T("--lr", value), stderr=(opt("--lr"),))
for value in ("0", "-1", "2.5"):
    bad(f"cli.workers={value}", T("--workers", value), stderr=(opt("--workers"),))
for value in ("0", "-1", "2.5", "1e3"):
    bad(f"cli.rounds={value}", T("--rounds", value), stderr=(opt("--rounds"),))
for value in ("0", "-3", "1.5", "nan"):
    bad(f"cli.batch-size={value}", T("--batch-size", value), stderr=(opt("--batch-size"),))
bad("cli.eval-every=0", T("--eval-every", "0"), stderr=(opt("--eval-every"),))
bad("cli.seed=-1", T("--seed", "-1"), stderr=(opt("--seed"),))
bad("cli.blas-threads=0", T("--blas-threads", "0"), stderr=(opt("--blas-threads"),))
bad("cli.loss=hinge", T("--loss", "hinge"), stderr=(opt("--loss"),))
bad("cli.reg=l3", T("--reg", "l3"), stderr=(opt("--reg"),))
bad("cli.progress=loud", T("--progress", "loud"), stderr=(opt("--progress"),))
bad("cli.crash=9@5-with-2-workers", T("--workers", "2", "--crash", "9@5"), stderr=("9",),
    note="rank out of range must be bad input")
for value in ("1@", "@3", "x@y", "1@2@3", "-1@3"):
    bad(f"cli.crash={value}", T("--crash", value), stderr=(opt("--crash"),))
bad("cli.test-data-and-fraction", T("--data", "d.svm", "--test-data", "t.svm", "--test-fraction", "0.1"),
    files={"d.svm": GOOD_SVM, "t.svm": GOOD_SVM}, stderr=(opt("--test-fraction"),))
for value in ("dirichlet:-1", "dirichlet:abc", "nope", "dirichlet:nan", "dirichlet:inf", "dirichlet:"):
    bad(f"cli.partition={value}", T("--partition", value), stderr=("partition",))
bad("cli.save-model-not-npy", T("--save-model", "w.txt"), stderr=(opt("--save-model"),))
bad("cli.save-model-empty", T("--save-model", ""), stderr=(opt("--save-model"),))
bad("cli.data-empty", T("--data", ""))

# 2. Outputs ----------------------------------------------------------------------------------------
bad("out.no-extension", T("--out", "results.txt"), stderr=(opt("--out"),))
bad("out.empty", T("--out", ""), stderr=(opt("--out"),))
bad("out.under-regular-file", T("--out", "file.txt/x.csv"), files={"file.txt": "keep\n"}, stderr=("file.txt",))
bad("out.dir-is-a-file", T("--out", "res/"), files={"res": "keep\n"}, stderr=("res",))
bad("out.read-only-dir", T("--out", "ro/run.csv"), files={"ro": DIR}, setup=chmod("ro", 0o555),
    root_skip="root writes into a 555 directory")
bad("out.is-data-file-force", T("--data", "d.csv", "--out", "d.csv", "--force"), files=D_CSV, stderr=("d.csv",))
bad("out.is-test-data-file-force", T("--data", "d.csv", "--test-data", "t.csv", "--out", "t.csv", "--force"),
    files={"d.csv": GOOD_CSV, "t.csv": GOOD_CSV}, stderr=("t.csv",))
bad("out.symlink-to-data-force", T("--data", "d.csv", "--out", "link.csv", "--force"),
    files={"d.csv": GOOD_CSV, "link.csv": Symlink("d.csv")})
bad("out.hardlink-to-data-force", T("--data", "d.csv", "--out", "link.csv", "--force"),
    files={"d.csv": GOOD_CSV, "link.csv": Hardlink("d.csv")})
bad("out.exists-no-force", T("--out", "run.csv"), files={"run.csv": "precious\n"}, stderr=(opt("--force"),))
bad("out.manifest-exists-no-force", T("--out", "run.csv"), files={"run.json": "{}\n"}, stderr=("run.json",))
bad("model.exists-no-force", T("--save-model", "m.npy"), files={"m.npy": npy_bytes(np.zeros(31))},
    stderr=(opt("--save-model"),), note="message names --save-model")
case("model.missing-dir", T("--save-model", "nodir/m.npy"), (0, 2), check=model_file("nodir/m.npy", 31),
     note="accepted: created and written, or refused before the run")
bad("model.symlink-to-data-force", T("--data", "d.svm", "--save-model", "m.npy", "--force"),
    files={"d.svm": GOOD_SVM, "m.npy": Symlink("d.svm")})
bad("model.hardlink-to-test-data-force", T("--data", "d.svm", "--test-data", "t.svm", "--save-model", "m.npy", "--force"),
    files={"d.svm": GOOD_SVM, "t.svm": GOOD_SVM, "m.npy": Hardlink("t.svm")})
bad("model.is-directory", T("--save-model", "m.npy"), files={"m.npy": DIR}, stderr=("m.npy",))
bad("model.under-regular-file", T("--save-model", "f/m.npy"), files={"f": "keep\n"})
bad("model.read-only-dir", T("--save-model", "ro/m.npy"), files={"ro": DIR}, setup=chmod("ro", 0o555),
    root_skip="root writes into a 555 directory")
bad("model.same-file-as-out-force", T("--out", "run.csv", "--save-model", "m.npy", "--force"),
    files={"run.csv": "old\n", "m.npy": Symlink("run.csv")})
case("out.force-overwrites", T("--out", "run.csv", "--force"), 0, files={"run.csv": "old\n"}, may_change=("run.csv",),
     note="accepted: --force replaces the old CSV")
case("out.directory-slash", T("--out", "res/"), 0, note="accepted: res/<run_id>.csv")
case("model.saved", T("--save-model", "m.npy"), 0, check=model_file("m.npy", 31), note="accepted: 30 features + intercept")

# 3. Recipes and --set ------------------------------------------------------------------------------
bad("recipe.invalid-toml", T("--recipe", "r.toml"), files={"r.toml": "rounds = [\n"}, stderr=("r.toml",))
bad("recipe.invalid-utf8", T("--recipe", "r.toml"), files={"r.toml": b'rounds = 5\nout = "\xff\xfe.csv"\n'},
    stderr=("r.toml",))
bad("recipe.directory", T("--recipe", "r.toml"), files={"r.toml": DIR}, stderr=("r.toml",))
bad("recipe.missing", T("--recipe", "nowhere.toml"), stderr=("nowhere.toml",))
bad("recipe.fifo", T("--recipe", "r.toml"), files={"r.toml": Fifo()}, max_seconds=20, note="must not block on a FIFO")
for name, text in (("rounds=2.7", "rounds = 2.7\n"), ("rounds=true", "rounds = true\n"), ('rounds="5"', 'rounds = "5"\n'),
                   ("rounds=1e3", "rounds = 1e3\n"), ("lam=[1,2]", "lam = [1, 2]\n"), ("lam=date", "lam = 1979-05-27\n"),
                   ("lam=nan", "lam = nan\n"), ("lam=inf", "lam = inf\n"), ("lam=table", "lam = {value = 1}\n"),
                   ("workers=0", "workers = 0\n"), ("force=1", "force = 1\n")):
    bad(f"recipe.{name}", T("--recipe", "r.toml"), files={"r.toml": text}, stderr=("r.toml",))
bad("recipe.out=5", T("--recipe", "r.toml"), files={"r.toml": "out = 5\n"}, stderr=(("r.toml", "--out"),))
bad("recipe.unknown-key", T("--recipe", "r.toml"), files={"r.toml": "learning_rate = 0.1\n"}, stderr=("learning_rate",))
bad("recipe.duplicate-spellings", T("--recipe", "r.toml"), files={"r.toml": "batch-size = 8\nbatch_size = 16\n"},
    stderr=("batch",))
bad("recipe.other-algorithm", T("--recipe", "r.toml"), files={"r.toml": 'algorithm = "asgd"\n'}, stderr=("asgd",))
bad("recipe.algorithm=3", T("--recipe", "r.toml"), files={"r.toml": "algorithm = 3\n"}, stderr=("r.toml",))
bad("recipe.table", T("--recipe", "r.toml"), files={"r.toml": "[ssgd]\nrounds = 5\n"}, stderr=("ssgd",))
bad("recipe.data-missing", T("--recipe", "r.toml"), files={"r.toml": 'data = "nowhere.svm"\n'}, stderr=("nowhere.svm",))
case("recipe.batch-size=all", T("--recipe", "r.toml"), 0, files={"r.toml": 'batch-size = "all"\nlam = 0.01\n'},
     check=manifest_config(batch_size=None, lam=0.01), note="accepted")
case("recipe.good", T("--recipe", "r.toml"), 0, files={"r.toml": 'algorithm = "ssgd"\nrounds = 4\nreg = "elastic"\n'},
     check=all_of(last_round(4), manifest_config(reg="elastic")), note="accepted: recipe values used")
bad("set.no-equals", T("--set", "lr"), stderr=(opt("--set"),))
bad("set.empty-key", T("--set", "=5"), stderr=(opt("--set"),))
bad("set.unknown-key", T("--set", "nope=1"), stderr=("nope",))
bad("set.algorithm", T("--set", "algorithm=asgd"), stderr=("algorithm",))
for pair in ("rounds=2.5", "rounds=", "lam=nan", "lam=inf", "time_limit=nan", "lr=inf", "workers=0"):
    bad(f"set.{pair}", T("--set", pair), stderr=(opt(pair.partition("=")[0]),))
bad("set.crash=9@5-with-2-workers", T("--workers", "2", "--set", "crash=9@5"), stderr=("9",))
bad("set.duplicate-spellings", T("--set", "batch-size=8", "--set", "batch_size=16"), stderr=("batch",))
case("set.lam=0.5", T("--set", "lam=0.5"), 0, check=manifest_config(lam=0.5), note="accepted")

# 4. LIBSVM files -----------------------------------------------------------------------------------
for name, line in (("malformed-token", "+1 1:0.5 abc"), ("label-not-number", "yes 1:0.5"),
                   ("negative-index", "+1 -1:0.5"), ("descending-indices", "+1 3:0.5 2:0.1"),
                   ("repeated-index", "+1 2:0.5 2:0.1"), ("index-1_0", "+1 1_0:0.5"), ("value-1_0.5", "+1 1:1_0.5"),
                   ("label-1_0", "1_0 1:0.5"), ("qid", "+1 qid:3 1:0.5"), ("nul-byte", "+1 1:0.5\x00 2:0.1"),
                   ("value-nan", "+1 1:nan"), ("value-inf", "+1 1:inf"), ("value-overflow", "+1 1:1e400"),
                   ("label-nan", "nan 1:0.5"), ("missing-value", "+1 1:"), ("double-colon", "+1 1:2:3"),
                   ("index-float", "+1 1.5:0.2"), ("value-hex", "+1 1:0x10")):
    bad(f"svm.{name}", T("--data", "d.svm"), files={"d.svm": svm(line)}, stderr=("d.svm:3",))
bad("svm.invalid-utf8", T("--data", "d.svm"), files={"d.svm": svm("+1 1:@@").encode().replace(b"@@", b"\xff\xfe")},
    stderr=("d.svm:3",))
bad("svm.cr-only-line-endings", T("--data", "d.svm"), files={"d.svm": svm(eol="\r")}, stderr=(CR_FRAGMENTS,),
    note="message must name the line endings")
bad("svm.empty-file", T("--data", "d.svm"), files={"d.svm": ""}, stderr=("d.svm",))
bad("svm.only-comments", T("--data", "d.svm"), files={"d.svm": "# nothing\n\n# here\n"}, stderr=("d.svm",))
bad("svm.no-features", T("--data", "d.svm"), files={"d.svm": "+1\n-1\n+1\n-1\n"}, stderr=("d.svm",))
bad("svm.one-label-logistic", T("--data", "d.svm"), files={"d.svm": svm(labels=[1])}, stderr=("label",))
bad("svm.three-labels-logistic", T("--data", "d.svm"), files={"d.svm": svm(labels=[1, -1, 2])}, stderr=("label",))
bad("svm.index-1e8", T("--data", "d.svm"), files={"d.svm": svm("+1 1:0.5 100000000:0.5")}, stderr=("model",),
    max_seconds=20, note="an 800 MB model refused quickly")
bad("svm.index-1e9", T("--data", "d.svm"), files={"d.svm": svm("+1 1:0.5 1000000000:0.5")}, stderr=("model",),
    max_seconds=20, note="an 8 GB model refused quickly")
bad("svm.index-1e30", T("--data", "d.svm"), files={"d.svm": svm("+1 1:0.5 1" + "0" * 30 + ":0.5")}, max_seconds=20)
bad("svm.directory", T("--data", "x.svm"), files={"x.svm": DIR}, stderr=("x.svm",))
bad("svm.fifo", T("--data", "x.svm"), files={"x.svm": Fifo()}, stderr=("x.svm",), max_seconds=20,
    note="must not block on a FIFO")
bad("svm.dot-svm-missing", T("--data", ".svm"), stderr=(".svm",))
bad("svm.missing", T("--data", "nowhere.svm"), stderr=("nowhere.svm",))
bad("svm.unreadable", T("--data", "d.svm"), files=D_SVM, setup=chmod("d.svm", 0o000),
    root_skip="root reads a mode-000 file")
bad("svm.unsupported-extension", T("--data", "d.txt"), files={"d.txt": GOOD_SVM}, stderr=("d.txt",))
case("svm.crlf", T("--data", "d.svm"), 0, files={"d.svm": svm(eol="\r\n")}, note="accepted")
case("svm.zero-based", T("--data", "d.svm"), 0,
     files={"d.svm": GOOD_SVM.replace(" 1:", " 0:").replace(" 2:", " 1:").replace(" 3:", " 2:")}, note="accepted: indices from 0")
case("svm.comments-and-blank-lines", T("--data", "d.svm"), 0,
     files={"d.svm": "# header comment\n\n" + GOOD_SVM.replace("\n", "  # note\n", 3) + "\n\n"}, note="accepted")
case("svm.squared-three-labels", T("--data", "d.svm", "--loss", "squared"), 0,
     files={"d.svm": svm(labels=[1, -1, 2])}, note="accepted: regression")

# 5. CSV files --------------------------------------------------------------------------------------
WIDE_HEADER = ",".join(f"feature_{i}" for i in range(5000))
WIDE_ROWS = [",".join([str(i % 2)] + ["0.5"] * 4999) for i in range(6)]
case("csv.no-label-column-5000-columns", T("--data", "d.csv"), (0, 2), files={"d.csv": "\n".join([WIDE_HEADER, *WIDE_ROWS]) + "\n"},
     max_stderr_chars=300, note="README: else the first column; a refusal must be one short line")
bad("csv.field-count", T("--data", "d.csv"), files={"d.csv": csv_text("1,0.5,0.3,0.2,9")}, stderr=("d.csv:3",))
bad("csv.empty-field", T("--data", "d.csv"), files={"d.csv": csv_text("1,,0.3,0.2")}, stderr=("d.csv:3",))
bad("csv.non-numeric-field", T("--data", "d.csv"), files={"d.csv": csv_text("1,abc,0.3,0.2")}, stderr=("d.csv:3",))
bad("csv.nan-field", T("--data", "d.csv"), files={"d.csv": csv_text("1,nan,0.3,0.2")}, stderr=("d.csv:3",))
bad("csv.inf-label", T("--data", "d.csv"), files={"d.csv": csv_text("inf,0.1,0.3,0.2")}, stderr=("d.csv:3",))
bad("csv.only-label-column", T("--data", "d.csv"), files={"d.csv": "label\n1\n0\n1\n0\n"}, stderr=("d.csv",))
bad("csv.cr-only-line-endings", T("--data", "d.csv"), files={"d.csv": csv_text(eol="\r")},
    stderr=(CR_FRAGMENTS,), note="message must name the line endings")
case("csv.quoted-numbers", T("--data", "d.csv"), (0, 2),
     files={"d.csv": "\n".join(['"label","a","b","c"'] + [",".join(f'"{v}"' for v in r.split(",")) for r in csv_rows()]) + "\n"},
     note="accepted either way: read as numbers, or refused in one line")
bad("csv.header-only", T("--data", "d.csv"), files={"d.csv": "label,a,b,c\n"}, stderr=("d.csv",))
bad("csv.two-label-columns", T("--data", "d.csv"), files={"d.csv": csv_text(header="label,y,b,c")}, stderr=("d.csv",))
bad("csv.semicolons", T("--data", "d.csv"), files={"d.csv": csv_text().replace(",", ";")}, stderr=("d.csv",))
bad("csv.test-width-mismatch", T("--data", "d.csv", "--test-data", "t.csv"),
    files={"d.csv": GOOD_CSV, "t.csv": "\n".join(r.rsplit(",", 1)[0] for r in GOOD_CSV.splitlines()) + "\n"},
    stderr=("t.csv",))
case("csv.bom-and-header", T("--data", "d.csv"), 0, files={"d.csv": "\ufeff" + GOOD_CSV}, note="accepted")
case("csv.no-header", T("--data", "d.csv"), 0, files={"d.csv": csv_text(header=None)}, note="accepted: label first")

# 6. NPZ archives -----------------------------------------------------------------------------------
bad("npz.not-a-zip", T("--data", "d.npz"), files={"d.npz": b"this is not a zip archive\n"}, stderr=("d.npz",))
bad("npz.empty-file", T("--data", "d.npz"), files={"d.npz": b""}, stderr=("d.npz",))
bad("npz.x-missing", T("--data", "d.npz"), files={"d.npz": Npz({"y": Y20})}, stderr=("d.npz",))
bad("npz.y-missing", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20})}, stderr=("d.npz",))
bad("npz.y-wrong-length", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": Y20[:-3]})}, stderr=("d.npz",))
bad("npz.x-3d", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20.reshape(20, 3, 1), "y": Y20})}, stderr=("d.npz",))
bad("npz.x-no-rows", T("--data", "d.npz"), files={"d.npz": Npz({"X": np.zeros((0, 3)), "y": np.zeros(0)})}, stderr=("d.npz",))
bad("npz.x-object-dtype", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20.astype(object), "y": Y20})}, stderr=("d.npz",))
bad("npz.y-object-dtype", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": Y20.astype(object)})}, stderr=("d.npz",))
bad("npz.x-strings", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20.astype(str), "y": Y20})}, stderr=("d.npz",))
bad("npz.format-object-array", T("--data", "d.npz"),
    files={"d.npz": Npz({**CSR20, "format": np.array(["csr"], dtype=object)})}, stderr=("d.npz",))
bad("npz.format-csc", T("--data", "d.npz"), files={"d.npz": Npz({**CSR20, "format": np.array(b"csc")})}, stderr=("d.npz",))
bad("npz.x-nan", T("--data", "d.npz"), files={"d.npz": Npz({"X": np.where(np.eye(20, 3) > 0, np.nan, X20), "y": Y20})},
    stderr=("d.npz",))
bad("npz.y-inf", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": np.append(Y20[:-1], np.inf)})}, stderr=("d.npz",))
bad("npz.x-fortran-order", T("--data", "d.npz"), files={"d.npz": Npz({"X": np.asfortranarray(X20), "y": Y20})},
    stderr=("d.npz",))
bad("npz.csr-index-out-of-range", T("--data", "d.npz"),
    files={"d.npz": Npz({**CSR20, "indices": np.where(np.arange(CSR20["indices"].size) == 5, 99, CSR20["indices"])})},
    stderr=("d.npz",))
bad("npz.csr-bad-indptr", T("--data", "d.npz"), files={"d.npz": Npz({**CSR20, "indptr": CSR20["indptr"][::-1].copy()})},
    stderr=("d.npz",))
bad("npz.encrypted-member", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": Y20}, patch_member="X", flag_bits=1)},
    stderr=("d.npz",))
bad("npz.deflate64-member", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": Y20}, patch_member="X", method=9)},
    stderr=("d.npz",))
bad("npz.unknown-compression-member", T("--data", "d.npz"),
    files={"d.npz": Npz({"X": X20, "y": Y20}, patch_member="y", method=99)}, stderr=("d.npz",))
bad("npz.truncated", T("--data", "d.npz"), files={"d.npz": Npz({"X": X20, "y": Y20}, keep_fraction=0.6)}, stderr=("d.npz",))
bad("npz.member-short", T("--data", "d.npz"), files={"d.npz": Npz({"X": npy_bytes(X20)[:-80], "y": Y20})}, stderr=("d.npz",))
bad("npz.member-garbage", T("--data", "d.npz"), files={"d.npz": Npz({"X": b"garbage" * 20, "y": Y20})}, stderr=("d.npz",))
case("npz.dense-compressed", T("--data", "d.npz"), 0, files={"d.npz": Npz({"X": X20, "y": Y20}, compressed=True)},
     note="accepted")
case("npz.csr", T("--data", "d.npz"), 0, files={"d.npz": Npz({**CSR20, "format": np.array(b"csr")})}, note="accepted")

# 7. Data-dependent impossibilities -----------------------------------------------------------------
ZERO_CSV = "label,a,b\n" + "".join(f"{i % 2},0,0\n" for i in range(20))
bad("data.all-zero-features-lam-0", T("--data", "d.csv", "--lam", "0", "--no-fit-intercept"), files={"d.csv": ZERO_CSV},
    note="nothing to learn, no step size")
case("data.huge-column-standardized", T("--data", "d.csv", "--batch-size", "all", "--rounds", "30"), 0,
     files={"d.csv": blobs_csv(1e200)},
     reference=Run(T("--data", "d.csv", "--batch-size", "all", "--rounds", "30"), {"d.csv": blobs_csv(1.0)}),
     check=close_test_metric(0.05), note="learns as at unit scale")
bad("data.huge-column-raw", T("--data", "d.csv", "--no-standardize"), files={"d.csv": blobs_csv(1e200)},
    note="must not silently learn nothing")
bad("data.more-workers-than-samples", T("--data", "d.csv", "--workers", "3"),
    files={"d.csv": "label,a\n0,0.1\n1,0.9\n0,0.2\n"}, stderr=("workers",))
bad("data.synthetic-d=1e11", T("--data", "synthetic:d=100000000000"), stderr=("model",), max_seconds=20)
bad("data.synthetic-n=1e14", T("--data", "synthetic:n=100000000000000,d=5"), max_seconds=20)
for spec in ("n=0", "kind=nope", "d=-1", "noise=nan", "density=0", "n=10,n=20", "speed=3", "n=1e3"):
    bad(f"data.synthetic-{spec}", T("--data", f"synthetic:{spec}"), stderr=("synthetic",))
bad("data.digits-logistic", T("--data", "digits"), stderr=("label",))
case("data.synthetic", T("--data", "synthetic:n=200,d=5"), 0, note="accepted")
case("data.no-test-split", T("--test-fraction", "0"), 0, note="accepted: no test columns")

# 8. LIBSVM training and test files agree on the index base ----------------------------------------
TEST_SVM = svm(n=10)
case("agree.test-file-with-0:0", T("--data", "d.svm", "--test-data", "t.svm"), 0,
     files={"d.svm": GOOD_SVM, "t.svm": TEST_SVM.replace("1:", "0:0 1:", 1)},
     reference=Run(T("--data", "d.svm", "--test-data", "t.svm"), {"d.svm": GOOD_SVM, "t.svm": TEST_SVM}),
     check=same_columns("objective", "train_loss", "test_loss", "test_metric"),
     note="same run as without the 0:0 token")

# 9. Messages say which data --------------------------------------------------------------------------
bad("msg.unseen-test-label", T("--data", "d.svm", "--test-data", "t.svm"),
    files={"d.svm": GOOD_SVM, "t.svm": svm("+5 1:0.5", n=10)}, stderr=("t.svm",))
bad("msg.training-data-one-label", T("--data", "d.svm", "--test-data", "t.svm"),
    files={"d.svm": svm(labels=[1]), "t.svm": svm(n=10)}, stderr=("training", "d.svm"))
bad("msg.training-split-one-label", T("--data", "d.svm", "--test-fraction", "0.5"),
    files={"d.svm": "+1 1:0.5\n-1 1:0.1\n"}, stderr=("training",))

# 10. Crashes ---------------------------------------------------------------------------------------
case("crash.worker-1@3", T("--workers", "2", "--crash", "1@3"), 1, crash_rank=1)
case("crash.server-0@3", T("--workers", "2", "--crash", "0@3"), 1, crash_rank=0)
case("crash.worker-2@0", T("--workers", "2", "--crash", "2@0"), (1, 2), crash_rank=2,
     note="steps count from 1: crash at the start, or refuse step 0; never ignore it")
case("crash.asgd-worker-2@3", T("--workers", "2", "--crash", "2@3", algo="asgd"), 1, crash_rank=2)
case("crash.never-reached", T("--workers", "2", "--crash", "1@1000"), (0, 2),
     note="accepted (the step never comes) or refused as beyond --rounds")

# Runs that must be accepted ------------------------------------------------------------------------
case("run.asgd-2-workers", T("--workers", "2", algo="asgd"), 0, note="accepted")
case("run.ssgd-2-workers-batch-all", T("--workers", "2", "--batch-size", "all"), 0, note="accepted")
case("run.huge-rounds-with-time-limit", T("--rounds", "10000000000000000000000", "--time-limit", "2"), (0, 2),
     max_seconds=30, note="accepted or refused, but ends")

# 11. The synchronous family's hyper-parameters -------------------------------------------------------
bad("algo.easgd-beta-at-least-1", T("--workers", "2", "--lr", "0.5", "--rho", "1", algo="easgd"), stderr=(opt("--rho"),))
bad("algo.easgd-rho-negative", T("--rho", "-1", algo="easgd"), stderr=(opt("--rho"),))
bad("algo.bmuf-momentum-1", T("--block-momentum", "1", algo="bmuf"), stderr=(opt("--block-momentum"),))
bad("algo.bmuf-block-lr-nan", T("--block-lr", "nan", algo="bmuf"), stderr=(opt("--block-lr"),))
bad("algo.storm-momentum-0", T("--momentum", "0", algo="storm"), stderr=(opt("--momentum"),))
bad("algo.dadam-beta2-1.5", T("--beta2", "1.5", algo="dadam"), stderr=(opt("--beta2"),))
bad("algo.ma-local-steps-0", T("--local-steps", "0", algo="ma"), stderr=(opt("--local-steps"),))
bad("algo.ma-param-for-ssgd", T("--local-steps", "3"), stderr=(opt("--local-steps"),))
for algo in ("ma", "bmuf", "easgd", "dadam", "storm"):
    case(f"run.{algo}-2-workers", T("--workers", "2", algo=algo), 0, note="accepted")

# 12. Compressed messages, the newer algorithms, heterogeneity ------------------------------------------
for spec in ("topk:0", "topk:2", "topk:nan", "randk:-0.1", "qsgd:0", "qsgd:1.5", "sign:3", "filter:inf", "zip", ""):
    bad(f"compress.ssgd-{spec or 'empty'}", T("--compressor", spec), stderr=(opt("--compressor"),))
bad("compress.feedback-with-randk", T("--compressor", "randk:0.5", "--error-feedback", algo="ma"),
    stderr=("unbiased",))
bad("compress.feedback-without-compressor", T("--error-feedback"), stderr=("--compressor",))
bad("compress.with-overlap", T("--compressor", "sign", "--overlap"), stderr=("overlap",))
bad("compress.diana-biased", T("--compressor", "topk:0.5", algo="diana"), stderr=("unbiased",))
bad("algo.admm-rho-0", T("--rho", "0", algo="admm"), stderr=(opt("--rho"),))
bad("algo.admm-minibatch", T("--batch-size", "16", algo="admm"), stderr=("batch",))
bad("algo.giant-l1", T("--reg", "l1", algo="giant"), stderr=("l1",))
bad("algo.giant-cg-iters-0", T("--cg-iters", "0", algo="giant"), stderr=(opt("--cg-iters"),))
bad("algo.ssgd-backup-too-many", T("--workers", "2", "--backup", "2"), stderr=(opt("--backup"),))
bad("algo.ssp-negative-bound", T("--staleness-bound", "-1", algo="ssp"), stderr=(opt("--staleness-bound"),))
bad("algo.aeasgd-period-0", T("--period", "0", algo="aeasgd"), stderr=(opt("--period"),))
bad("algo.dpsgd-unknown-topology", T("--topology", "star", algo="dpsgd"), stderr=(opt("--topology"),))
bad("algo.dpsgd-torus-of-3", T("--workers", "3", "--topology", "torus", algo="dpsgd"), stderr=("torus",))
for spec in ("const:1,2", "const:0.5,1", "exp:-1", "exp:nan", "lognormal:0", "straggler:0.1,5", "straggler:0.5,0.5", "warp:2"):
    bad(f"hetero.delay-{spec}", T("--workers", "4", "--delay", spec), stderr=(opt("--delay"),))
for spec in ("5g", "10", "10,0", "-1,10", "nan,10"):
    bad(f"hetero.network-{spec}", T("--network", spec), stderr=(opt("--network"),))
for value in ("1", "-0.1", "nan"):
    bad(f"hetero.dropout={value}", T("--dropout", value), stderr=(opt("--dropout"),))
bad("hetero.dropout-easgd", T("--dropout", "0.2", algo="easgd"), stderr=(opt("--dropout"),))
for algo in ("admm", "giant", "diana", "ssp", "aeasgd", "dpsgd"):
    case(f"run.{algo}-2-workers", T("--workers", "2", algo=algo), 0, note="accepted")
case("run.ssgd-topk-feedback", T("--workers", "2", "--compressor", "topk:0.2", "--error-feedback"), 0, note="accepted")
case("run.ssgd-straggler-dropout", T("--workers", "2", "--delay", "const:1,2", "--dropout", "0.2"), 0, note="accepted")

# 13. compare, plot, sweep: bad input -----------------------------------------------------------------
NOT_A_LOG = {"x.csv": "a,b\n1,2\n"}
bad("compare.missing-file", ("compare", "missing.csv"), stderr=("missing.csv",))
bad("compare.not-a-log", ("compare", "x.csv"), files=NOT_A_LOG, stderr=("x.csv",))
bad("plot.missing-file", ("plot", "missing.csv", "-o", "p.png"), stderr=("missing.csv",))
bad("plot.not-a-log", ("plot", "x.csv", "-o", "p.png"), files=NOT_A_LOG, stderr=("x.csv",))
bad("sweep.missing-recipe", ("sweep", "missing.toml"), stderr=("missing.toml",))
bad("sweep.bad-list-value", ("sweep", "s.toml", "--dry-run"), files={"s.toml": 'algorithm = "ssgd"\nrounds = [1, 2.5]\n'},
    stderr=("rounds",))
