"""The training job behind `gpugrad train`: model, loss, gradient descent, learning-rate decay.

It follows the lecture's pipeline: an MLP (Linear layers + activations) scores each sample, the
softmax cross-entropy loss measures it, backpropagation gives the gradients, and (momentum) gradient
descent updates the weights with a learning rate that decays over training. Each epoch is
recorded (loss, train/test accuracy, learning rate, time), and the run writes metrics.json, the
trained model (model.npz: a model file, gg.nn.load_model), a curve plot and report.html. A run
whose loss or parameters stop being finite raises DivergenceError and writes nothing.

The model that is saved is the one that is evaluated: its first layer is gg.nn.Standardize with
the training set's statistics, so it takes inputs as gg.data.load gives them, and the test
accuracy a run reports is computed by that model on those raw inputs, exactly as
`gpugrad evaluate` computes it (the MLP behind it trains on inputs standardised once, by the same
layer).

NumPy's BLAS runs on `threads` threads (default 1, see DEFAULT_THREADS) through threadpoolctl.
"""
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

from . import backend, data, nn, optim
from .distributed.job import TrainJob
from .executor import Executor
from .ops import cross_entropy, softmax
from .serialization import write_atomically
from .tensor import no_grad, tensor

# Measured on the 2-core development machine (README, "Threads"): the MLPs trained here are small
# enough that BLAS threads mostly wait for each other, and on a shared machine OpenBLAS's spinning
# threads made digits training 5-40x slower than one thread.
DEFAULT_THREADS = 1

ENGINES = ("executor", "eager")
SCHEDULES = ("cosine", "step", "none")

# Per-dataset defaults, chosen so that the default command reaches the quality targets quickly;
# every one can be overridden on the command line.
DEFAULTS = {
    "digits": dict(epochs=60, batch_size=128, hidden=(256, 256), lr=0.2, optimizer="sgd",
                   weight_decay=5e-4),
    "spiral": dict(epochs=300, batch_size=30, hidden=(100,), lr=0.1, optimizer="sgd",
                   weight_decay=1e-3),
    "mnist1d": dict(epochs=100, batch_size=100, hidden=(512, 512), lr=0.003, optimizer="adam",
                    weight_decay=1e-4),
    "mnist": dict(epochs=10, batch_size=128, hidden=(256, 256), lr=0.05, optimizer="sgd",
                  weight_decay=5e-4),
}


class DivergenceError(FloatingPointError):
    """The loss or the parameters became NaN or infinite: training stopped at (epoch, step)."""

    def __init__(self, what, epoch, step, steps_per_epoch, cfg):
        super().__init__(f"training diverged: {what} at epoch {epoch}, step {step} of "
                         f"{steps_per_epoch} (--lr {cfg.lr}, --optimizer {cfg.optimizer}); "
                         f"nothing was written to {cfg.out}; try a smaller --lr")
        self.epoch, self.step = epoch, step


