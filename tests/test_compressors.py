"""Message compressors: exact round trips, exact byte counts, (un)biasedness, error feedback."""

import dataclasses

import numpy as np
import pytest

from dmlcli.compressors import parse_compressor, with_error_feedback
from dmlcli.errors import UsageError

ALL = ("none", "qsgd:1", "qsgd:4", "qsgd:300", "topk:0.1", "topk:1", "randk:0.25", "randk:1", "sign", "filter:0", "filter:0.5")


def roundtrip(spec, x, seed=0):
    c = parse_compressor(spec)
    payload = c.encode(np.asarray(x, dtype=float), np.random.default_rng(seed))
    assert payload.dtype == np.uint8 and payload.ndim == 1
    return c.decode(payload, len(x))


def ceil_div(a, b):
    return -(-a // b)


# ---- round trips ----------------------------------------------------------------------------


def test_none_is_exact_even_at_extremes():
    x = np.array([1e-310, -1e300, 0.0, -0.0, np.pi, -5e-324])
    assert np.array_equal(roundtrip("none", x), x)
    assert np.array_equal(np.signbit(roundtrip("none", x)), np.signbit(x))


def test_topk_keeps_the_largest_magnitudes():
    x = np.array([0.5, -3.0, 2.0, 0.1, -2.5, 1.0])
    assert np.array_equal(roundtrip("topk:0.5", x), [0, -3.0, 2.0, 0, -2.5, 0])


def test_topk_ties_go_to_the_lower_indices():
    x = np.array([0.5, 1.0, -1.0, 1.0, 1.0])
    assert np.array_equal(roundtrip("topk:0.4", x), [0, 1.0, -1.0, 0, 0])


def test_topk_counts_coordinates_exactly():
    # in floats ceil(0.1 * 30) = 4; the fraction 1/10 of 30 coordinates is 3
    x = np.arange(1.0, 31.0)
    kept = roundtrip("topk:0.1", x)
    assert np.array_equal(np.flatnonzero(kept), [27, 28, 29])


def test_sign_is_scaled_sign():
    x = np.array([1.0, -2.0, 3.0, -4.0, 0.5])  # ‖x‖₁/d = 10.5/5 = 2.1
    assert np.array_equal(roundtrip("sign", x), 2.1 * np.sign(x))


def test_sign_sends_zero_coordinates_as_positive():
    x = np.array([0.0, -3.0, 0.0])
    assert np.array_equal(roundtrip("sign", x), [1.0, -1.0, 1.0])


def test_filter_keeps_changes_above_eps():
    x = np.zeros(12)
    x[[0, 1, 2, 3]] = [0.6, -0.5, -0.7, 0.2]  # |−0.5| is not > 0.5
    expected = np.where(np.abs(x) > 0.5, x, 0.0)
    c = parse_compressor("filter:0.5")
    payload = c.encode(x, np.random.default_rng(0))
    assert payload.size == 12 * 2
    assert np.array_equal(c.decode(payload, x.size), expected)


def test_filter_goes_dense_when_sparse_would_cost_more():
    x = np.random.default_rng(0).normal(size=9)
    x[0] = 0.0  # m = 8 of 9: 96 sparse bytes > 72 dense
    c = parse_compressor("filter:0")
    payload = c.encode(x, np.random.default_rng(0))
    assert payload.size == 8 * 9 == c.max_bytes(9)
    assert np.array_equal(c.decode(payload, 9), x)
    y = np.zeros(9)
    y[:5] = 1.0  # m = 5: 60 sparse bytes < 72
    assert c.encode(y, np.random.default_rng(0)).size == 60
    y[5] = 1.0  # m = 6 = 2d/3: 72 either way, sent dense
    payload = c.encode(y, np.random.default_rng(0))
    assert payload.size == 72 and np.array_equal(c.decode(payload, 9), y)


def test_qsgd_exact_on_its_grid():
    # ‖x‖ = 5 and S = 5: every |x_i| is a whole level, so no dithering happens
    assert np.array_equal(roundtrip("qsgd:5", [3.0, -4.0, 0.0]), [3.0, -4.0, 0.0])


def test_qsgd_rounds_to_a_neighbouring_level_with_the_right_sign():
    x = np.random.default_rng(1).normal(size=50)
    s = 4
    norm = np.linalg.norm(x)
    for seed in range(20):
        levels = roundtrip(f"qsgd:{s}", x, seed) / norm * s
        assert np.allclose(levels, np.round(levels), atol=1e-12)
        r = np.abs(x) / norm * s
        assert np.all((np.abs(levels) >= np.floor(r) - 1e-12) & (np.abs(levels) <= np.ceil(r) + 1e-12))
        assert np.all((levels == 0) | (np.sign(levels) == np.sign(x)))


def test_randk_sends_k_scaled_coordinates_and_the_seed_decides_them():
    x = np.arange(1.0, 21.0)
    c = parse_compressor("randk:0.25")
    a = c.encode(x, np.random.default_rng(3))
    decoded = c.decode(a, 20)
    kept = np.flatnonzero(decoded)
    assert kept.size == 5
    assert np.array_equal(decoded[kept], x[kept] * 4)
    assert np.array_equal(a, c.encode(x, np.random.default_rng(3)))
    other = c.decode(c.encode(x, np.random.default_rng(4)), 20)
    assert not np.array_equal(np.flatnonzero(other), kept)


# ---- byte counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 7, 8, 9, 30, 100])
@pytest.mark.parametrize(
    "spec, formula",
    [
        ("none", lambda d: 8 * d),
        ("qsgd:1", lambda d: 8 + ceil_div(d, 8) + d),
        ("qsgd:255", lambda d: 8 + ceil_div(d, 8) + d),
        ("qsgd:256", lambda d: 8 + ceil_div(d, 8) + 2 * d),
        ("qsgd:65535", lambda d: 8 + ceil_div(d, 8) + 2 * d),
        ("qsgd:65536", lambda d: 8 + ceil_div(d, 8) + 4 * d),
        ("topk:0.1", lambda d: 12 * ceil_div(d, 10)),
        ("topk:1", lambda d: 12 * d),
        ("randk:0.25", lambda d: 8 + 8 * ceil_div(d, 4)),
        ("randk:1", lambda d: 8 + 8 * d),
        ("sign", lambda d: 8 + ceil_div(d, 8)),
    ],
)
def test_fixed_size_payloads_are_exact(spec, formula, d):
    c = parse_compressor(spec)
    x = np.random.default_rng(d).normal(size=d)
    assert c.encode(x, np.random.default_rng(0)).size == formula(d) == c.max_bytes(d)
    assert c.encode(np.zeros(d), np.random.default_rng(0)).size == formula(d)


@pytest.mark.parametrize("d", [1, 7, 30, 100])
def test_filter_payload_is_12_per_sent_coordinate_or_dense(d):
    c = parse_compressor("filter:1")
    x = np.random.default_rng(d).normal(size=d)
    m = int(np.sum(np.abs(x) > 1))
    size = c.encode(x, np.random.default_rng(0)).size
    assert size == (12 * m if 12 * m < 8 * d else 8 * d)
    assert size <= c.max_bytes(d) == 8 * d


# ---- (un)biasedness -------------------------------------------------------------------------

DRAWS = 20_000


def assert_unbiased(c, x, variance):
    """Mean of DRAWS seeded decodes within 5 standard errors sqrt(variance/DRAWS) of x, per coordinate.

    By the CLT the mean of a coordinate is within 5 SE except with probability 6e-7, so a
    correct compressor fails for fewer than 1e-5 of seeds over 10 coordinates (and these
    seeds are fixed). The 1e-9·max|x| slack absorbs summation rounding, for coordinates whose
    variance is 0.
    """
    rng = np.random.default_rng(2024)
    total = np.zeros_like(x)
    for _ in range(DRAWS):
        total += c.decode(c.encode(x, rng), x.size)
    gap = np.abs(total / DRAWS - x)
    tolerance = 5 * np.sqrt(variance / DRAWS) + 1e-9 * np.abs(x).max()
    assert np.all(gap <= tolerance), f"{c.name}: |mean − x| {gap} exceeds {tolerance}"


X = np.array([0.3, -1.2, 2.0, 0.0, -0.05, 0.7, 1.5, -0.9, 0.01, -2.5])


def test_qsgd_is_unbiased():
    s = 3
    c = parse_compressor(f"qsgd:{s}")
    norm = np.linalg.norm(X)
    r = np.abs(X) / norm * s
    p = r - np.floor(r)
    assert c.unbiased
    assert_unbiased(c, X, (norm / s) ** 2 * p * (1 - p))


def test_randk_is_unbiased():
    c = parse_compressor("randk:0.3")  # k = 3 of 10
    assert c.unbiased
    assert_unbiased(c, X, X**2 * (10 / 3 - 1))


def test_unbiasedness_check_catches_randk_without_its_d_over_k_scale():
    c = parse_compressor("randk:0.3")
    unscaled = dataclasses.replace(c, decode=lambda payload, d: c.decode(payload, d) * 3 / 10)
    with pytest.raises(AssertionError):
        assert_unbiased(unscaled, X, X**2 * (10 / 3 - 1))


@pytest.mark.parametrize("spec", ["topk:0.3", "sign", "filter:0.5"])
def test_biased_compressors_show_a_bias(spec):
    c = parse_compressor(spec)
    assert not c.unbiased
    assert not np.allclose(c.decode(c.encode(X, np.random.default_rng(0)), X.size), X)
    with pytest.raises(AssertionError):
        assert_unbiased(c, X, np.zeros_like(X))  # deterministic: its mean is its one value


# ---- error feedback -------------------------------------------------------------------------


def feedback_run(spec, d=40, steps=60):
    """(Σ decoded payloads, Σ inputs, final memory) of error feedback over `steps` random inputs."""
    c = parse_compressor(spec)
    rng = np.random.default_rng(7)
    memory = np.zeros(d)
    sent, given = np.zeros(d), np.zeros(d)
    for _ in range(steps):
        x = rng.normal(size=d)
        before = memory.copy()
        payload, new_memory = with_error_feedback(c, x, memory, rng)
        assert np.array_equal(memory, before)  # pure: the old memory is untouched
        memory = new_memory
        sent += c.decode(payload, d)
        given += x
    return sent, given, memory


@pytest.mark.parametrize("spec", ["topk:0.1", "sign", "filter:0.5", "qsgd:16"])
def test_error_feedback_sends_everything_but_the_final_memory(spec):
    sent, given, memory = feedback_run(spec)
    # each step's p = q + e is exact up to one rounding of |p| ≲ 10, so 60 steps stay below 1e-12
    assert np.allclose(sent, given - memory, rtol=0, atol=1e-12)
    assert 0.1 < np.abs(memory).max() < 10  # the memory carried something, and stayed bounded


def test_filter_memory_stays_below_eps():
    assert np.abs(feedback_run("filter:0.5")[2]).max() <= 0.5


def test_error_feedback_diverges_with_a_non_contractive_compressor():
    # scaled rand-k sends (d/k)·x_i, so the error on a sent coordinate is (1 − d/k)·p_i: |e| grows
    sent, given, memory = feedback_run("randk:0.2")
    assert np.abs(memory).max() > 1e6
    assert np.allclose(sent, given - memory, rtol=1e-12, atol=0)  # the identity itself still holds


def test_without_feedback_topk_loses_what_it_did_not_send():
    c = parse_compressor("topk:0.1")
    rng = np.random.default_rng(7)
    sent, given = np.zeros(40), np.zeros(40)
    for _ in range(60):
        x = rng.normal(size=40)
        sent += c.decode(c.encode(x, rng), 40)
        given += x
    assert np.abs(sent - given).max() > 1.0


# ---- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("d", [1, 5, 17])
def test_zero_vector_decodes_to_zero(spec, d):
    decoded = roundtrip(spec, np.zeros(d))
    assert decoded.shape == (d,) and decoded.dtype == np.float64
    assert np.array_equal(decoded, np.zeros(d))


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("value", [2.5, -0.75])
def test_one_coordinate(spec, value):
    decoded = roundtrip(spec, [value])
    if spec == "filter:0.5" and abs(value) <= 0.5:
        assert np.array_equal(decoded, [0.0])
    else:
        assert np.allclose(decoded, [value], rtol=1e-15, atol=0)


def test_qsgd_norm_neither_overflows_nor_underflows():
    for x in (np.array([1e300, -1e300, 5e299]), np.array([1e-310, -3e-310, 2e-310])):
        decoded = roundtrip("qsgd:8", x)
        assert np.all(np.isfinite(decoded)) and np.any(decoded != 0)


def test_qsgd_non_finite_input_decodes_to_nan():
    assert np.all(np.isnan(roundtrip("qsgd:4", [1.0, np.nan, 2.0])))
    assert np.all(np.isnan(roundtrip("qsgd:4", [1.0, np.inf, 2.0])))


@pytest.mark.parametrize("spec", ALL)
def test_a_payload_of_the_wrong_length_is_refused(spec):
    c = parse_compressor(spec)
    payload = c.encode(np.ones(16), np.random.default_rng(0))
    with pytest.raises(ValueError):
        c.decode(payload[:-1], 16)


# ---- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL + ("qsgd:4294967295", "topk:1e-3", "randk:.5", "filter:1e-6", "filter:7"))
def test_good_specs(spec):
    assert parse_compressor(spec).name == spec


@pytest.mark.parametrize(
    "spec",
    [
        "", "foo", "topk0.1", "none:1", "sign:", "sign:2",
        "qsgd", "qsgd:", "qsgd:0", "qsgd:-1", "qsgd:2.5", "qsgd:1e3", "qsgd:4294967296", "qsgd:4:2", "qsgd: 4",
        "topk", "topk:", "topk:0", "topk:0.0", "topk:1.5", "topk:-0.1", "topk:nan", "topk:inf", "topk:0.1:2", "topk:1_0",
        "randk:0", "randk:2", "randk:1/3", "randk:+0.5",
        "filter", "filter:", "filter:-1", "filter:nan", "filter:inf", "filter:1e999", "filter:0.1:3",
        "QSGD:4", " sign",
    ],
)
def test_bad_specs_are_refused_in_one_line(spec):
    with pytest.raises(UsageError) as error:
        parse_compressor(spec)
    message = str(error.value)
    assert repr(spec) in message and "\n" not in message
    assert "expected" in message
