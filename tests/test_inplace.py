"""Values saved for backward cannot change unnoticed (issue 10, item 1), and NumPy's copy rules
(item 2). PyTorch is the oracle where it has the same situation: it raises "one of the variables
needed for gradient computation has been modified by an inplace operation" where we must."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn, optim

STALE = "modified by an inplace operation"


def _x(values=(0.5, -1.0, 2.0)):
    return gg.tensor(np.array(values), requires_grad=True)


def test_writing_a_saved_output_through_detach_raises_and_names_the_op(torch):
    x = _x()
    e = gg.exp(x)
    e.detach()[0] = 0.0
    with pytest.raises(RuntimeError, match=STALE + r".*its output.*float64.*\(3,\).*'exp'"):
        e.sum().backward()
    assert x.grad is None  # nothing was written
    tx = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    te = torch.exp(tx)
    te.detach()[0] = 0.0
    with pytest.raises(RuntimeError, match=STALE):
        te.sum().backward()


@pytest.mark.parametrize("view", ["reshape", "slice", "transpose"])
def test_writes_through_views_are_seen(view):
    x = gg.tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    e = gg.exp(x)
    v = {"reshape": lambda: e.reshape(-1), "slice": lambda: e[0:1],
         "transpose": lambda: e.T}[view]()
    v.detach()[0] = 0.0
    with pytest.raises(RuntimeError, match=STALE):
        e.sum().backward()


def test_an_optimizer_step_between_forward_and_backward_raises(torch):
    w = gg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    x = gg.tensor(np.array([3.0, 4.0]))
    loss = (x * w * w).sum()  # mul saves w
    loss.backward(retain_graph=True)
    optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match=STALE + r".*'mul'"):
        loss.backward()
    tw = torch.tensor([1.0, 2.0], requires_grad=True)
    tloss = (torch.tensor([3.0, 4.0]) * tw * tw).sum()
    tloss.backward(retain_graph=True)
    torch.optim.SGD([tw], lr=0.1).step()
    with pytest.raises(RuntimeError, match=STALE):
        tloss.backward()


def test_writes_under_no_grad_and_load_state_dict_are_seen():
    model = nn.Linear(3, 2)
    x = gg.tensor(np.ones((4, 3), np.float32))
    out = gg.tanh(model(x)).sum()  # linear saved the weight
    with gg.no_grad():
        model.weight[0, 0] = 5.0
    with pytest.raises(RuntimeError, match=STALE + r".*'linear'"):
        out.backward()
    out = model(x).sum()
    model.load_state_dict({k: v.numpy() * 2 for k, v in model.state_dict().items()})
    with pytest.raises(RuntimeError, match=STALE):
        out.backward()


def test_a_write_to_a_value_nobody_saved_is_fine(torch):
    """Add keeps no values for backward: PyTorch lets this pass, and so do we."""
    x, c = _x(), gg.tensor(np.array([1.0, 1.0, 1.0]))
    y = (x + c).sum()
    c[0] = 7.0
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0])


def test_a_constant_tensor_that_was_saved_is_checked_too():
    x, c = _x(), gg.tensor(np.array([1.0, 2.0, 3.0]))
    y = (x * c).sum()
    c[1] = 0.0
    with pytest.raises(RuntimeError, match=STALE + r".*its input 1"):
        y.backward()


def test_numpy_operands_are_copied_when_backward_needs_them():
    """Mutating the caller's buffer after the forward, or reusing one buffer across
    micro-batches, cannot change the gradients."""
    x = _x((1.0, 2.0, 3.0))
    buf = np.array([1.0, 2.0, 3.0])
    losses = []
    for batch in ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]):
        buf[:] = batch  # one input buffer, reused
        losses.append((x * buf).sum())
    buf[:] = -1.0
    (losses[0] + losses[1]).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [11.0, 22.0, 33.0])


def test_retry_after_a_stale_value_is_refused_again_and_grads_stay_clean():
    x = _x()
    w = gg.tensor(np.array([2.0, 2.0, 2.0]), requires_grad=True)
    y = (gg.exp(x) + x * w).sum()
    with gg.no_grad():
        w[0] = 3.0
    for _ in range(2):
        with pytest.raises(RuntimeError, match=STALE):
            y.backward()
    assert x.grad is None and w.grad is None


# -- NumPy's copy rules ------------------------------------------------------------------------

def test_np_array_copies_np_asarray_shares():
    t = gg.tensor(np.array([1.0, 2.0, 3.0]))
    for copied in (np.array(t), np.array(t, copy=True), np.array(t, dtype=np.float32)):
        copied[0] = 99.0
        assert t.numpy()[0] == 1.0
    shared = np.asarray(t)
    assert np.shares_memory(shared, t.data)
    assert np.shares_memory(np.array(t, copy=False), t.data)
    with pytest.raises(ValueError, match="copy=False.*float64.*float32"):
        np.asarray(t, dtype=np.float32, copy=False)


def test_a_state_dict_snapshot_does_not_follow_training():
    model = nn.Linear(3, 2)
    snapshot = {k: np.array(v) for k, v in model.state_dict().items()}
    live = model.state_dict()  # documented: shares memory with the parameters
    before = {k: v.copy() for k, v in snapshot.items()}
    opt = optim.SGD(model.parameters(), lr=0.5)
    model(gg.tensor(np.ones((2, 3), np.float32))).sum().backward()
    opt.step()
    for k in snapshot:
        np.testing.assert_array_equal(snapshot[k], before[k])
        assert np.array_equal(live[k].numpy(), model.state_dict()[k].numpy())
    assert not np.array_equal(snapshot["weight"], model.weight.numpy())


def test_detach_and_state_dict_share_the_version_counter():
    model = nn.Linear(2, 2)
    out = model(gg.tensor(np.ones((1, 2), np.float32))).sum()
    model.state_dict()["weight"][0, 0] = 1.0  # a write through the shared state-dict tensor
    with pytest.raises(RuntimeError, match=STALE):
        out.backward()


# -- item 9: rejected steps change nothing ------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.1)], ids=["sgd", "adam"])
def test_an_optimizer_step_refused_on_one_parameter_changes_nothing(make):
    model = nn.mlp([3, 4, 2])
    opt = make(model.parameters())
    model(gg.tensor(np.ones((2, 3), np.float32))).sum().backward()
    opt.step()
    model(gg.tensor(np.ones((2, 3), np.float32))).sum().backward()
    params = list(model.parameters())
    params[2].data.flags.writeable = False
    before = [p.numpy().copy() for p in params]
    steps = [dict((k, v) for k, v in st.items() if k == "step") for st in opt.state]
    with pytest.raises(ValueError, match=r"step: parameter 2 \(float32 \(4, 2\)\) is read-only"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)
    assert steps == [dict((k, v) for k, v in st.items() if k == "step") for st in opt.state]


def test_load_state_dict_names_a_foreign_tensor_type(torch):
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"'weight' is a torch\.Tensor.*\.numpy\(\)"):
        model.load_state_dict({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})


def test_executor_refuses_an_empty_batch_and_changes_nothing():
    model = nn.mlp([3, 4, 2])
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1))
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(gg.ShapeError, match="batch is empty"):
        ex.step(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
    assert ex.predict(np.zeros((0, 3), np.float32)).shape == (0, 2)
