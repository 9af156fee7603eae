"""gg.viz: pictures of the computation graph that produced a tensor.

    print(gg.viz.to_dot(f))              # Graphviz DOT text (no Graphviz needed)
    gg.viz.render(f, "graph.svg")        # SVG / PNG / PDF through Graphviz's `dot` program

The picture follows the lecture's diagrams: data flows left to right, every edge is data flow
(input -> op -> output), tensors are boxes and ops are circles. Leaves show their name
(`t.name`), shape, dtype, whether they require grad and, for one element, the value.

What there is to draw: each Function keeps `next` (per input, the Function that made it or the
leaf Tensor; None for inputs that need no gradient) and `out_meta` (its output's shape and dtype,
recorded by Function.apply). Intermediate Tensors themselves are not kept (that is what lets
their memory go), so they are drawn from out_meta: shape and dtype, no name or value. Inputs that
need no gradient are not in the graph either: each is a small "constant" node. backward() frees
the graph unless retain_graph=True: a tensor whose own graph was freed cannot be drawn
(RuntimeError), and a freed op inside a larger graph is drawn grey, marked "freed".
"""
import itertools
import os
import shutil
import subprocess

from .tensor import Tensor

__all__ = ["to_dot", "render", "FORMATS"]

FORMATS = ("svg", "png", "pdf")
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@"}
_INSTALL = ("install Graphviz (apt-get install graphviz, brew install graphviz, conda install "
            "graphviz, or https://graphviz.org/download/), or save gg.viz.to_dot(tensor) to a "
            ".dot file and render it elsewhere")


def to_dot(tensor):
    """Graphviz DOT text of the graph that produced `tensor` (a single node for a leaf)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"gg.viz.to_dot: expected a Tensor, got {type(tensor).__name__}")
    root = tensor._ctx
    if root is not None and root.freed:
        raise RuntimeError("gg.viz.to_dot: this tensor's graph was freed by backward(); draw it "
                           "before calling backward(), or pass retain_graph=True to backward()")
    lines = ['digraph gpugrad {', '  rankdir=LR;',
             '  node [fontname="Helvetica", fontsize=11];']
    if root is None:
        lines.append(_node("t0", _tensor_label(tensor), "box",
                           "lightblue" if tensor.requires_grad else "white"))
        return "\n".join(lines + ["}"]) + "\n"
    ids = {}  # id(Function or leaf Tensor) -> the node carrying its output
    numbers = itertools.count(1)

    def new_id(prefix):
        return f"{prefix}{next(numbers)}"

    for fn in _functions(root):  # creation order: every input's node exists before it is used
        op = new_id("op")
        if fn.freed:
            lines.append(_node(op, f"{_op_name(fn)}\nfreed", "circle", "lightgrey", "dashed"))
        else:
            lines.append(_node(op, _op_name(fn), "circle", "white"))
            for edge in fn.next:
                if edge is None:
                    src = new_id("c")
                    lines.append(_node(src, "constant", "box", "white", "dashed", fontsize=9))
                elif isinstance(edge, Tensor):
                    src = ids.get(id(edge))
                    if src is None:
                        src = ids[id(edge)] = new_id("t")
                        lines.append(_node(src, _tensor_label(edge), "box", "lightblue"))
                else:
                    src = ids[id(edge)]
                lines.append(f"  {src} -> {op};")
        out = ids[id(fn)] = new_id("t")
        if fn is root:
            lines.append(_node(out, _tensor_label(tensor), "box", "palegreen"))
        elif fn.freed:
            lines.append(_node(out, "?", "box", "lightgrey", "dashed"))
        else:
            shape, dtype = fn.out_meta
            lines.append(_node(out, f"{_shape(shape)} {dtype}", "box", "white"))
        lines.append(f"  {op} -> {out};")
    return "\n".join(lines + ["}"]) + "\n"


def render(tensor, path, format=None):
    """Draw the graph behind `tensor` into `path` (.svg, .png or .pdf, or `format`) with
    Graphviz's `dot`; returns the path. RuntimeError naming what to install without Graphviz."""
    path = os.fspath(path)
    fmt = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"gg.viz.render: cannot tell the format of {path!r}; use a path ending "
                         f"in one of {', '.join('.' + f for f in FORMATS)} or pass format=")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"gg.viz.render: directory {directory!r} does not exist")
    text = to_dot(tensor)  # before looking for dot: a freed graph is an error either way
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(f"gg.viz.render: Graphviz's `dot` program was not found on PATH; "
                           f"{_INSTALL}")
    proc = subprocess.run([dot, f"-T{fmt}", "-o", path], input=text.encode(),
                          capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"gg.viz.render: dot failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return path


def _functions(root):
    """Every Function reachable from `root`, oldest first (Function.seq is creation order).
    Iterative: graphs can be deeper than Python's recursion limit. Freed Functions have no
    `next` left, so the walk stops at them."""
    seen, stack = {root}, [root]
    while stack:
        fn = stack.pop()
        if fn.freed:
            continue
        for e in fn.next:
            if e is not None and not isinstance(e, Tensor) and e not in seen:
                seen.add(e)
                stack.append(e)
    # a freed Function lost its seq too: it sorts first, before anything that could use it
    return sorted(seen, key=lambda f: getattr(f, "seq", -1))


def _op_name(fn):
    return _SYMBOLS.get(fn.name, fn.name)


def _shape(shape):
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _tensor_label(t):
    """'name = value' (when known), 'shape dtype', and for a leaf whether it requires grad."""
    head = [t.name] if t.name else []
    if t.size == 1:
        head.append(f"= {t.item():.6g}")
    lines = [" ".join(head)] if head else []
    lines.append(f"{_shape(t.shape)} {t.dtype}")
    if t.is_leaf:
        lines.append("requires_grad" if t.requires_grad else "no grad")
    return "\n".join(lines)


def _node(node_id, label, shape, fill, style="", fontsize=None):
    styles = "filled" + (f",{style}" if style else "")
    extra = f", fontsize={fontsize}" if fontsize else ""
    return (f'  {node_id} [label="{_escape(label)}", shape={shape}, style="{styles}", '
            f'fillcolor={fill}{extra}];')


def _escape(text):
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
