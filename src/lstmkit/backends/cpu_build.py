"""Build and load the fused CPU kernel (csrc/lstm_cpu.cpp, csrc/lstm_math.h) at first use.

The kernel is compiled once per machine, torch version and source, with the system's C++
compiler (``$CXX`` or ``c++``) against the headers and libraries of the installed torch, into
``$LSTMKIT_CACHE`` (default ``~/.cache/lstmkit``), and loaded with ``torch.ops.load_library``.
No ninja, no build isolation, no Python headers. Without a compiler, or if the build fails,
:func:`load` returns None and warns once; lstmkit then runs the generic backend.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "lstm_cpu.cpp"
HEADERS = [Path(__file__).parent / "csrc" / name for name in ("gemm.h", "lstm_math.h", "pool.h", "simd.h")]
_state: dict = {}


ISA_FLAGS = {"avx512": ["-mavx2", "-mfma", "-mavx512f"], "avx2": ["-mavx2", "-mfma"], "portable": []}


def supported_isas() -> list[str]:
    """The instruction sets of ISA_FLAGS this CPU runs, widest first."""
    try:
        cpu_flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        cpu_flags = set()
    avx2 = platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= cpu_flags
    return ["avx512"] * (avx2 and "avx512f" in cpu_flags) + ["avx2"] * avx2 + ["portable"]


def isa() -> str:
    """The instruction set the kernel is built for (csrc/simd.h): ``$LSTMKIT_CPU_ISA`` if set (one
    the CPU has), else the widest of avx512, avx2 (with FMA) the CPU has, else portable C++."""
    supported = supported_isas()
    chosen = os.environ.get("LSTMKIT_CPU_ISA", "")
    if not chosen:
        return supported[0]
    if chosen not in ISA_FLAGS:
        raise ValueError(f"LSTMKIT_CPU_ISA must be one of {', '.join(ISA_FLAGS)}, got {chosen!r}")
    if chosen not in supported:
        raise ValueError(f"LSTMKIT_CPU_ISA={chosen}, but this CPU does not have it")
    return chosen


def build_command(compiler: str, output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", "-fopenmp", "-fno-trapping-math", *ISA_FLAGS[isa()],
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}", str(SOURCE),
        f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", str(output),
    ]


def library_path() -> Path:
    """Where the built kernel lives: keyed by source, compiler, build command, torch version and machine."""
    key = hashlib.sha256()
    for path in (SOURCE, *HEADERS):
        key.update(path.read_bytes())
    compiler = shutil.which(os.environ.get("CXX", "c++")) or ""
    key.update(" ".join([torch.__version__, platform.machine(), *build_command(compiler, Path())]).encode())
    cache = Path(os.environ.get("LSTMKIT_CACHE", Path.home() / ".cache" / "lstmkit"))
    return cache / f"lstm_cpu-{key.hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {os.environ.get('CXX', 'c++')!r}; set $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # build aside, then rename: atomic
        partial = Path(tmp) / path.name
        result = subprocess.run(build_command(compiler, partial), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, path)


def load():
    """``torch.ops.lstmkit_cpu`` (ops ``forward``, ``backward`` and ``matmul``), or None if it cannot be built."""
    if "ops" not in _state:
        try:
            path = library_path()
            if not path.exists():
                _build(path)
            torch.ops.load_library(str(path))
            _state["ops"] = torch.ops.lstmkit_cpu
        except Exception as error:  # any failure means: no fused kernel, generic backend instead
            _state["ops"] = None
            _state["error"] = str(error)
            warnings.warn(
                "lstmkit: the fused CPU backend is unavailable, so lstmkit runs its generic backend "
                f"(5-20x slower on CPU). It is built with a C++ compiler at first use; this time: {error}",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["ops"]


def loaded():
    """``torch.ops.lstmkit_cpu`` if :func:`load` has loaded it in this process, else None (builds nothing)."""
    return _state.get("ops")
