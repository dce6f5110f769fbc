"""The README's ```python blocks and the scripts in examples/ run as written.

Each README block runs on its own, in a fresh namespace and a fresh working directory,
exactly as a reader would paste it: a block may not rely on names from an earlier one.
The blocks run with BLAS limited to one thread (as ``OPENBLAS_NUM_THREADS=1`` would), so
that a loaded CI machine is not oversubscribed; the README's Threads section says why.
Each example runs as ``python examples/<name>.py`` in a subprocess.
"""
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest
from threadpoolctl import threadpool_limits

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def python_blocks(text):
    """``[(line, source)]`` for every fenced block whose info string is ``python``."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, [line for line, _ in BLOCKS]


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{ln}" for ln, _ in BLOCKS])
def test_readme_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # blocks that write files write them here
    code = compile(source, f"README.md (block at line {line})", "exec")
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, {"__name__": "__readme__"})
    # the README shows no warning: a block that printed one would surprise its reader
    unshown = [f"{w.category.__name__}: {w.message}" for w in caught
               if w.category.__name__ == "ConvergenceWarning"]
    assert not unshown, unshown


def test_every_example_is_found():
    assert EXAMPLES, "examples/ has no scripts"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_ci_runs_the_readme_test_command_last():
    """.ci/run ends with the README's quick-start test command, verbatim."""
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    bash_blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"),
                             flags=re.M | re.S)
    assert ci[-1] in [b.strip() for b in bash_blocks], ci[-1]
