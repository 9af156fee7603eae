"""Helpers for tests that train: a small seeded problem and one eager training step (the path the
Executor and the memory tests compare against). Imported by tests/ and tests/gpu/ alike."""
import numpy as np

import gpugrad as gg
from gpugrad import nn, optim


def small_problem():
    """A seeded 16-32-32-4 ReLU MLP on the default device, its Adam optimizer and one batch."""
    gg.manual_seed(0)
    model = nn.mlp([16, 32, 32, 4])
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = rng.integers(0, 4, 32)
    return model, opt, x, y


def eager_step(model, opt, x, y, loss="cross_entropy"):
    """model(x) -> loss -> backward -> opt.step(), as a user writes it; returns the loss."""
    out = model(gg.tensor(x))
    value = gg.cross_entropy(out, y) if loss == "cross_entropy" else gg.mse_loss(out, y)
    opt.zero_grad()
    value.backward()
    opt.step()
    return value.item()
