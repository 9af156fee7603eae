"""Redraws docs/lecture_graph.svg: the lecture's example f = (x + y) * z, as gg.viz draws it.

    PYTHONPATH=. python docs/lecture_graph.py      # needs Graphviz's `dot`
"""
import os

import gpugrad as gg

x = gg.tensor(-2.0, requires_grad=True)
y = gg.tensor(5.0, requires_grad=True)
z = gg.tensor(-4.0, requires_grad=True)
x.name, y.name, z.name = "x", "y", "z"
f = (x + y) * z
f.name = "f"
print(gg.viz.render(f, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "lecture_graph.svg")))
