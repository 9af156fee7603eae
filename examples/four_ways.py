"""The lecture's four ways to compute a derivative, on its example: the logistic map iterated three
times, f(x) = l4(x) = 64x(1-x)(1-2x)^2(1-8x+8x^2)^2 (l1 = x, l_{n+1} = 4 l_n (1 - l_n)).

    python examples/four_ways.py [x ...]

1. Manual differentiation: the product rule by hand, the closed form below.
2. Symbolic differentiation: l4 built as a polynomial (exact integer coefficients) and
   differentiated term by term (numpy.polynomial), then evaluated exactly in rational
   arithmetic: the reference, correctly rounded.
3. Numerical differentiation: (f(x + h) - f(x)) / h with h = 0.000001, as on the slide. Its error
   is about h/2 |f''| (truncation) plus 2 eps |f| / h (rounding).
4. Automatic differentiation, both ways: reverse mode (gg.autograd.grad: the graph of the loop,
   walked backwards) and forward mode (gg.autograd.jvp: the slide's loop over pairs,
   (v, w) = (x, 1); for i = 1 to 3: (v, w) = (4v(1-v), 4w - 8vw), a value carried with its
   derivative). And the second derivative, by reverse over reverse (the gradient recorded with
   create_graph=True, then differentiated) and by forward over reverse (jvp of the gradient).
"""
import sys
from fractions import Fraction

import numpy as np
from numpy.polynomial import Polynomial

import gpugrad as gg

H = 0.000001


def l4(x):
    """The logistic map from l1 = x, three steps: works on floats and on gpugrad Tensors."""
    v = x
    for _ in range(3):
        v = 4 * v * (1 - v)
    return v


def manual(x):
    """f'(x) by the product rule on 64 x (1-x) (1-2x)^2 (1-8x+8x^2)^2, term by term."""
    a, b, c = 1 - x, (1 - 2 * x) ** 2, (1 - 8 * x + 8 * x * x) ** 2
    return (64 * a * b * c - 64 * x * b * c
            - 256 * x * a * (1 - 2 * x) * c
            + 128 * x * a * b * (1 - 8 * x + 8 * x * x) * (-8 + 16 * x))


def symbolic():
    """l4 and its first two derivatives as exact polynomials (integer coefficients)."""
    f = l4(Polynomial([0, 1]))
    return f, f.deriv(1), f.deriv(2)


def exact(poly, x):
    """poly(x) in rational arithmetic (the coefficients are integers), rounded once."""
    x = Fraction(x)
    return float(sum(Fraction(int(c)) * x ** i for i, c in enumerate(poly.coef)))


def numerical(x):
    return (l4(x + H) - l4(x)) / H


def forward_pairs(x):
    """The slide's loop, by hand: a value and its derivative side by side."""
    v, w = x, 1.0
    for _ in range(3):
        v, w = 4 * v * (1 - v), 4 * w - 8 * v * w
    return w


def reverse_mode(x):
    t = gg.tensor(x, dtype="float64", requires_grad=True)
    return gg.autograd.grad(l4(t), t)[0].item()


def forward_mode(x):
    t = gg.tensor(x, dtype="float64")
    _, tangent = gg.autograd.jvp(l4, (t,), (gg.ones_like(t),))
    return tangent.item()


def second_reverse_over_reverse(x):
    t = gg.tensor(x, dtype="float64", requires_grad=True)
    (d1,) = gg.autograd.grad(l4(t), t, create_graph=True)
    return gg.autograd.grad(d1, t)[0].item()


def second_forward_over_reverse(x):
    t = gg.tensor(x, dtype="float64", requires_grad=True)

    def derivative(u):
        return gg.autograd.grad(l4(u), u, create_graph=True)[0]

    _, tangent = gg.autograd.jvp(derivative, (t,), (gg.ones_like(t),))
    return tangent.item()


def table(points):
    """One row per point: every method's value, as floats."""
    f, d1, d2 = symbolic()
    rows = []
    for x in points:
        rows.append({
            "x": x, "f": l4(x), "manual": manual(x), "symbolic": exact(d1, x),
            "numerical": numerical(x), "pairs": forward_pairs(x),
            "reverse": reverse_mode(x), "forward": forward_mode(x),
            "d2_symbolic": exact(d2, x), "d2_rr": second_reverse_over_reverse(x),
            "d2_fr": second_forward_over_reverse(x),
            # the numerical method's expected error: truncation plus rounding
            "numerical_bound": H / 2 * np.max(np.abs(d2(np.linspace(x, x + H, 3))))
            + 2 * np.finfo(float).eps * max(abs(f(x)), 1.0) / H,
        })
    return rows


def main(argv):
    points = [float(a) for a in argv] or [0.1, 0.25, 0.3, 0.6, 0.9]
    rows = table(points)
    print("f(x) = l4(x) = 64x(1-x)(1-2x)^2(1-8x+8x^2)^2, the logistic map iterated 3 times\n")
    print("first derivative f'(x)")
    print(f"{'x':>5} {'manual (closed form)':>22} {'symbolic':>22} {'reverse mode':>22} "
          f"{'forward mode':>22} {'numerical, h=1e-6':>20} {'its error':>10}")
    for r in rows:
        print(f"{r['x']:>5} {r['manual']:>22.16g} {r['symbolic']:>22.16g} {r['reverse']:>22.16g} "
              f"{r['forward']:>22.16g} {r['numerical']:>20.12g} "
              f"{r['numerical'] - r['symbolic']:>10.2e}")
    print("\nsecond derivative f''(x)")
    print(f"{'x':>5} {'symbolic':>22} {'reverse over reverse':>22} {'forward over reverse':>22}")
    for r in rows:
        print(f"{r['x']:>5} {r['d2_symbolic']:>22.16g} {r['d2_rr']:>22.16g} {r['d2_fr']:>22.16g}")
    first = [abs(r[k] - r["symbolic"]) / max(abs(r["symbolic"]), 1.0)
             for r in rows for k in ("manual", "pairs", "reverse", "forward")]
    second = [abs(r[k] - r["d2_symbolic"]) / max(abs(r["d2_symbolic"]), 1.0)
              for r in rows for k in ("d2_rr", "d2_fr")]
    numeric = max(abs(r["numerical"] - r["symbolic"]) / r["numerical_bound"] for r in rows)
    print(f"\nagainst the symbolic values (exact, rounded once), the other exact methods are off "
          f"by at most {max(first):.1e} (first derivative) and {max(second):.1e} (second), "
          f"relative;\nthe numerical one by at most {numeric:.2f} of its expected error "
          f"h/2 |f''| + 2 eps |f| / h")


if __name__ == "__main__":
    main(sys.argv[1:])
