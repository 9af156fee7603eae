"""`gpugrad train | evaluate | predict | bench | info` (also `python -m gpugrad`).

Expected failures (bad arguments, missing or malformed data files, an unusable device) print one
line, `gpugrad: error: ...`, and exit with status 2: no traceback for a user's mistake. A run that
fails on its way (training diverged, out of memory) prints one line too and exits with status 1.
An unknown option prints the usage of the command it was given to.

Each command is a function `_<name>(args)`; its options are added by `_<name>_options(parser)`.
`train`'s options map onto gpugrad.train.Config by name (dashes become underscores), so a new
option is one add_argument and one Config field.
"""
import argparse
import dataclasses
import platform
import sys

from .errors import DeviceError


def main(argv=None):
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top-level one
        parser.commands.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "distributed", False):  # a failure on one rank ends every rank
        from .distributed.job import run_or_abort
        return run_or_abort(lambda: _run(args))
    return _run(args)


def _run(args):
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, DeviceError, OSError) as e:
        print(f"gpugrad: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # gpugrad.train.DivergenceError: NaN or inf loss/weights
        print(f"gpugrad: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except MemoryError as e:  # NumPy's "Unable to allocate ...", CuPy's OutOfMemoryError
        print(f"gpugrad: error: out of memory{': ' if str(e) else ''}{_one_line(e)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpugrad: interrupted", file=sys.stderr)
        return 130


def _one_line(error):
    return " ".join(str(error).split())


def _parser():
    from . import __version__
    p = argparse.ArgumentParser(prog="gpugrad", description="Reverse-mode autodiff on NVIDIA "
                                "GPUs (CuPy) with a NumPy fallback.")
    p.add_argument("--version", action="version", version=f"gpugrad {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    p.commands = {}
    for name, help_text, add_options, run in (
            ("train", "train an MLP on a dataset; write the model, metrics and a report",
             _train_options, _train),
            ("evaluate", "recompute a trained model's accuracy on its dataset",
             _evaluate_options, _evaluate),
            ("predict", "classify raw inputs with a trained model", _predict_options, _predict),
            ("bench", "CPU vs GPU (and PyTorch) timings, side by side", _bench_options, _bench),
            ("info", "versions, devices and CUDA kernel status", lambda p: None, _info)):
        command = sub.add_parser(name, help=help_text,
                                 description=help_text[0].upper() + help_text[1:] + ".")
        add_options(command)
        command.set_defaults(run=run)
        p.commands[name] = command
    return p


# ---- train ----------------------------------------------------------------------------------

def _train_options(t):
    from .data import DATASETS
    from .train import DEFAULT_THREADS
    t.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="data set to train on (default: %(default)s)")
    t.add_argument("--data", metavar="PATH", help="data files, for mnist only: a folder with "
                   "the four IDX files or an .npz (default: none)")
    _device_option(t)
    t.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the training set " + _per_dataset("epochs"))
    t.add_argument("--batch-size", type=int, metavar="B",
                   help="samples per step " + _per_dataset("batch_size"))
    t.add_argument("--hidden", type=_sizes, metavar="H1,H2,...",
                   help="hidden layer sizes, e.g. 256,256; 'none' for a linear classifier "
                        f"({_per_dataset('hidden')[1:-1]})")
    t.add_argument("--activation", choices=("relu", "sigmoid", "tanh"), default="relu",
                   help="activation after each hidden layer (default: %(default)s)")
    t.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="sgd (with --momentum) or adam " + _per_dataset("optimizer"))
    t.add_argument("--lr", type=float, help="initial learning rate "
                   f"{_per_dataset('lr')}")
    t.add_argument("--momentum", type=float, default=0.9, metavar="M",
                   help="SGD momentum (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, metavar="W",
                   help="L2 penalty strength " + _per_dataset("weight_decay"))
    t.add_argument("--l1", type=float, default=0.0, metavar="S",
                   help="L1 penalty on weights; uses the eager engine (default: %(default)s)")
    t.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine",
                   help="learning-rate decay (default: %(default)s)")
    t.add_argument("--engine", choices=("executor", "eager"), default="executor",
                   help="executor: the planned fast path; eager: the autograd graph "
                        "(default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the initial weights and the batch order (default: %(default)s)")
    t.add_argument("--out", metavar="DIR",
                   help="output folder (default: runs/<dataset>)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on stderr when tqdm is installed)")
    _threads_option(t, DEFAULT_THREADS)
    t.add_argument("--distributed", action="store_true",
                   help="data parallel over the ranks of `mpiexec -n N gpugrad train ...` "
                        "(gg.distributed): --batch-size is per rank, rank 0 prints and writes "
                        "(default: one process)")


