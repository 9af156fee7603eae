"""gg.viz: the DOT text of a graph (parsed back: nodes, edges, labels) and rendering with Graphviz
where its `dot` program is installed."""
import re
import shutil

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import viz

NODE = re.compile(r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)", shape=(\w+)')
EDGE = re.compile(r"^\s*(\w+) -> (\w+);$")


def parse(dot):
    """{node id: (label, shape)} and [(src, dst)] from to_dot's output, one statement a line."""
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    nodes, edges = {}, []
    for line in dot.splitlines()[1:-1]:
        if m := NODE.match(line):
            label = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1),
                           m.group(2))
            assert m.group(1) not in nodes
            nodes[m.group(1)] = (label, m.group(3))
        elif m := EDGE.match(line):
            edges.append(m.groups())
    for src, dst in edges:
        assert src in nodes and dst in nodes  # no dangling edge
    return nodes, edges


def by_label(nodes, edges):
    """Edges as (source label, destination label)."""
    return sorted((nodes[s][0], nodes[d][0]) for s, d in edges)


def lecture_graph():
    x, y, z = (gg.tensor(v, requires_grad=True) for v in (-2.0, 5.0, -4.0))
    x.name, y.name, z.name = "x", "y", "z"
    f = (x + y) * z
    f.name = "f"
    return f, (x, y, z)


def test_lecture_example_structure_and_labels():
    f, _ = lecture_graph()
    nodes, edges = parse(viz.to_dot(f))
    ops = {k: label for k, (label, shape) in nodes.items() if shape == "circle"}
    tensors = {k: label for k, (label, shape) in nodes.items() if shape == "box"}
    assert sorted(ops.values()) == ["*", "+"]
    assert len(tensors) == 5 and len(edges) == 6  # x, y, z, q = x + y, f; data flow only
    leaf = "{} = {}\n() float32\nrequires_grad"
    q = "() float32"
    assert sorted(tensors.values()) == sorted([leaf.format("x", -2), leaf.format("y", 5),
                                               leaf.format("z", -4), q, "f = -12\n() float32"])
    assert by_label(nodes, edges) == sorted([
        (leaf.format("x", -2), "+"), (leaf.format("y", 5), "+"), ("+", q),
        (q, "*"), (leaf.format("z", -4), "*"), ("*", "f = -12\n() float32")])


def test_shapes_dtypes_fan_out_and_constants():
    w = gg.tensor(np.ones((3, 2)), requires_grad=True)  # float64, unnamed
    x = gg.tensor(np.ones((4, 3), dtype=np.float32))    # data: needs no gradient
    h = gg.relu(x @ w)
    out = (h * h + 1.0).sum()  # h is used twice
    nodes, edges = parse(viz.to_dot(out))
    labels = [label for label, _ in nodes.values()]
    assert "(3, 2) float64\nrequires_grad" in labels
    assert labels.count("(4, 2) float64") == 4  # the outputs of @, relu, * and +
    assert sorted(label for label, shape in nodes.values() if shape == "circle") == [
        "*", "+", "@", "relu", "sum"]
    relu_out = next(k for k, (label, _) in nodes.items() if label == "(4, 2) float64"
                    and any(nodes[s][0] == "relu" for s, d in edges if d == k))
    assert [nodes[d][0] for s, d in edges if s == relu_out] == ["*", "*"]  # fan-out: two edges
    constants = [k for k, (label, _) in nodes.items() if label == "constant"]
    assert len(constants) == 2  # x (no grad) into @, and 1.0 into +
    assert sorted(nodes[d][0] for s, d in edges if s in constants) == ["+", "@"]


def test_leaf_tensors_and_escaped_names():
    t = gg.zeros(2, 3)
    t.name = 'say "hi" \\ bye'
    nodes, edges = parse(viz.to_dot(t))
    assert list(nodes.values()) == [('say "hi" \\ bye\n(2, 3) float32\nno grad', "box")]
    assert edges == []
    s = gg.tensor(3.0, requires_grad=True)
    assert parse(viz.to_dot(s))[0]["t0"][0] == "= 3\n() float32\nrequires_grad"


def test_output_is_deterministic_and_deep_graphs_do_not_recurse():
    x = gg.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(5000):
        y = gg.tanh(y)
    dot = viz.to_dot(y)
    assert dot == viz.to_dot(y)
    nodes, edges = parse(dot)
    assert len(nodes) == 1 + 2 * 5000 and len(edges) == 2 * 5000


def test_freed_graphs():
    f, _ = lecture_graph()
    f.backward(retain_graph=True)
    assert len(parse(viz.to_dot(f))[0]) == 7  # retained: still drawable
    f.backward()
    with pytest.raises(RuntimeError, match="freed by backward.*retain_graph=True"):
        viz.to_dot(f)
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    h = gg.exp(x)
    h.sum().backward()  # frees exp's part of the graph
    nodes, edges = parse(viz.to_dot(h * 2))
    assert "exp\nfreed" in [label for label, _ in nodes.values()]


def test_to_dot_needs_a_tensor():
    with pytest.raises(TypeError, match="expected a Tensor, got ndarray"):
        viz.to_dot(np.ones(2))


def test_gg_viz_is_exported():
    assert gg.viz is viz and "viz" in gg.__all__


# -- rendering -----------------------------------------------------------------------------------

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


@needs_dot
def test_render_svg_and_png(tmp_path):
    f, _ = lecture_graph()
    svg = viz.render(f, tmp_path / "graph.svg")
    text = (tmp_path / "graph.svg").read_text()
    assert svg == str(tmp_path / "graph.svg") and "<svg" in text
    text = text.replace("&#45;", "-")  # Graphviz escapes minus signs
    assert "x = -2" in text and "f = -12" in text and text.count('class="node"') == 7
    viz.render(f, tmp_path / "graph.out", format="png")
    assert (tmp_path / "graph.out").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_graphviz_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    f, _ = lecture_graph()
    with pytest.raises(RuntimeError, match="`dot` program was not found.*apt-get install "
                                           "graphviz"):
        viz.render(f, tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()


def test_render_bad_paths(tmp_path):
    f, _ = lecture_graph()
    with pytest.raises(ValueError, match=r"format of .*g\.txt.*\.svg, \.png, \.pdf"):
        viz.render(f, tmp_path / "g.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.render(f, tmp_path / "missing" / "g.svg")
