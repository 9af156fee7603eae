"""The training job behind `gpugrad train`: model, loss, gradient descent, learning-rate decay.

It follows the lecture's pipeline: an MLP (Linear layers + activations) scores each sample, the
softmax cross-entropy loss measures it, backpropagation gives the gradients, and (momentum) gradient
descent updates the weights with a learning rate that decays over training. Each epoch is
recorded (loss, train/test accuracy, learning rate, time), and the run writes metrics.json, a curve
plot and the trained model. A run whose loss or parameters stop being finite raises
DivergenceError and writes nothing.
"""
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from . import backend, data, nn, optim
from .executor import Executor
from .serialization import save
from .tensor import no_grad, tensor
from .ops import cross_entropy

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
        for name, value in (("epochs", cfg.epochs), ("batch size", cfg.batch_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        checks = [(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
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
        if cfg.l1 > 0 and cfg.engine == "executor":
            cfg.engine = "eager"  # the L1 penalty is an extra graph term: the eager path has it
        return cfg


def run(config, log=print):
    """Train per `config`; returns the metrics dict (also written to <out>/metrics.json)."""
    cfg = config.resolved()
    _prepare_out(cfg.out)  # fail before training, not after it
    ds = data.load(cfg.dataset, path=cfg.data)  # the fixed split: --seed varies the training only
    if cfg.standardize:
        ds = standardize(ds)
    backend.manual_seed(cfg.seed)
    backend.set_device(cfg.device)
    device = backend.get_device()
    model = nn.mlp([ds.num_features, *cfg.hidden, ds.num_classes], activation=cfg.activation)
    if cfg.optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay)
    else:
        opt = optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(ds.y_train) // cfg.batch_size)
    sched = _scheduler(cfg, opt, steps_per_epoch)
    step = _executor_step(model, opt) if cfg.engine == "executor" else \
        _eager_step(model, opt, cfg.l1)
    predict = _predictor(model)
    rng = np.random.default_rng(cfg.seed)
    log(f"{ds.describe()}; model {'-'.join(map(str, [ds.num_features, *cfg.hidden, ds.num_classes]))} "
        f"{cfg.activation}, {cfg.optimizer} lr {cfg.lr}, {cfg.epochs} epochs on {device} "
        f"({cfg.engine})", file=sys.stderr)

    history, start = [], time.perf_counter()
    bar = _progress(cfg.epochs, cfg.progress, log)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss, count = _train_epoch(cfg, epoch, step, ds, rng, sched, steps_per_epoch)
            if not _finite(model):  # a last update that blew up: its loss was still finite
                raise DivergenceError("the parameters are no longer finite", epoch,
                                      steps_per_epoch, steps_per_epoch, cfg)
            if sched is not None and cfg.schedule == "step":
                sched.step()
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "loss": loss, "lr": opt.lr, "seconds": seconds,
                      "train_accuracy": accuracy(predict, ds.x_train, ds.y_train),
                      "test_accuracy": accuracy(predict, ds.x_test, ds.y_test)}
            history.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                acc=f"{record['test_accuracy']:.4f}",
                                samples_s=f"{count / seconds:,.0f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    metrics = {"dataset": cfg.dataset, "device": device, "engine": cfg.engine,
               "seconds": time.perf_counter() - start,
               "train_accuracy": history[-1]["train_accuracy"],
               "test_accuracy": history[-1]["test_accuracy"],
               "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
               "history": history}
    _write_outputs(cfg.out, model, metrics, log)
    return metrics


def standardize(ds):
    """Scale each feature to zero mean and unit variance with the training set's statistics.

    Features that barely vary (digits' always-blank corner pixels) get a floor on their scale of
    a tenth of the average spread, so a rare non-zero value does not become a huge input."""
    mean, std = ds.x_train.mean(axis=0), ds.x_train.std(axis=0)
    std = np.maximum(std, 0.1 * std.mean())
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return dataclasses.replace(ds, x_train=scale(ds.x_train), x_test=scale(ds.x_test))


def accuracy(predict, x, y, batch_size=4096):
    """Fraction of samples whose highest score is the true class."""
    correct = 0
    for i in range(0, len(y), batch_size):
        scores = predict(x[i:i + batch_size])
        correct += int((scores.argmax(axis=1) == y[i:i + batch_size]).sum())
    return correct / len(y)


def _train_epoch(cfg, epoch, step, ds, rng, sched, steps_per_epoch):
    """One pass over the training set: (mean loss, samples). A NaN or infinite loss stops it."""
    total, count = 0.0, 0
    # NaN and inf are checked for here and stop the run: NumPy's warnings would only add noise
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        batches = data.batches(ds.x_train, ds.y_train, cfg.batch_size, rng=rng)
        for i, (xb, yb) in enumerate(batches, 1):
            loss = step(xb, yb)
            if not math.isfinite(loss):
                raise DivergenceError(f"the loss is {loss}", epoch, i, steps_per_epoch, cfg)
            total += loss * len(yb)
            count += len(yb)
            if sched is not None and cfg.schedule == "cosine":
                sched.step()
    return total / count, count


def _finite(model):
    return all(bool(np.isfinite(p.numpy()).all()) for p in model.parameters())


def _executor_step(model, opt):
    ex = Executor(model, loss="cross_entropy", optimizer=opt)
    return ex.step


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


def _predictor(model):
    def predict(x):
        with no_grad():
            return model(tensor(x)).numpy()
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


def _write_outputs(out, model, metrics, log):
    try:  # strict JSON (no NaN or Infinity), checked before anything is written
        text = json.dumps(metrics, indent=2, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"metrics.json: refusing to write a value that is not a finite number "
                         f"({e})") from None
    save(model, os.path.join(out, "model.npz"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.write(text)
    png = os.path.join(out, "curves.png")
    if plot_curves(metrics["history"], png, title=metrics["dataset"]):
        log(f"wrote {out}/metrics.json, {out}/model.npz, {png}", file=sys.stderr)
    else:
        log(f"wrote {out}/metrics.json, {out}/model.npz (no plot: matplotlib is not installed; "
            f"pip install matplotlib, or pip install 'gpugrad[plot]')", file=sys.stderr)


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
    ax1.set(xlabel="epoch", ylabel="training loss", title=f"{title} loss")
    ax2.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax2.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title=f"{title} accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