def _per_dataset(key):
    from .train import DEFAULTS
    shown = {name: (",".join(map(str, d[key])) if key == "hidden" else d[key])
             for name, d in DEFAULTS.items()}
    return "(default: per dataset: " + ", ".join(f"{n} {v}" for n, v in shown.items()) + ")"


def _device_option(p):
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is usable, else cpu (default: %(default)s)")


def _threads_option(p, default):
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help=f"threads for NumPy's BLAS (default: {default}; measured fastest for "
                        "these models, see the README)")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _sizes(text):
    if text.strip().lower() in ("none", "0", ""):
        return ()  # no hidden layer: a linear softmax classifier (logistic regression)
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive ints, got {text!r}")
    return sizes


def _train(args):
    from .train import Config, run
    names = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in vars(args).items() if k in names},
                 progress=not args.no_progress)
    metrics = run(cfg)
    if metrics.get("world_size", 1) > 1:
        from .distributed import rank
        if rank() != 0:
            return 0
    print(f"train accuracy: {metrics['train_accuracy']:.4f} ({metrics['seconds']:.1f} s on "
          f"{metrics['device']})")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


# ---- evaluate and predict -------------------------------------------------------------------

def _model_options(p):
    p.add_argument("path", metavar="RUN_DIR_OR_MODEL",
                   help="a gpugrad train output folder, or its model.npz")
    _device_option(p)
    from .train import DEFAULT_THREADS
    _threads_option(p, DEFAULT_THREADS)


def _evaluate_options(e):
    from .data import DATASETS
    _model_options(e)
    e.add_argument("--dataset", choices=DATASETS,
                   help="data set to evaluate on (default: the one the model was trained on)")
    e.add_argument("--data", metavar="PATH",
                   help="mnist's data files (default: the --data the model was trained with)")


def _predict_options(p):
    _model_options(p)
    p.add_argument("--input", metavar="FILE", required=True,
                   help="raw inputs, one sample a row, as gg.data.load gives them: .npy, .npz "
                        "(array 'x' or its only one) or .csv (required)")
    p.add_argument("--out", metavar="FILE", help="write the predictions to a .npy, .npz or "
                   ".csv file (default: CSV on stdout)")
    p.add_argument("--probabilities", action="store_true",
                   help="also the softmax probabilities of every class (default: classes only)")


def _load(args):
    """(the model, its file, the device it is on) for RUN_DIR_OR_MODEL and --device."""
    from . import backend, inference, nn
    file = inference.model_file(args.path)
    return nn.load_model(file, device=args.device), file, backend.get_backend(args.device).name


def _evaluate(args):
    from . import inference
    from .train import blas_threads
    with blas_threads(args.threads):
        model, file, device = _load(args)
        result = inference.evaluate(model, args.dataset, args.data)
    info = model.info
    print(f"{file}: trained on {info.get('dataset', 'an unrecorded dataset')} with gpugrad "
          f"{info['gpugrad_version']}; evaluated on {result['dataset']} on {device}",
          file=sys.stderr)
    reported = info.get("test_accuracy")
    if (reported is not None and result["dataset"] == info.get("dataset")
            and f"{reported:.4f}" != f"{result['test_accuracy']:.4f}"):
        print(f"note: the training run reported test accuracy {reported:.4f} (on "
              f"{info.get('device')}); here it is {result['test_accuracy']:.4f} on {device}",
              file=sys.stderr)
    print(f"train accuracy: {result['train_accuracy']:.4f}")
    print(f"test accuracy: {result['test_accuracy']:.4f}")
    return 0


