"""The bad-input catalogue: every public entry point of API.md, and the CLI, called with wrong
types, shapes, dtypes, devices and files. Each row asserts the exception type, a message naming
what was wrong, and that nothing changed: parameters, gradients, optimizer and scheduler state,
files on disk (byte for byte), the default device, the generator, the grad mode."""
import contextlib
import copy
import io

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend, data, nn, optim
from gpugrad.cli import main
from gpugrad.tensor import grad_mode

NO_GPU = pytest.mark.skipif(gg.cuda.is_available(), reason="a usable GPU makes this input valid")


def _bytes(a):
    return None if a is None else (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())


class World:
    """Everything a bad call could damage: a trained model with gradients, Adam with state, a
    scheduler, an Executor, a checkpoint and an output folder on disk; plus aux files (bad
    inputs themselves, outside the snapshot)."""

    def __init__(self, tmp_path):
        gg.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
        self.opt = optim.Adam(self.model.parameters(), lr=0.01)
        self.sched = optim.StepLR(self.opt, step_size=2)
        self.x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
        self.y = np.array([0, 1, 2, 0, 1, 2])
        self.ex = gg.Executor(self.model, optimizer=self.opt)
        self.ex.step(self.x, self.y)  # optimizer moments exist, every parameter has a grad
        self.sched.step()
        self.leaf = gg.tensor([1.0, 2.0, 3.0], requires_grad=True)
        self.dir, self.aux = tmp_path / "state", tmp_path / "aux"
        self.dir.mkdir()
        self.aux.mkdir()
        self.ckpt = self.dir / "model.npz"
        gg.save(self.model, self.ckpt)
        (self.dir / "a_file").write_text("not a folder")
        (self.aux / "notes.txt").write_text("hello")
        (self.aux / "bad.npz").write_bytes(b"garbage")
        gg.save(nn.Sequential(nn.Linear(4, 2)), self.aux / "other.npz")
        (self.aux / "idx").mkdir()
        for name in data._IDX_NAMES:  # 6 bytes: shorter than any IDX header
            (self.aux / "idx" / name).write_bytes(b"\x00\x00\x08\x03\x00\x00")

    def snapshot(self):
        params = list(self.model.named_parameters())
        return {
            "params": [(n, id(p), p.device, _bytes(p.data)) for n, p in params],
            "grads": [_bytes(p.grad.data) if p.grad is not None else None for _, p in params],
            "optimizer": (self.opt.lr, [{k: _bytes(v) if isinstance(v, np.ndarray) else v
                                         for k, v in st.items() if k != "bk"}
                                        for st in self.opt.state]),
            "scheduler": (self.sched.last_epoch, self.sched.base_lr),
            "leaf": (_bytes(self.leaf.data), self.leaf.grad, self.leaf.requires_grad),
            "files": {str(p.relative_to(self.dir)): p.read_bytes() if p.is_file() else "dir"
                      for p in sorted(self.dir.rglob("*"))},
            "device": gg.get_device(),
            "generator": copy.deepcopy(backend.get_backend("cpu").rng.bit_generator.state),
            "grad mode": (grad_mode.enabled, grad_mode.anomaly),
        }


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


class CliFailed(Exception):
    """The CLI exited non-zero; the message is the exit status and its last stderr line."""


def cli(w, *args):
    # The CLI is a process of its own: `train` seeds the generators and picks the default device
    # for the process, by design. In-process, put them back: what a failed run must not touch is
    # what outlives the process, the files.
    err, rng = io.StringIO(), backend.get_backend("cpu").rng
    saved = copy.deepcopy(rng.bit_generator.state), gg.get_device()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            rc = e.code
        finally:
            backend.get_backend("cpu").rng.bit_generator.state = saved[0]
            gg.set_device(saved[1])
    assert "Traceback" not in err.getvalue()
    if rc != 0:
        lines = err.getvalue().strip().splitlines()
        failed = CliFailed(f"exit {rc}: {lines[-1] if lines else ''}")
        failed.stderr = err.getvalue()
        raise failed


