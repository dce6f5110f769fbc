"""Build script: cythonize ``src_pyx/*.pyx`` into ``nn_core._kernels.*``.

Compiler directives live here and only here.  ``NN_CORE_DEBUG=1`` turns bounds,
wraparound and initialisation checks on (and optimisation off) for debugging a kernel.
No ``-ffast-math``: the kernels rely on IEEE ``-inf`` masking and NaN propagation.
``-fno-trapping-math`` only tells GCC that floating-point operations raise no traps
(nothing here installs FP trap handlers); it keeps IEEE results, infinities and NaNs
exactly, and lets GCC if-convert the selects in the vectorised math so it can vectorise.
``-fno-math-errno``: the kernels never read ``errno``; without it ``sqrt`` stays a
scalar library call (it may set ``errno``) and loops around it do not vectorise.
No ``-march=native``: the vectorised loops (``src_pyx/_vmath.h``, ``_rnn_gates.h``) are
compiled for baseline x86-64 and again for AVX2+FMA / AVX-512F
(``__attribute__((target))``); ``src_pyx/_simd.h`` picks one at run time.

Build mechanics (what keeps ``pip install`` short):

* Cython's memoryview and buffer support code is generated once, into the shared module
  ``nn_core._kernels._cyutility``, instead of into every extension; this roughly halves
  the C that the compiler sees.
* ``.pyx`` files are cythonized, and extensions compiled, on every available core.
* ``-g0``: no debug information in release builds (Python's own CFLAGS carry ``-g``).
* Every built extension is also kept in ``build/ext-cache/`` under a hash of all that
  goes into it: its ``.pyx``, every ``.pxd`` and ``.h`` in ``src_pyx/``, the directives
  and flags, the compiler command and flags, Python, and the Cython, NumPy and SciPy
  versions.  pip builds
  in a fresh isolated environment and a new temporary directory every time, so without
  this every ``pip install -e .`` would cythonize and compile everything again; with it,
  only an extension whose inputs changed is cythonized and compiled.  Nothing is cached
  with ``build_ext --force``.
"""
import hashlib
import os
import shutil
import sys
import sysconfig
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("NN_CORE_DEBUG", "0") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
if not DEBUG:
    CFLAGS.append("-g0")

JOBS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
SHARED = "nn_core._kernels._cyutility"
CACHE_DIR = os.path.join("build", "ext-cache")

PYX = sorted(glob(os.path.join("src_pyx", "*.pyx")))
if not PYX:  # e.g. an sdist that lost its sources: fail, never build a wheel without kernels
    sys.exit("setup.py: no src_pyx/*.pyx found; the kernel sources are missing")

extensions = [
    Extension(
        "nn_core._kernels." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["src_pyx", numpy.get_include()],
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in PYX
] + [Extension(SHARED, [os.path.join("src_pyx", "_cyutility.c")], extra_compile_args=CFLAGS)]


class cached_build_ext(build_ext):
    """``build_ext`` that cythonizes only when something is built (not for ``sdist`` or
    metadata) and only what is not cached, and compiles on every core."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:       # an explicit --parallel / -j wins
            self.parallel = JOBS

    def run(self):
        self._cached = {ext.name: self._cache_path(ext) for ext in self.extensions}
        todo = [ext for ext in self.extensions
                if self.force or not os.path.exists(self._cached[ext.name])]
        if todo:
            modules = cythonize(
                todo,
                compiler_directives=DIRECTIVES,
                include_path=["src_pyx"],
                shared_utility_qualified_name=SHARED,
                nthreads=JOBS,
                force=self.force,
            )
            # Keep setuptools' own Extension objects (finalize_options annotated them)
            # and hand them the generated C.
            generated = {m.name: m for m in modules}
            for ext in todo:
                ext.sources, ext.depends = generated[ext.name].sources, generated[ext.name].depends
        # Largest generated C first: the parallel build then ends with the short compiles.
        self.extensions.sort(key=lambda ext: ext in todo and os.path.getsize(ext.sources[0]),
                             reverse=True)
        super().run()

    def _cache_path(self, ext):
        import Cython
        import scipy
        h = hashlib.sha256()
        inputs = [p for p in ext.sources if not p.endswith(".c")]
        inputs += sorted(glob(os.path.join("src_pyx", "*.pxd")) + glob(os.path.join("src_pyx", "*.h")))
        for path in inputs:
            h.update(path.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
        config = (ext.name, DIRECTIVES, ext.extra_compile_args, ext.extra_link_args,
                  ext.define_macros, ext.libraries,
                  [os.environ.get(v) for v in ("CC", "CFLAGS", "CPPFLAGS", "LDSHARED", "LDFLAGS")],
                  [sysconfig.get_config_var(v) for v in ("CC", "CFLAGS", "LDSHARED", "EXT_SUFFIX")],
                  sys.version,
                  Cython.__version__, numpy.__version__, scipy.__version__)
        h.update(repr(config).encode())
        name = os.path.basename(self.get_ext_fullpath(ext.name))
        return os.path.join(CACHE_DIR, f"{h.hexdigest()[:24]}-{name}")

    def build_extension(self, ext):
        out = self.get_ext_fullpath(ext.name)
        cached = self._cached[ext.name]
        if not self.force and os.path.exists(cached):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(cached, out)
            print(f"reusing {cached}")
            return
        super().build_extension(ext)
        os.makedirs(CACHE_DIR, exist_ok=True)
        for old in glob(os.path.join(CACHE_DIR, "*-" + os.path.basename(out))):
            os.remove(old)                   # one entry per module
        tmp = f"{cached}.{os.getpid()}.tmp"
        shutil.copy2(out, tmp)
        os.replace(tmp, cached)


setup(
    ext_modules=extensions,
    cmdclass={"build_ext": cached_build_ext},
)
