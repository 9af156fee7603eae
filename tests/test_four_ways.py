"""The lecture's slide "four ways to compute a derivative", run as examples/four_ways.py runs it:
every exact method agrees with the symbolic derivative (exact rational arithmetic) to float64
rounding, the numerical one to its expected error."""
import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "four_ways.py"


@pytest.fixture(scope="module")
def four_ways():
    spec = importlib.util.spec_from_file_location("four_ways", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


POINTS = [0.05, 0.1, 0.25, 0.3, 0.5, 0.6, 0.77, 0.9]


def relative(a, b):
    return abs(a - b) / max(abs(b), 1.0)


def test_exact_methods_agree_to_rounding(four_ways):
    for row in four_ways.table(POINTS):
        for method in ("manual", "pairs", "reverse", "forward"):
            assert relative(row[method], row["symbolic"]) < 8e-15, (row["x"], method, row)
        for method in ("d2_rr", "d2_fr"):
            assert relative(row[method], row["d2_symbolic"]) < 8e-15, (row["x"], method, row)


def test_numerical_is_off_by_its_expected_error(four_ways):
    for row in four_ways.table(POINTS):
        error = abs(row["numerical"] - row["symbolic"])
        assert error <= row["numerical_bound"] * 1.001, row
        assert error > 1e-9  # h = 1e-6 is far from exact: the method's error is visible


def test_the_slide_values(four_ways):
    # l4(x) = 64x(1-x)(1-2x)^2(1-8x+8x^2)^2 at x = 1/4: f = 0.5 * ..., f'(1/4) = 8, f''(1/4) = -96
    (row,) = four_ways.table([0.25])
    assert row["f"] == 64 * 0.25 * 0.75 * 0.25 * (1 - 2 + 0.5) ** 2
    assert row["reverse"] == row["forward"] == row["pairs"] == 8.0
    assert row["d2_rr"] == row["d2_fr"] == -96.0


def test_prints_the_table(four_ways, capsys):
    four_ways.main(["0.3"])
    out = capsys.readouterr().out
    assert "reverse over reverse" in out and "forward over reverse" in out
    assert "1.3090816" in out and "-151.904256" in out