def _predict(args):
    from . import inference
    from .train import blas_threads, classify
    if args.out is not None:
        inference.check_output(args.out)  # before any work
    with blas_threads(args.threads):
        model, file, _ = _load(args)
        x = inference.read_inputs(args.input, inference.input_features(model))
        note = inference.range_note(x, model.info)
        if note:
            print(note, file=sys.stderr)
        classes, probabilities = classify(model, x, probabilities=args.probabilities)
    if args.out is None:
        sys.stdout.write(inference.predictions_csv(classes, probabilities))
    else:
        inference.write_predictions(args.out, classes, probabilities)
        print(f"wrote {len(classes)} predictions{' and probabilities' if args.probabilities else ''}"
              f" to {args.out}", file=sys.stderr)
    return 0


# ---- bench and info -------------------------------------------------------------------------

def _bench_options(b):
    b.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="all",
                   help="devices to time (default: %(default)s)")
    b.add_argument("--quick", action="store_true",
                   help="small sizes, few rounds (default: the full sizes)")
    b.add_argument("--threads", type=int, metavar="N",
                   help="threads for NumPy's BLAS and PyTorch alike (default: "
                        "GPUGRAD_BENCH_THREADS, else every core)")
    b.add_argument("--seconds", type=float, metavar="S",
                   help="time budget per workload and device (default: 3; --quick 0.2)")


def _bench(args):
    from .bench import main as bench_main
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    return bench_main(device=args.device, quick=args.quick, threads=args.threads,
                      seconds=args.seconds)


def _info(args):
    import numpy as np

    from . import __version__, cuda, kernels
    print(f"gpugrad {__version__} (python {platform.python_version()}, numpy {np.__version__})")
    for name in ("cupy", "torch", "scipy", "sklearn", "mnist1d", "matplotlib", "tqdm",
                 "threadpoolctl"):
        print(f"  {name:<14}{_version(name)}")
    print("devices:")
    print(f"  cpu        yes ({platform.machine()}, NumPy)")
    if cuda.is_available():
        print(f"  cuda       yes ({cuda.device_name()})")
    else:
        print(f"  cuda       no: {cuda.unavailable_reason()}")
    for name, ok, detail in cuda.probe_report():  # stops at the first failed check
        print(f"    {name:<9}{'ok' if ok else 'FAILED'}: {detail}")
    if cuda.is_available():
        ok, why = cuda.graphs_available(), cuda.graphs_unavailable_reason()
        print(f"    {'graphs':<9}{'ok' if ok else 'FAILED'}: "
              f"{why or 'GEMM + kernel + reductions captured into a CUDA graph and replayed'}")
    print("kernels:")
    verdict = {True: "yes", False: "FAILED", None: "not checked"}
    for name, st in kernels.status().items():
        print(f"  {name:<28}compiles (NVRTC sm_90): {verdict[st['compiles']]}; "
              f"loads on GPU: {verdict[st['loads']]}")
        if st["detail"]:
            print(f"  {'':<28}{st['detail']}")
    return 0


def _version(module):
    import importlib.metadata as md
    if module == "cupy":  # whichever CuPy wheel is installed, named
        from .backend.probe import cupy_package
        dist = cupy_package()
    else:
        dist = {"sklearn": "scikit-learn"}.get(module, module)
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"
    return f"{version} ({dist})" if module == "cupy" else version


if __name__ == "__main__":
    sys.exit(main())
