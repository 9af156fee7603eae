"""Unary elementwise ops: forward, then backward = upstream * local gradient.

Where the local gradient is a function of the output (exp, tanh, sqrt, sigmoid), the output is what
is stored: the lecture's "store the intermediate outputs", and no overflow from recomputing exp.

An elementwise op's Jacobian is diagonal, so it is its own transpose: the forward-mode rule (the
tangent times the local gradient) is the backward itself, applied to the tangent.
"""
from ..tensor import OUT, Function


class Elementwise(Function):
    """A one-input op whose output element i depends on input element i only."""

    def jvp(self, t):
        return self.backward(t)[0]  # J is diagonal: J t = J^T t


class Exp(Elementwise):
    saved = (OUT,)

    def forward(self, a):
        self.out = self.bk.xp.exp(a)
        return self.out

    def backward(self, upstream):
        return (upstream * self.out,)  # d exp(a) = exp(a)


class Log(Elementwise):
    saved = (0,)

    def forward(self, a):
        self.a = a
        return self.bk.xp.log(a)

    def backward(self, upstream):
        return (upstream / self.a,)  # d ln(a) = 1/a


class Sin(Elementwise):
    saved = (0,)

    def forward(self, a):
        self.a = a
        return self.bk.xp.sin(a)

    def backward(self, upstream):
        return (upstream * self.bk.xp.cos(self.a),)


class Cos(Elementwise):
    saved = (0,)

    def forward(self, a):
        self.a = a
        return self.bk.xp.cos(a)

    def backward(self, upstream):
        return (-(upstream * self.bk.xp.sin(self.a)),)


class Tanh(Elementwise):
    saved = (OUT,)

    def forward(self, a):
        self.out = self.bk.xp.tanh(a)
        return self.out

    def backward(self, upstream):
        return (upstream * (1 - self.out * self.out),)  # d tanh = 1 - tanh^2


class Sqrt(Elementwise):
    saved = (OUT,)

    def forward(self, a):
        self.out = self.bk.xp.sqrt(a)
        return self.out

    def backward(self, upstream):
        return (upstream / (2 * self.out),)  # d sqrt(a) = 1 / (2 sqrt(a))


class Abs(Elementwise):
    saved = (0,)

    def forward(self, a):
        self.a = a
        return self.bk.xp.abs(a)

    def backward(self, upstream):
        return (upstream * self.bk.xp.sign(self.a),)  # subgradient 0 at 0, as PyTorch


class Sigmoid(Elementwise):
    """sigma(a) = 1/(1+e^-a); local gradient sigma(1-sigma) from the stored output.
    On CUDA both directions are the fused kernels in kernels/sigmoid.cu."""
    saved = (OUT,)

    def forward(self, a):
        self.out = self.bk.sigmoid_forward(a)
        return self.out

    def backward(self, upstream):
        return (self.bk.sigmoid_backward(self.out, upstream),)


class ReLU(Elementwise):
    """max(a, 0). The output is what is stored (as PyTorch does): out > 0 exactly where a > 0,
    the next layer keeps that array anyway, and forward makes one array instead of two."""
    saved = (OUT,)

    def forward(self, a):
        self.out = self.bk.xp.maximum(a, 0)
        return self.out

    def backward(self, upstream):
        return (upstream * (self.out > 0),)  # local gradient 1 where a > 0, else 0
