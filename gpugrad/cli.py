"""`gpugrad train | bench | info` (also `python -m gpugrad`).

Expected failures (bad arguments, missing or malformed data files, an unusable device) print one
line, `gpugrad: error: ...`, and exit with status 2: no traceback for a user's mistake. A run that
fails on its way (training diverged, out of memory) prints one line too and exits with status 1.
"""
import argparse
import platform
import sys

from .errors import DeviceError


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
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
    from .data import DATASETS
    p = argparse.ArgumentParser(prog="gpugrad", description="Reverse-mode autodiff on NVIDIA "
                                "GPUs (CuPy) with a NumPy fallback.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train an MLP on a dataset and report test accuracy")
    t.add_argument("--dataset", choices=DATASETS, default="digits")
    t.add_argument("--data", metavar="PATH", help="data files (mnist: the IDX files or an .npz)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--hidden", type=_sizes, metavar="H1,H2,...",
                   help="hidden layer sizes, e.g. 256,256; 'none' for a linear classifier")
    t.add_argument("--activation", choices=("relu", "sigmoid", "tanh"), default="relu")
    t.add_argument("--optimizer", choices=("sgd", "adam"))
    t.add_argument("--lr", type=float, help="initial learning rate")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=float, help="L2 penalty strength (default: per dataset)")
    t.add_argument("--l1", type=float, default=0.0, help="L1 penalty on weights (eager engine)")
    t.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine",
                   help="learning-rate decay (default cosine)")
    t.add_argument("--engine", choices=("executor", "eager"), default="executor",
                   help="executor: the planned fast path; eager: the autograd graph")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", metavar="DIR", help="output folder (default runs/<dataset>)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=_train)

    b = sub.add_parser("bench", help="CPU vs GPU (and PyTorch) timings, side by side")
    b.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="all")
    b.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    b.add_argument("--threads", type=int, metavar="N",
                   help="threads for NumPy's BLAS and PyTorch alike (default "
                        "GPUGRAD_BENCH_THREADS, else every core)")
    b.add_argument("--seconds", type=float, metavar="S",
                   help="time budget per workload and device (default 3; --quick 0.2)")
    b.set_defaults(run=_bench)

    i = sub.add_parser("info", help="versions, devices and CUDA kernel status")
    i.set_defaults(run=_info)
    return p


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
    cfg = Config(dataset=args.dataset, data=args.data, device=args.device, epochs=args.epochs,
                 batch_size=args.batch_size, hidden=args.hidden, activation=args.activation,
                 optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                 weight_decay=args.weight_decay, l1=args.l1, schedule=args.schedule,
                 seed=args.seed, out=args.out, engine=args.engine,
                 progress=not args.no_progress)
    metrics = run(cfg)
    print(f"train accuracy: {metrics['train_accuracy']:.4f} ({metrics['seconds']:.1f} s on "
          f"{metrics['device']})")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


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
    for name in ("cupy", "torch", "scipy", "sklearn", "mnist1d", "matplotlib", "tqdm"):
        print(f"  {name:<11}{_version(name)}")
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
    dist = {"sklearn": "scikit-learn", "cupy": None}.get(module, module)
    if module == "cupy":
        for candidate in ("cupy-cuda12x", "cupy-cuda13x", "cupy"):
            try:
                return f"{md.version(candidate)} ({candidate})"
            except md.PackageNotFoundError:
                continue
        return "not installed"
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
