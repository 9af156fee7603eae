"""The README tells the truth about the command line (issue 14): its command block lists every
option of every command, its install commands name extras that exist (no `gpugrad[...]` from an
index that has no gpugrad), and its Python examples run as written."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpugrad import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python(code, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in sys.path if p]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _block(marker):
    [code] = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if marker in b]
    return code


def _commands_block():
    section = README.split("## Commands\n", 1)[1]
    return section.split("```\n", 2)[1]


def test_commands_block_lists_every_option_of_every_command():
    block = _commands_block()
    usage = {}  # command -> its lines in the block (continuation lines start with spaces)
    for line in block.splitlines():
        if line.startswith("gpugrad "):
            current = line.split()[1]
            usage[current] = line
        else:
            usage[current] += " " + line
    parser = cli._parser()
    assert set(parser.commands) | {"--version"} == set(usage)
    for name, command in parser.commands.items():
        for action in command._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert re.search(rf"\[{option}\b|\s{option}\b", usage[name]), (name, option)


def test_install_commands_name_extras_that_exist():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    named = re.findall(r'pip install "\.\[([\w,]+)\]"', README)
    assert named, "the README shows no install command"
    for group in named:
        assert set(group.split(",")) <= extras, group
    assert not re.search(r"pip install\s+['\"]?gpugrad\[", README)  # not on the package index
    assert any(d.startswith("threadpoolctl") for d in project["dependencies"])
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["test"])
    first = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert 'pip install ".[test]" && python -m pytest' in first
    # what skips without PyTorch: the README says how many tests use it, and how to list them
    assert re.search(r"PyTorch, the independent oracle of about \d+ tests", README)
    assert "-rs" in README


def test_executor_example_runs_as_written(tmp_path):
    pytest.importorskip("sklearn")
    r = _python(_block("gg.Executor("), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy = float(re.search(r"test accuracy (\S+)", r.stdout).group(1))
    assert accuracy > 0.9


def test_load_model_example_runs_after_train(tmp_path):
    pytest.importorskip("sklearn")
    train = subprocess.run([sys.executable, "-m", "gpugrad", "train", "--epochs", "3",
                            "--no-progress", "--device", "cpu"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert train.returncode == 0, train.stderr
    r = _python(_block("load_model"), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy, dataset, classes = r.stdout.split()
    assert train.stdout.strip().splitlines()[-1] == f"test accuracy: {float(accuracy):.4f}"
    assert (dataset, classes) == ("digits", "10")