def train(w, *args):
    """`gpugrad train` on a quick setup, writing to the world's folder if it ever succeeded."""
    cli(w, "train", "--dataset", "spiral", "--epochs", "1", "--device", "cpu", "--no-progress",
        "--out", str(w.dir), *args)


def with_grad(w, index, bad, call):
    """Give parameter `index` a bad gradient for the duration of `call`."""
    p = list(w.model.parameters())[index]
    kept, p.grad = p.grad, bad
    try:
        call()
    finally:
        p.grad = kept


def no_graph(w):
    with gg.no_grad():
        return w.model(gg.tensor(w.x)).sum()


def raise_inside(ctx):
    with ctx:
        raise ValueError("boom from user code")


class WrongGrad(gg.Function):
    def forward(self, a):
        return a * 2

    def backward(self, upstream):
        return (upstream * 3,)


def state_with(w, **changes):
    """The model's state dict as NumPy arrays, valid values zeroed, with `changes` applied."""
    sd = {k: np.zeros_like(v.numpy()) for k, v in w.model.state_dict().items()}
    sd.update({k.replace("__", "."): v for k, v in changes.items()})
    return sd


CASES = [
    # -- devices and seeds
    ("set_device non-string", lambda w: gg.set_device(0), gg.DeviceError,
     r"unknown device 0: expected one of 'cpu', 'cuda', 'auto'"),
    pytest.param("set_device cuda", lambda w: gg.set_device("cuda"), gg.DeviceError,
                 r"device 'cuda' is not usable: .+", marks=NO_GPU),
    ("manual_seed float", lambda w: gg.manual_seed(1.5), TypeError,
     "manual_seed: expected a non-negative int, got 1.5"),
    # -- tensor creation
    ("tensor from dict", lambda w: gg.tensor({"a": 1}), TypeError, "from dict"),
    ("tensor mixed list", lambda w: gg.tensor([1.0, "a"]), TypeError, "list holding <U"),
    ("tensor complex array", lambda w: gg.tensor(np.array([1 + 2j])), TypeError,
     "unsupported dtype complex128"),
    ("tensor unknown device", lambda w: gg.tensor([1.0], device="tpu"), gg.DeviceError,
     "unknown device 'tpu'"),
    pytest.param("tensor on cuda", lambda w: gg.tensor([1.0], device="cuda"), gg.DeviceError,
                 "'cuda' is not usable", marks=NO_GPU),
    ("zeros negative size", lambda w: gg.zeros(2, -1), TypeError,
     r"zeros: shape must be non-negative ints, got \(2, -1\)"),
    ("ones float size", lambda w: gg.ones(2.5), TypeError, r"ones: .*got \(2.5,\)"),
    ("randn complex", lambda w: gg.randn(2, dtype="complex64"), TypeError,
     "randn: unsupported dtype complex64"),
    # -- tensor methods and attributes
    ("item of three", lambda w: w.leaf.item(), ValueError, r"one-element .*shape \(3,\)"),
    ("bool of three", lambda w: bool(w.leaf), ValueError, r"shape \(3,\) is ambiguous"),
    ("len of 0-d", lambda w: len(gg.tensor(1.0)), TypeError, "len\\(\\) of a 0-d tensor"),
    ("requires_grad on ints", lambda w: setattr(gg.tensor([1]), "requires_grad", True),
     TypeError, "only floating-point tensors can require grad; this tensor is int64"),
    ("requires_grad off a non-leaf", lambda w: setattr(w.leaf * 2, "requires_grad", False),
     RuntimeError, "non-leaf"),
    ("to unknown device", lambda w: w.leaf.to("tpu"), gg.DeviceError, "'tpu'"),
    ("setitem into a grad leaf", lambda w: w.leaf.__setitem__(0, 5.0), RuntimeError,
     "in-place write to a tensor that requires grad"),
    ("setitem wrong shape", lambda w: gg.zeros(3).__setitem__(slice(None), np.ones(4)),
     ValueError, r"shape \(4,\) into shape \(3,\)"),
    # -- ops
    ("sub not broadcastable", lambda w: gg.ones(2, 3) - gg.ones(3, 2), gg.ShapeError,
     r"sub: shapes \(2, 3\) and \(3, 2\)"),
    ("div by None", lambda w: w.leaf / None, TypeError, "div: unsupported operand .*NoneType"),
    ("pow by dict", lambda w: w.leaf ** {}, TypeError, "pow: unsupported operand of type dict"),
    ("matmul vectors", lambda w: w.leaf @ gg.ones(4), gg.ShapeError,
     r"matmul: inner sizes differ: \(3,\) @ \(4,\)"),
    ("matmul str", lambda w: w.leaf @ "x", TypeError, "matmul: unsupported operand .*str"),
    ("exp of str", lambda w: gg.exp("e"), TypeError, "cannot make a tensor from str"),
    ("sum float axis", lambda w: w.leaf.sum(axis=1.5), (TypeError, gg.ShapeError),
     r"sum: axis .*1\.5"),
    ("mean axis out of range", lambda w: w.leaf.mean(axis=1), gg.ShapeError,
     "mean: axis 1 is out of range for a 1-d tensor"),
    ("max repeated axis", lambda w: gg.ones(2, 2).max(axis=(1, -1)), gg.ShapeError,
     "max: repeated axis"),
    ("reshape two unknowns", lambda w: w.leaf.reshape(-1, -1), gg.ShapeError,
     r"reshape: cannot reshape \(3,\)"),
    ("reshape float", lambda w: w.leaf.reshape(1.5, 2), TypeError,
     r"reshape: shape must be ints, got \(1.5, 2\)"),
    ("transpose too few axes", lambda w: gg.ones(2, 3).transpose(0), gg.ShapeError,
     r"transpose: axes \(0,\) are not a permutation"),
    ("getitem float index", lambda w: w.leaf[0.5], IndexError, r"index 0.5 .*shape \(3,\)"),
    ("getitem too many", lambda w: w.leaf[0, 0], IndexError, r"\(0, 0\) .*shape \(3,\)"),
    ("astype complex", lambda w: w.leaf.astype("complex64"), TypeError, "astype: .*complex64"),
    ("softmax axis", lambda w: gg.softmax(gg.ones(2, 3), axis=2), gg.ShapeError,
     "softmax: axis 2 is out of range for a 2-d tensor"),
    ("log_softmax axis", lambda w: gg.log_softmax(w.leaf, axis=-2), gg.ShapeError,
     "log_softmax: axis -2"),
    ("cross_entropy int logits", lambda w: gg.cross_entropy(gg.ones(2, 3, dtype="int64"),
                                                            [0, 1]),
     TypeError, "logits must be floating point, got int64"),
    ("cross_entropy 2-d labels", lambda w: gg.cross_entropy(gg.ones(2, 3), [[0], [1]]),
     gg.ShapeError, r"labels have shape \(2, 1\), expected \(2,\)"),
    ("cross_entropy str labels", lambda w: gg.cross_entropy(gg.ones(2, 3), "ab"), TypeError,
     "labels must be integers, got dtype <U2"),
    ("cross_entropy no classes", lambda w: gg.cross_entropy(gg.ones(2, 0), [0, 0]),
     gg.ShapeError, r"\(2, 0\) have no classes"),
    ("mse_loss reduction", lambda w: gg.mse_loss(w.leaf, w.leaf, reduction="avg"), ValueError,
     "mse_loss: reduction must be one of .* got 'avg'"),
    ("mse_loss str target", lambda w: gg.mse_loss(w.leaf, "abc"), TypeError, "from str"),
    # -- backward
    ("backward non-scalar", lambda w: w.model(gg.tensor(w.x)).backward(), RuntimeError,
     r"grad can be omitted only for a one-element output; .*shape \(6, 3\)"),
    ("backward grad shape", lambda w: w.model(gg.tensor(w.x)).backward(np.ones((3, 6))),
     gg.ShapeError, r"grad has shape \(3, 6\), output has shape \(6, 3\)"),
    ("backward str grad", lambda w: (w.leaf * 2).sum().backward("abc"), TypeError,
     "backward: grad"),
    ("backward without graph", lambda w: no_graph(w).backward(), RuntimeError,
     "does not require grad and has no graph"),
    # -- no_grad
    ("no_grad with an argument", lambda w: gg.no_grad(True), TypeError, "no_grad"),
    ("error inside no_grad", lambda w: raise_inside(gg.no_grad()), ValueError, "boom"),
    ("error inside detect_anomaly", lambda w: raise_inside(gg.detect_anomaly()), ValueError,
     "boom"),
    ("no_grad decorating a non-callable", lambda w: gg.no_grad()(42), TypeError, "no_grad"),
    # -- gradcheck
    ("gradcheck nothing to check", lambda w: gg.gradcheck(lambda a: a * 2, [gg.ones(2)]),
     ValueError, "no input requires grad"),
    ("gradcheck fn returns float", lambda w: gg.gradcheck(lambda a: 1.0, [w.leaf]), TypeError,
     "fn must return a Tensor, got float"),
    ("gradcheck fn casts", lambda w: gg.gradcheck(lambda a: a.astype("float32"), [w.leaf]),
     TypeError, "fn returned float32"),
    ("gradcheck wrong gradient", lambda w: gg.gradcheck(WrongGrad.apply, [w.leaf]),
     gg.GradcheckError, r"input 0 \(shape \(3,\)\) at index \(\d,\): numeric .* vs analytic"),
    ("gradcheck eps 0", lambda w: gg.gradcheck(lambda a: a * 2, [w.leaf], eps=0), ValueError,
     "gradcheck: eps"),
    ("gradcheck inputs not iterable", lambda w: gg.gradcheck(lambda a: a, 5), TypeError,
     "gradcheck: inputs"),
    # -- nn
    ("Linear zero features", lambda w: nn.Linear(0, 3), ValueError,
     "in_features must be a positive int, got 0"),
    ("Linear bool features", lambda w: nn.Linear(True, 3), ValueError, "got True"),
    ("Linear int dtype", lambda w: nn.Linear(2, 3, dtype="int32"), TypeError,
     "parameters must be floating point, got dtype int32"),
    ("Linear unknown init", lambda w: nn.Linear(2, 3, init="lecun"), ValueError,
     "init must be one of .* got 'lecun'"),
    ("Sequential of a function", lambda w: nn.Sequential(w.model[0], gg.relu), TypeError,
     "layer 1 is a function, not a gg.nn.Module"),
    ("model wrong features", lambda w: w.model(gg.ones(2, 3)), gg.ShapeError,
     r"Linear: input has 3 features \(shape \(2, 3\)\), expected 4"),
    ("model 0-d input", lambda w: w.model(gg.tensor(1.0)), gg.ShapeError, "input has no features"),
    ("model str input", lambda w: w.model("abc"), TypeError, "from str"),
    ("load_state_dict extra key", lambda w: w.model.load_state_dict(state_with(w, extra=1)),
     KeyError, r"unexpected keys \['extra'\]"),
    ("load_state_dict list value", lambda w: w.model.load_state_dict(
        state_with(w, **{"0__weight": [[0.0] * 5] * 4})), TypeError, "'0.weight' is a list"),
    ("load_state_dict dtype", lambda w: w.model.load_state_dict(
        state_with(w, **{"2__bias": np.zeros(3)})), TypeError,
     "'2.bias' has dtype float64, expected float32"),
    ("load_state_dict last shape", lambda w: w.model.load_state_dict(  # earlier keys are valid
        state_with(w, **{"2__bias": np.zeros(4, np.float32)}), strict=False), gg.ShapeError,
     r"'2.bias' has shape \(4,\), expected \(3,\)"),
    ("load_state_dict other model", lambda w: w.model.load_state_dict(gg.load(w.aux /
                                                                               "other.npz")),
     KeyError, r"missing keys \['0.weight', '0.bias', '2.weight', '2.bias'\]|unexpected"),
    ("load_state_dict None", lambda w: w.model.load_state_dict(None), TypeError,
     "load_state_dict"),
    ("Module.to unknown device", lambda w: w.model.to("tpu"), gg.DeviceError, "'tpu'"),
    # -- save / load
    ("save a list", lambda w: gg.save([1], w.ckpt), TypeError, "got list"),
    ("save bad value over a checkpoint", lambda w: gg.save(
        {"0.weight": w.model.state_dict()["0.weight"], "bad": object()}, w.ckpt), TypeError,
     "'bad' is a object"),
    ("save int key", lambda w: gg.save({1: np.ones(2)}, w.ckpt), TypeError,
     "keys must be non-empty strings, got 1"),
    ("save object array", lambda w: gg.save({"w": np.array([None])}, w.ckpt), TypeError,
     "'w' has dtype object"),
    ("save into missing folder", lambda w: gg.save(w.model, w.dir / "no" / "m.npz"),
     FileNotFoundError, "directory does not exist"),
    ("save onto a folder", lambda w: gg.save(w.model, w.dir), IsADirectoryError, "state"),
    ("save float path", lambda w: gg.save(w.model, 3.5), TypeError, "not float"),
    ("load text file", lambda w: gg.load(w.aux / "notes.txt"), ValueError,
     "notes.txt' is not a valid .npz checkpoint"),
    ("load folder", lambda w: gg.load(w.aux), IsADirectoryError, "aux"),
    ("load None", lambda w: gg.load(None), TypeError, "not NoneType"),
    # -- optimizers and schedulers
    ("SGD given the model", lambda w: optim.SGD(w.model, lr=0.1), TypeError,
     "parameter 0 is a Linear, not a Tensor"),
    ("SGD lr None", lambda w: optim.SGD(w.model.parameters(), lr=None), TypeError,
     "SGD: lr must be a number, got None"),
    ("SGD lr nan", lambda w: optim.SGD(w.model.parameters(), lr=float("nan")), ValueError,
     "lr must be >= 0, got nan"),
    ("Adam eps str", lambda w: optim.Adam(w.model.parameters(), eps="1e-8"), TypeError,
     "Adam: eps must be a number, got '1e-8'"),
    ("Adam betas scalar", lambda w: optim.Adam(w.model.parameters(), betas=0.9), TypeError,
     "Adam: betas"),
    ("Adam three betas", lambda w: optim.Adam(w.model.parameters(), betas=(0.9, 0.99, 0.1)),
     ValueError, "Adam: betas"),
    ("step with an int grad", lambda w: with_grad(w, 3, gg.zeros(3, dtype="int64"),
                                                  w.opt.step),
     TypeError, "Adam.step: parameter 3's grad has dtype int64"),
    ("step with a grad on the wrong shape", lambda w: with_grad(w, 3, gg.zeros(4), w.opt.step),
     gg.ShapeError, r"parameter 3 has shape \(3,\) but its grad has shape \(4,\)"),
    ("StepLR given the model", lambda w: optim.StepLR(w.model, 2), TypeError,
     "expected a gg.optim optimizer, got Sequential"),
    ("StepLR float step", lambda w: optim.StepLR(w.opt, 2.5), ValueError, "got 2.5"),
    ("StepLR negative gamma", lambda w: optim.StepLR(w.opt, 2, gamma=-1), ValueError,
     "gamma must be >= 0"),
    ("CosineLR zero steps", lambda w: optim.CosineLR(w.opt, 0), ValueError,
     "total_steps must be a positive int, got 0"),
    ("CosineLR str min_lr", lambda w: optim.CosineLR(w.opt, 9, min_lr="x"), TypeError,
     "min_lr must be a number"),
    # -- Executor
    ("Executor.step 3-d input", lambda w: w.ex.step(np.ones((6, 4, 1)), w.y), gg.ShapeError,
     r"Linear: input has 1 features \(shape \(6, 4, 1\)\), expected 4"),
    ("Executor.step labels None", lambda w: w.ex.step(w.x, None), TypeError,
     r"y \(the labels or targets of the batch\) is required"),
    ("Executor.predict str", lambda w: w.ex.predict("abc"), gg.ShapeError, r"got \(\)"),
    ("Executor str optimizer", lambda w: gg.Executor(w.model, optimizer="sgd").step(w.x, w.y),
     TypeError, "optimizer"),
    # -- the command line
    ("train batch size 0", lambda w: train(w, "--batch-size", "0"), CliFailed,
     "exit 2: gpugrad: error: batch size must be >= 1"),
    ("train negative lr", lambda w: train(w, "--lr", "-1"), CliFailed,
     "learning rate must be > 0"),
    ("train negative momentum", lambda w: train(w, "--momentum", "-1"), CliFailed,
     "SGD: momentum must be >= 0, got -1.0"),
    ("train epochs not a number", lambda w: train(w, "--epochs", "abc"), CliFailed,
     "exit 2: .*argument --epochs: invalid int value: 'abc'"),
    ("train unknown activation", lambda w: train(w, "--activation", "gelu"), CliFailed,
     "invalid choice: 'gelu'"),
    ("train --data for spiral", lambda w: train(w, "--data", str(w.aux / "bad.npz")),
     CliFailed, "--data is for mnist only"),
    ("train mnist garbage npz", lambda w: cli(w, "train", "--dataset", "mnist", "--data",
                                              str(w.aux / "bad.npz"), "--out", str(w.dir)),
     CliFailed, r"bad.npz: not a valid .npz \(zip\) archive"),
    ("train mnist truncated IDX", lambda w: cli(w, "train", "--dataset", "mnist", "--data",
                                                str(w.aux / "idx"), "--out", str(w.dir)),
     CliFailed, "train-images-idx3-ubyte: 6 bytes, shorter than the 16-byte IDX images header"),
    ("train --out is a file", lambda w: train(w, "--out", str(w.dir / "a_file")), CliFailed,
     "a_file"),
    ("info with an argument", lambda w: cli(w, "info", "--bogus"), CliFailed,
     "exit 2: .*unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("name, call, exc, pattern", CASES,
                         ids=[c.values[0] if hasattr(c, "marks") else c[0] for c in CASES])
def test_bad_input_raises_names_it_and_changes_nothing(world, name, call, exc, pattern):
    before = world.snapshot()
    with pytest.raises(exc, match=pattern):
        call(world)
    assert world.snapshot() == before


@pytest.mark.parametrize("call", [lambda: gg.tensor(1.0).sum(axis=0),
                                  lambda: gg.tensor(1.0).mean(axis=0),
                                  lambda: gg.tensor(1.0).max(axis=0),
                                  lambda: gg.softmax(gg.zeros(3, 0)),
                                  lambda: gg.log_softmax(gg.zeros(3, 0))],
                         ids=["sum", "mean", "max", "softmax", "log_softmax"])
def test_degenerate_axes_work_or_raise_shape_error(call):
    try:
        out = call()  # PyTorch's answer: the element itself, an empty softmax
    except gg.ShapeError:
        return
    assert out.size in (0, 1)


def test_cli_rejects_an_out_file_before_training(world):
    with pytest.raises(CliFailed, match="--out") as failed:
        train(world, "--out", str(world.dir / "a_file"))
    assert "train /" not in failed.value.stderr  # the data set line is logged as training starts
