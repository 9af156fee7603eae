"""gg.nn: registration, state dicts, devices, Linear/Sequential/activations, vs PyTorch."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn, optim
from gpugrad.backend.numpy_backend import NumpyBackend

F64 = "float64"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = gg.ones(3, requires_grad=True)
        self.inner = nn.Linear(3, 2)
        self.constant = gg.ones(3)          # no requires_grad: a plain attribute
        self.offset = gg.zeros(2, requires_grad=True)

    def forward(self, x):
        return self.inner(x * self.scale) + self.offset


def snapshot(model):
    return {name: p.numpy().copy() for name, p in model.named_parameters()}


def assert_unchanged(model, before):
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[name], err_msg=name)


def small_mlp(activation="relu", dtype=F64):
    gg.manual_seed(0)
    return nn.mlp([3, 4, 2], activation=activation, dtype=dtype)


# -- Module ------------------------------------------------------------------------------------

def test_registration_order_and_dotted_names():
    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["scale", "offset", "inner.weight",
                                                    "inner.bias"]
    assert list(b.parameters())[0] is b.scale
    assert b.constant.shape == (3,) and "constant" not in dict(b.named_parameters())
    model = nn.Sequential(Block(), nn.ReLU(), nn.Linear(2, 1))
    assert [n for n, _ in model.named_parameters()] == [
        "0.scale", "0.offset", "0.inner.weight", "0.inner.bias", "2.weight", "2.bias"]


def test_reassignment_keeps_position_and_kind_changes_unregister():
    b = Block()
    b.scale = gg.zeros(3, requires_grad=True)           # same slot, new tensor
    assert [n for n, _ in b.named_parameters()][0] == "scale"
    b.offset = None                                      # no longer a parameter
    assert b.offset is None and "offset" not in dict(b.named_parameters())
    del b.inner
    assert [n for n, _ in b.named_parameters()] == ["scale"]
    with pytest.raises(AttributeError, match="inner"):
        b.inner


def test_non_leaf_tensors_and_shared_parameters():
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, nn.Tanh(), lin)           # weight sharing: listed once
    assert len(list(model.parameters())) == 2
    m = nn.Module()
    m.cached = lin.weight * 2                            # a computed tensor is not a parameter
    assert list(m.parameters()) == []


def test_subclass_without_super_init_still_registers():
    class Bare(nn.Module):
        def __init__(self):
            self.w = gg.ones(2, requires_grad=True)

    assert [n for n, _ in Bare().named_parameters()] == ["w"]


def test_zero_grad_train_eval_repr_and_call():
    model = small_mlp()
    model(gg.ones(5, 3, dtype=F64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert model.train() is model and all(m.training for m in model.modules())
    text = repr(model)
    assert "(0): Linear(in_features=3, out_features=4, bias=True, init='he')" in text
    assert "(1): ReLU()" in text
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(1)


def test_state_dict_round_trip():
    src, dst = small_mlp(), nn.mlp([3, 4, 2], dtype=F64)
    sd = src.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(not t.requires_grad for t in sd.values())
    params = list(dst.parameters())
    result = dst.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(a is b for a, b in zip(params, dst.parameters()))   # identity kept
    x = gg.tensor(np.random.default_rng(0).standard_normal((4, 3)))
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())
    dst.load_state_dict({k: v.numpy() * 2 for k, v in sd.items()})  # numpy arrays work too
    np.testing.assert_array_equal(dst[0].weight.numpy(), 2 * src[0].weight.numpy())


@pytest.mark.parametrize("change, error, pattern", [
    (lambda sd: sd.pop("2.bias"), KeyError, r"missing keys \['2.bias'\]"),
    (lambda sd: sd.update(extra=np.zeros(1)), KeyError, r"unexpected keys \['extra'\]"),
    (lambda sd: sd.update({"2.weight": np.zeros((2, 4))}), gg.ShapeError,
     r"'2.weight' has shape \(2, 4\), expected \(4, 2\)"),
    (lambda sd: sd.update({"2.bias": np.zeros(2, np.float32)}), TypeError,
     r"'2.bias' has dtype float32, expected float64"),
    (lambda sd: sd.update({"2.bias": [0.0, 0.0]}), TypeError, r"'2.bias' is a list"),
])
def test_load_state_dict_errors_change_nothing(change, error, pattern):
    model = small_mlp()
    before = snapshot(model)
    sd = {k: v * 0 + 7 for k, v in model.state_dict().items()}   # good values for early keys
    change(sd)
    with pytest.raises(error, match=pattern):
        model.load_state_dict(sd)
    assert_unchanged(model, before)


def test_load_state_dict_non_strict():
    model = small_mlp()
    sd = {"0.bias": np.full(4, 3.0), "junk": np.zeros(1)}
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.weight", "2.weight", "2.bias"]
    assert result.unexpected_keys == ["junk"]
    np.testing.assert_array_equal(model[0].bias.numpy(), 3.0)


def test_to_cpu_is_identity():
    model = small_mlp()
    params, arrays = list(model.parameters()), [p.data for p in model.parameters()]
    assert model.to("cpu") is model
    assert all(p is q and p.data is a for p, q, a in zip(params, model.parameters(), arrays))


def test_to_cuda_without_gpu_raises_and_moves_nothing():
    if gg.cuda.is_available():
        pytest.skip("a GPU is usable here; this checks the error path")
    model = small_mlp()
    arrays = [p.data for p in model.parameters()]
    with pytest.raises(gg.DeviceError, match="cuda"):
        model.to("cuda")
    assert all(p.device == "cpu" and p.data is a for p, a in zip(model.parameters(), arrays))


def test_to_moves_parameters_grads_and_optimizer_state_in_place():
    # a second NumPy backend stands in for a GPU: the move logic is the same for any device
    other = NumpyBackend()
    other.name = "other"
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(gg.ones(2, 3, dtype=F64)).sum().backward()
    opt.step()
    params, before = list(model.parameters()), snapshot(model)
    grads = [p.grad.numpy().copy() for p in params]
    model.to(other)
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert all(p._bk is other and p.grad._bk is other for p in params)
    assert_unchanged(model, before)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    opt.step()  # the momentum buffers follow the parameters
    assert all(st["bk"] is other for st in opt.state)


# -- Linear --------------------------------------------------------------------------------------

def test_linear_forward_matches_numpy(rng):
    lin = nn.Linear(3, 5, dtype=F64)
    x = rng.standard_normal((4, 3))
    expected = x @ lin.weight.numpy() + lin.bias.numpy()
    np.testing.assert_allclose(lin(gg.tensor(x)).numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose(lin(x).numpy(), expected, rtol=1e-14)          # arrays accepted
    np.testing.assert_allclose(lin(gg.tensor(x[0])).numpy(), expected[0], rtol=1e-14)
    no_bias = nn.Linear(3, 5, bias=False, dtype=F64)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"]
    np.testing.assert_allclose(no_bias(x).numpy(), x @ no_bias.weight.numpy(), rtol=1e-14)


def test_linear_wrong_feature_size():
    lin = nn.Linear(3, 2)
    with pytest.raises(gg.ShapeError, match=r"input has 4 features \(shape \(5, 4\)\), "
                                            r"expected 3"):
        lin(gg.ones(5, 4))
    with pytest.raises(gg.ShapeError, match="expected 3"):
        lin(gg.tensor(1.0))


@pytest.mark.parametrize("init, fan", [("he", 400), ("xavier", 400 + 600)])
def test_linear_init_statistics(init, fan):
    gg.manual_seed(0)
    lin = nn.Linear(400, 600, init=init)
    w = lin.weight.numpy().astype(np.float64)
    assert lin.weight.dtype == np.float32 and lin.weight.requires_grad
    assert abs(w.mean()) < 1e-3
    assert w.std() == pytest.approx(np.sqrt(2.0 / fan), rel=0.01)   # 240k samples: ~0.15% noise
    np.testing.assert_array_equal(lin.bias.numpy(), 0)


def test_linear_init_is_seeded():
    gg.manual_seed(7)
    a = nn.Linear(5, 4).weight.numpy()
    gg.manual_seed(7)
    b = nn.Linear(5, 4).weight.numpy()
    c = nn.Linear(5, 4).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_linear_bad_arguments():
    with pytest.raises(ValueError, match="init must be one of"):
        nn.Linear(2, 2, init="uniform")
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        nn.Linear(0, 2)
    with pytest.raises(TypeError, match="floating point"):
        nn.Linear(2, 2, dtype="int32")


# -- Sequential, activations, mlp -------------------------------------------------------------

def test_sequential_container():
    layers = [nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    assert list(seq[1:]) == layers[1:]
    with pytest.raises(TypeError, match="layer 1 is a function"):
        nn.Sequential(nn.ReLU(), gg.relu)


@pytest.mark.parametrize("name, fn", [("relu", lambda a: np.maximum(a, 0)), ("tanh", np.tanh),
                                      ("sigmoid", lambda a: 1 / (1 + np.exp(-a)))])
def test_mlp_structure_activation_and_init(name, fn, rng):
    model = nn.mlp([3, 8, 8, 2], activation=name, dtype=F64)
    assert [type(m).__name__ for m in model] == ["Linear", type(model[1]).__name__, "Linear",
                                                 type(model[1]).__name__, "Linear"]
    expected_init = "he" if name == "relu" else "xavier"
    assert all(m.init == expected_init for m in model if isinstance(m, nn.Linear))
    x = rng.standard_normal((4, 3))
    h = x
    for m in model:
        h = h @ m.weight.numpy() + m.bias.numpy() if isinstance(m, nn.Linear) else fn(h)
    np.testing.assert_allclose(model(x).numpy(), h, rtol=1e-12)


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.mlp([2, 2], activation="gelu")
    with pytest.raises(ValueError, match="at least an input and an output size"):
        nn.mlp([2])


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_gradcheck_sequential(activation, rng):
    model = small_mlp(activation)
    names = [n for n, _ in model.named_parameters()]
    x = gg.tensor(rng.standard_normal((5, 3)) + 0.1, requires_grad=True)

    def fn(x, *params):  # gradcheck's float64 copies replace the model's parameters
        for (layer, attr), p in zip((n.split(".") for n in names), params):
            setattr(model[int(layer)], attr, p)
        return model(x)

    assert gg.gradcheck(fn, [x, *model.parameters()])


def test_matches_torch_outputs_and_gradients(torch, rng):
    model = nn.mlp([3, 5, 4, 2], activation="tanh", dtype=F64)
    ref = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4),
                              torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    ours = [m for m in model if isinstance(m, nn.Linear)]
    theirs = [m for m in ref if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(torch.from_numpy(a.weight.numpy().T))   # torch stores (out, in)
            b.bias.copy_(torch.from_numpy(a.bias.numpy()))
    x_np = rng.standard_normal((6, 3))
    x, tx = gg.tensor(x_np, requires_grad=True), torch.tensor(x_np, requires_grad=True)
    out, tout = model(x), ref(tx)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    (out ** 2).sum().backward()
    (tout ** 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.weight.grad.numpy(), b.weight.grad.numpy().T, rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(a.bias.grad.numpy(), b.bias.grad.numpy(), rtol=1e-12,
                                   atol=1e-14)