@dataclasses.dataclass
class Config:
    dataset: str = "digits"
    data: str = None
    device: str = "auto"
    epochs: int = None
    batch_size: int = None
    hidden: tuple = None
    activation: str = "relu"
    optimizer: str = None
    lr: float = None
    momentum: float = 0.9
    weight_decay: float = None
    l1: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    out: str = None
    engine: str = "executor"
    standardize: bool = True
    progress: bool = True
    threads: int = None  # NumPy's BLAS threads; None: DEFAULT_THREADS (noted, not required)
    distributed: bool = False  # data parallel under mpiexec (gg.distributed): batch is per rank

    def resolved(self):
        """A copy with the dataset's defaults filled in and every value checked."""
        if self.dataset not in DEFAULTS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {tuple(DEFAULTS)}")
        values = dataclasses.asdict(self)
        for key, default in DEFAULTS[self.dataset].items():
            if values[key] is None:
                values[key] = default
        cfg = Config(**values)
        cfg.hidden = tuple(cfg.hidden)
        if cfg.out is None:
            cfg.out = os.path.join("runs", cfg.dataset)
        threads = DEFAULT_THREADS if cfg.threads is None else cfg.threads
        for name, value in (("epochs", cfg.epochs), ("batch size", cfg.batch_size),
                            ("threads", threads)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        checks = [(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
                  (threads >= 1, f"threads must be >= 1, got {threads}"),
                  (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
                  (all(h >= 1 for h in cfg.hidden), "hidden sizes must be >= 1"),
                  (cfg.lr > 0, "learning rate must be > 0"),
                  (cfg.l1 >= 0 and cfg.weight_decay >= 0, "penalties must be >= 0"),
                  (cfg.activation in ("relu", "sigmoid", "tanh"), "activation must be relu, "
                   "sigmoid or tanh"),
                  (cfg.optimizer in ("sgd", "adam"), "optimizer must be sgd or adam"),
                  (cfg.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
                  (cfg.engine in ENGINES, f"engine must be one of {ENGINES}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return cfg


def run(config, log=print):
    """Train per `config`; returns the metrics dict (also written to <out>/metrics.json)."""
    cfg = config.resolved()
    job = TrainJob(cfg.distributed, cfg.device)  # a world of one without --distributed
    log = job.log(log)  # rank 0 alone prints and writes
    with blas_threads(cfg.threads, log) as threads:
        if job.main:
            _prepare_out(cfg.out)  # fail before training, not after it
        return _run(cfg, log, threads, job)


def _run(cfg, log, threads, job):
    ds = data.load(cfg.dataset, path=cfg.data)  # the fixed split: --seed varies the training only
    backend.manual_seed(cfg.seed)
    backend.set_device(cfg.device)
    device = backend.get_device()
    pre = nn.Standardize.fit(ds.x_train) if cfg.standardize else None
    x_train = ds.x_train if pre is None else scores(pre, ds.x_train)  # once, by the same layer
    net = nn.mlp([ds.num_features, *cfg.hidden, ds.num_classes], activation=cfg.activation)
    model = net if pre is None else nn.Sequential(pre, *net)  # what is saved and evaluated
    if cfg.optimizer == "sgd":
        opt = optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay)
    else:
        opt = optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = job.steps_per_epoch(len(ds.y_train), cfg.batch_size)
    sched = _scheduler(cfg, opt, steps_per_epoch)
    trainee = job.wrap(net)  # DataParallel under --distributed: gradients averaged over ranks
    step = _executor_step(trainee, net, opt, cfg.l1) if cfg.engine == "executor" else \
        _eager_step(trainee, opt, cfg.l1)
    predict = predictor(model)
    rng = np.random.default_rng(cfg.seed)
    log(f"{ds.describe()}; model {describe(model)}, {cfg.optimizer} lr {cfg.lr}, {cfg.epochs} "
        f"epochs on {device} ({cfg.engine})", file=sys.stderr)

    history, start = [], time.perf_counter()
    bar = _progress(cfg.epochs, cfg.progress and job.main, log)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss, count = _train_epoch(cfg, epoch, step, x_train, ds.y_train, rng, sched,
                                       steps_per_epoch, job)
            if not _finite(net):  # a last update that blew up: its loss was still finite
                raise DivergenceError("the parameters are no longer finite", epoch,
                                      steps_per_epoch, steps_per_epoch, cfg)
            if sched is not None and cfg.schedule == "step":
                sched.step()
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "loss": loss, "lr": opt.lr, "seconds": seconds,
                      "train_accuracy": job.accuracy(accuracy, predict, ds.x_train, ds.y_train),
                      "test_accuracy": job.accuracy(accuracy, predict, ds.x_test, ds.y_test)}
            history.append(record)
            if bar is not None:
                bar.set_postfix({"loss": f"{record['loss']:.4f}",  # a dict keeps this order
                                 "test_acc": f"{record['test_accuracy']:.4f}",
                                 "samples/s": f"{count / seconds:,.0f}"})
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    metrics = {"dataset": cfg.dataset, "device": device, "device_name": device_name(device),
               "engine": cfg.engine, "model": describe(model),
               "seconds": time.perf_counter() - start,
               "train_accuracy": history[-1]["train_accuracy"],
               "test_accuracy": history[-1]["test_accuracy"],
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "threads": threads, "world_size": job.size, "versions": versions(),
               "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
               "history": history}
    info = {"dataset": cfg.dataset, "data": cfg.data and os.path.abspath(cfg.data),
            "num_features": ds.num_features, "num_classes": ds.num_classes,
            "input_range": [float(ds.x_train.min()), float(ds.x_train.max())],
            "test_accuracy": metrics["test_accuracy"], "device": device}
    if job.main:
        _write_outputs(cfg.out, model, info, metrics, ds, log)
    return metrics


def describe(model):
    """'Standardize-64-256-256-10 relu': the layer sizes and activations of an MLP."""
    layers = list(model.modules())
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    sizes = [m.in_features for m in linear] + [m.out_features for m in linear[-1:]]
    acts = sorted({type(m).__name__.lower() for m in layers
                   if isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh))})
    pre = "Standardize-" if any(isinstance(m, nn.Standardize) for m in layers) else ""
    return pre + "-".join(map(str, sizes)) + (f" {'/'.join(acts)}" if acts else " linear")


@contextlib.contextmanager
def blas_threads(threads, log=print):
    """NumPy's BLAS on `threads` threads while the block runs (threadpoolctl). threads=None
    means DEFAULT_THREADS, and where threadpoolctl is missing only a note says the BLAS keeps
    its own default; an explicit number then is an ImportError. Yields the number of threads
    set (None: the BLAS's own default)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if threads is not None:
            raise ImportError("--threads needs threadpoolctl: pip install threadpoolctl") \
                from None
        log("threads: NumPy's BLAS default (threadpoolctl is not installed: pip install "
            "threadpoolctl)", file=sys.stderr)
        yield None
        return
    threads = threads or DEFAULT_THREADS
    with threadpool_limits(limits=threads, user_api="blas"):
        yield threads


def versions():
    """gpugrad's, NumPy's and CuPy's versions (CuPy: None where it is not installed)."""
    import importlib.metadata as md

    from . import __version__
    cupy = None
    for dist in ("cupy-cuda12x", "cupy-cuda13x", "cupy"):
        with contextlib.suppress(md.PackageNotFoundError):
            cupy = md.version(dist)
            break
    return {"gpugrad": __version__, "numpy": np.__version__, "cupy": cupy,
            "python": platform.python_version()}


def device_name(device):
    """The GPU's name and memory, or the CPU's model name and core count."""
    if device == "cuda":
        from . import cuda
        return cuda.device_name()
    from .bench import _cpu_name
    return f"{_cpu_name()}, {os.cpu_count()} cores"


def accuracy(predict, x, y, batch_size=4096):
    """Fraction of samples whose highest score is the true class."""
    correct = 0
    for i in range(0, len(y), batch_size):
        out = predict(x[i:i + batch_size])
        correct += int((out.argmax(axis=1) == y[i:i + batch_size]).sum())
    return correct / len(y)


def scores(model, x, batch_size=4096):
    """The model's outputs for every row of the host array x, batch by batch, as a host array."""
    predict = predictor(model)
    return np.concatenate([predict(x[i:i + batch_size])
                           for i in range(0, max(len(x), 1), batch_size)])


def classify(model, x, probabilities=False):
    """(classes, softmax probabilities or None) for the rows of x: each class is the highest
    score, exactly as accuracy() counts it."""
    logits = scores(model, x)
    probs = None
    if probabilities:
        with no_grad():
            probs = softmax(tensor(logits), axis=-1).numpy()
    return logits.argmax(axis=1), probs


def _train_epoch(cfg, epoch, step, x, y, rng, sched, steps_per_epoch, job):
    """One pass over the training set (this rank's shard of it): (mean loss, samples), over
    every rank. A NaN or infinite loss stops it."""
    total, count = 0.0, 0
    # NaN and inf are checked for here and stop the run: NumPy's warnings would only add noise
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        batches = job.batches(x, y, cfg.batch_size, rng=rng)
        for i, (xb, yb) in enumerate(batches, 1):
            loss = step(xb, yb)
            if not math.isfinite(loss):
                raise DivergenceError(f"the loss is {loss}", epoch, i, steps_per_epoch, cfg)
            total += loss * len(yb)
            count += len(yb)
            if sched is not None and cfg.schedule == "cosine":
                sched.step()
    return job.mean(total, count)


def _finite(model):
    return all(bool(np.isfinite(p.numpy()).all()) for p in model.parameters())


def _executor_step(model, net, opt, l1):
    """The recorded step (gg.Executor); with --l1 its loss carries the lecture's L1 term."""
    loss = "cross_entropy"
    if l1 > 0:
        weights = [p for name, p in net.named_parameters() if name.endswith("weight")]

        def loss(out, y):
            return cross_entropy(out, y) + optim.l1_penalty(weights, l1)
    return Executor(model, loss=loss, optimizer=opt).step


def _eager_step(model, opt, l1):
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]

    def step(xb, yb):
        loss = cross_entropy(model(tensor(xb)), yb)
        if l1 > 0:
            loss = loss + optim.l1_penalty(weights, l1)  # the lecture's L1 term, weights only
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def predictor(model):
    """x (host array) -> host array of the model's scores (logits), computed without a graph on
    the model's device, through the Executor's forward (evaluation and training share it)."""
    ex = Executor(model) if next(model.parameters(), None) is not None else None

    def predict(x):
        if ex is not None:
            return ex.predict(x).numpy()
        with no_grad():
            return model(x).numpy()
    return predict


def _scheduler(cfg, opt, steps_per_epoch):
    """The lecture: the learning rate has to be reduced during training to converge."""
    if cfg.schedule == "cosine":
        return optim.CosineLR(opt, total_steps=cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return optim.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    return None


def _progress(epochs, enabled, log):
    """A tqdm bar over the epochs; None (and a one-line note) when tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        log("no progress bar: tqdm is not installed (pip install tqdm)", file=sys.stderr)
        return None
    return tqdm(total=epochs, desc="train", unit="epoch", file=sys.stderr, dynamic_ncols=True)


def _prepare_out(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot use it as the output folder ({e.strerror})") \
            from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: the folder is not writable")


def _write_outputs(out, model, info, metrics, ds, log):
    try:  # strict JSON (no NaN or Infinity), checked before anything is written
        text = json.dumps(metrics, indent=2, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"metrics.json: refusing to write a value that is not a finite number "
                         f"({e})") from None
    nn.save_model(model, os.path.join(out, "model.npz"), info=info)
    write_atomically(os.path.join(out, "metrics.json"), lambda f: f.write(text.encode()))
    written = ["metrics.json", "model.npz"]
    png = os.path.join(out, "curves.png")
    plotted = plot_curves(metrics["history"], png, title=metrics["dataset"])
    if plotted:
        written.append("curves.png")
    from .report_html import render
    html = render(metrics, ds.x_test, ds.y_test, *classify(model, ds.x_test, probabilities=True))
    write_atomically(os.path.join(out, "report.html"), lambda f: f.write(html.encode()))
    written.append("report.html")
    note = "" if plotted else (" (no plot: matplotlib is not installed; pip install "
                               "matplotlib, or pip install \".[plot]\" from gpugrad's checkout)")
    log(f"wrote {', '.join(f'{out}/{name}' for name in written)}{note}", file=sys.stderr)


def plot_curves(history, path, title=""):
    """Loss and accuracy per epoch as a PNG; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history])
    ax1.set_yscale("log")  # the loss falls by orders of magnitude; a linear axis hides the tail
    ax1.set(xlabel="epoch", ylabel="training loss (log scale)", title=f"{title} loss")
    ax2.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax2.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title=f"{title} accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
