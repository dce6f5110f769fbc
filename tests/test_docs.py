"""The ```python blocks of the README and of the guide pages (docs/guide/*.md) and the
scripts in examples/ run as written; the figures the README quotes from a block's output
are what the block prints.

Each block runs on its own, in a fresh namespace and a fresh working directory,
exactly as a reader would paste it: a block may not rely on names from an earlier one.
The blocks run with BLAS limited to one thread (as ``OPENBLAS_NUM_THREADS=1`` would), so
that a loaded CI machine is not oversubscribed; the README's Threads section says why.
Each example runs as ``python examples/<name>.py`` in a subprocess.
"""
import contextlib
import io
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


PAGES = [README] + sorted((ROOT / "docs" / "guide").glob("*.md"))
BLOCKS = [(page.relative_to(ROOT).as_posix(), line, source) for page in PAGES
          for line, source in python_blocks(page.read_text(encoding="utf-8"))]


def test_the_pages_have_python_blocks():
    assert sum(page == "README.md" for page, _, _ in BLOCKS) >= 2
    assert len(BLOCKS) >= 8, [(page, line) for page, line, _ in BLOCKS]


def _run_block(page, line, source):
    """Run a block in a fresh namespace; returns what it printed and its warnings."""
    code = compile(source, f"{page} (block at line {line})", "exec")
    out = io.StringIO()
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        exec(code, {"__name__": "__readme__"})
    return out.getvalue(), caught


@pytest.mark.parametrize("page, line, source", BLOCKS,
                         ids=[f"{page}:{ln}" for page, ln, _ in BLOCKS])
def test_block_runs(page, line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # blocks that write files write them here
    printed, caught = _run_block(page, line, source)
    # the README shows no warning: a block that printed one would surprise its reader
    unshown = [f"{w.category.__name__}: {w.message}" for w in caught
               if w.category.__name__ == "ConvergenceWarning"]
    assert not unshown, unshown
    if page == "README.md" and "RecurrentRegressor" in source:
        # the figures the README quotes after the block
        r2, acc, r2_fc = re.findall(r"R\^2 ([\d.]+)|accuracy ([\d.]+)", printed)[:3]
        quoted = (f"This prints R² {r2[0]}, accuracy {acc[1]} and R² {r2_fc[0]}")
        assert quoted in README.read_text(encoding="utf-8"), (quoted, printed)


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
