"""Recipes and --set on their own: TOML types against option types, files that cannot be read,
options given twice, and the values that stand for none."""

import pytest

from dmlcli import recipe as recipe_module
from dmlcli.algorithms import REGISTRY
from dmlcli.errors import UsageError
from dmlcli.recipe import load_recipe, recipe_options, set_options
from dmlcli.runtime.config import SHARED_OPTIONS

ASGD_OPTIONS = {p.name: p for p in (*SHARED_OPTIONS, *REGISTRY["asgd"].params)}


@pytest.fixture
def write(tmp_path):
    """Write a recipe and return its path."""

    def make(text: str | bytes) -> str:
        path = tmp_path / "r.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return str(path)

    return make


def read(path: str) -> dict:
    return recipe_options(path, ASGD_OPTIONS, "asgd")


@pytest.mark.parametrize("text,expected", [
    ("rounds = 5", {"rounds": 5}),
    ("lam = 1", {"lam": 1.0}),
    ("lam = 0.25", {"lam": 0.25}),
    ('batch-size = "all"', {"batch_size": None}),
    ("batch_size = 8", {"batch_size": 8}),
    ('lr = "auto"', {"lr": None}),
    ("lr = 1", {"lr": 1.0}),
    ("force = true", {"force": True}),
    ("standardize = false", {"standardize": False}),
    ('loss = "squared"', {"loss": "squared"}),
    ('crash = "1@2"', {"crash": (1, 2)}),
    ('eval_every = "none"', {"eval_every": None}),
    ('max_staleness = "None"', {"max_staleness": None}),
    ("max_staleness = 0", {"max_staleness": 0}),
    ("max-model-mb = 12", {"max_model_mb": 12.0}),
    ('algorithm = "asgd"\nrounds = 9223372036854775807', {"rounds": 2**63 - 1}),
])
def test_recipe_values_of_the_right_toml_type_are_converted(write, text, expected):
    converted = read(write(text + "\n"))
    assert converted == expected
    assert [type(v) for v in converted.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("text,message", [
    ("rounds = 2.7", "'rounds' must be an integer, got a float (2.7)"),
    ("rounds = 3.0", "'rounds' must be an integer, got a float (3.0)"),
    ("rounds = true", "'rounds' must be an integer, got a boolean (true)"),
    ('rounds = "5"', "'rounds' must be an integer, got a string (\"5\")"),
    ("rounds = [5]", "'rounds' must be an integer, got a list"),
    ("rounds = {n = 5}", "'rounds' must be an integer, got a table"),
    ("rounds = 1979-05-27", "'rounds' must be an integer, got a date (1979-05-27)"),
    ("rounds = 07:32:00", "'rounds' must be an integer, got a time (07:32:00)"),
    ("seed = false", "'seed' must be an integer, got a boolean (false)"),
    ("lam = true", "'lam' must be a number, got a boolean (true)"),
    ('lam = "0.1"', "'lam' must be a number, got a string (\"0.1\")"),
    ('time_limit = "60"', "'time_limit' must be a number or \"none\", got a string (\"60\")"),
    ('force = "yes"', "'force' must be true or false, got a string (\"yes\")"),
    ("force = 1", "'force' must be true or false, got an integer (1)"),
    ("loss = true", "'loss' must be one of \"logistic\", \"squared\", got a boolean (true)"),
    ("data = 5", "'data' must be a string, got an integer (5)"),
    ("data = 1979-05-27T07:32:00", "'data' must be a string, got a date-time (1979-05-27T07:32:00)"),
    ('batch_size = "8"', "'batch_size' must be a positive integer or \"all\", got a string (\"8\")"),
    ("batch_size = 8.0", "'batch_size' must be a positive integer or \"all\", got a float (8.0)"),
    ("batch_size = true", "'batch_size' must be a positive integer or \"all\", got a boolean (true)"),
    ('lr = "0.1"', "'lr' must be a positive number or \"auto\", got a string (\"0.1\")"),
    ("crash = 12", "'crash' must be a \"RANK@STEP\" string or \"none\", got an integer (12)"),
    ("eval_every = 2.5", "'eval_every' must be an integer or \"none\", got a float (2.5)"),
    ("max_staleness = 3.0", "'max_staleness' must be an integer or \"none\", got a float (3.0)"),
    ("staleness_lr = 1", "'staleness_lr' must be one of \"constant\", \"inverse\", got an integer (1)"),
    ("algorithm = 5", "'algorithm' must be a string, got an integer (5)"),
    ('algorithm = ["asgd"]', "'algorithm' must be a string, got a list"),
])
def test_a_recipe_value_of_the_wrong_toml_type_is_refused(write, text, message):
    path = write(text + "\n")
    with pytest.raises(UsageError) as error:
        read(path)
    assert str(error.value) == f"recipe {path}: {message}"


@pytest.mark.parametrize("text,message", [
    ("rounds = 0", "invalid value for 'rounds': 0 is not in the range x>=1."),
    ("rounds = 99999999999999999999999", "invalid value for 'rounds': 99999999999999999999999 does not fit in a 64-bit integer"),
    ("seed = -1", "invalid value for 'seed'"),
    ("lam = nan", "invalid value for 'lam': nan is not a finite number"),
    ("lam = inf", "invalid value for 'lam': inf is not a finite number"),
    ("lam = 1e999", "invalid value for 'lam': inf is not a finite number"),
    ("l1_ratio = nan", "invalid value for 'l1_ratio': nan is not a finite number"),
    ("time_limit = nan", "invalid value for 'time_limit': nan is not a finite number"),
    ("test_fraction = nan", "invalid value for 'test_fraction': nan is not a finite number"),
    ("max_model_mb = inf", "invalid value for 'max_model_mb': inf is not a finite number"),
    ("max_model_mb = 0", "invalid value for 'max_model_mb'"),
    ("lr = nan", "invalid value for 'lr'"),
    ("lr = -1", "invalid value for 'lr'"),
    ("batch_size = 0", "invalid value for 'batch_size'"),
    ('crash = "1@"', "invalid value for 'crash'"),
    ('crash = ""', "invalid value for 'crash'"),
    ('loss = "Logistic"', "invalid value for 'loss'"),
])
def test_a_recipe_value_of_the_right_type_but_impossible_is_refused(write, text, message):
    path = write(text + "\n")
    with pytest.raises(UsageError, match="^recipe .*: " + message.replace("(", r"\(").replace(")", r"\)")):
        read(path)


def test_an_option_given_twice_in_a_recipe_is_refused_naming_both_spellings(write):
    path = write("batch-size = 8\nbatch_size = 16\n")
    with pytest.raises(UsageError) as error:
        read(path)
    assert str(error.value) == f"recipe {path}: 'batch-size' and 'batch_size' both give batch_size; give it once"
    with pytest.raises(UsageError, match="'max_staleness' and 'max-staleness' both give max_staleness"):
        read(write("max_staleness = 1\nmax-staleness = 1\n"))


def test_a_table_in_a_recipe_is_named_as_one(write):
    with pytest.raises(UsageError, match=r"unknown key 'asgd' \(a \[asgd\] table; a recipe gives options at its top level\)"):
        read(write("[asgd]\nrounds = 5\n"))
    with pytest.raises(UsageError, match="unknown key 'runtime'"):
        read(write("runtime.rounds = 5\n"))


def test_recipe_files_that_cannot_be_read_are_named(write, tmp_path, monkeypatch):
    bad_utf8 = write(b'rounds = 5\ndata = "\xff"\n')
    with pytest.raises(UsageError, match=f"^recipe {bad_utf8} is not valid UTF-8 \\(line 2\\)"):
        load_recipe(bad_utf8)
    with pytest.raises(UsageError, match=f"^recipe {tmp_path} is a directory"):
        load_recipe(str(tmp_path))
    with pytest.raises(UsageError, match="^recipe not found: "):
        load_recipe(str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="^--recipe needs a file name$"):
        load_recipe("")
    too_long = write("rounds = " + "9" * 5000 + "\n")
    with pytest.raises(UsageError, match=f"^recipe {too_long}: an integer has more than \\d+ digits$"):
        load_recipe(too_long)

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(recipe_module, "open", refuse, raising=False)  # root reads any file, so pretend
    with pytest.raises(UsageError, match=f"^recipe {bad_utf8} cannot be read: Permission denied$"):
        load_recipe(bad_utf8)


@pytest.mark.parametrize("pairs,expected", [
    (("rounds=5",), {"rounds": 5}),
    ((" lam = 0.5 ",), {"lam": 0.5}),
    (("batch-size=all", "lr=auto"), {"batch_size": None, "lr": None}),
    (("force=yes", "standardize=off"), {"force": True, "standardize": False}),
    (("eval_every=none", "crash=NULL"), {"eval_every": None, "crash": None}),
    (("max-staleness=3", "staleness_lr=inverse"), {"max_staleness": 3, "staleness_lr": "inverse"}),
])
def test_set_values_are_converted_like_flags(pairs, expected):
    assert set_options(pairs, ASGD_OPTIONS) == expected


@pytest.mark.parametrize("pairs,message", [
    (("rounds=",), "--set rounds= has no value; give one"),
    (("crash=",), "--set crash= has no value; give one (or none)"),
    (("rounds=none",), "--set: invalid value for 'rounds'"),
    (("rounds=2.5",), "--set: invalid value for 'rounds'"),
    (("lam=nan",), "--set: invalid value for 'lam': nan is not a finite number"),
    (("max_model_mb=-inf",), "--set: invalid value for 'max_model_mb'"),
    (("rounds=5", "rounds=5"), "--set: 'rounds' is given twice; give it once"),
    (("batch_size=8", "batch-size=16"), "--set: 'batch_size' and 'batch-size' both give batch_size; give it once"),
    (("recipe=r.toml",), "--set: unknown key 'recipe'"),
    (("=5",), "--set expects KEY=VALUE, got '=5'"),
])
def test_bad_set_pairs_are_refused(pairs, message):
    with pytest.raises(UsageError) as error:
        set_options(pairs, ASGD_OPTIONS)
    assert str(error.value).startswith(message)
