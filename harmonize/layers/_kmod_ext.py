"""The optional compiled CPU kernels of :func:`harmonize.layers.kernel_modulation`.

``csrc/kernel_modulation.cpp`` holds a forward and a fused backward that read the kernels
once per pass (the pure-PyTorch version makes several passes). It is compiled with
``torch.utils.cpp_extension`` the first time the op runs on the CPU (about a minute, once; the
build is cached, by default under ``~/.cache/torch_extensions``, and later processes load
it without compiling or importing ``torch.utils.cpp_extension``), never at import. Where that
cannot work (no C++ compiler, no ``ninja``, a failed build), :func:`load` returns ``None``
and the op stays on its pure-PyTorch path, with one logged warning.

Set ``HARMONIZE_KMOD_EXT=0`` to never build or use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["load", "available", "ENV_VAR"]

logger = logging.getLogger(__name__)

ENV_VAR = "HARMONIZE_KMOD_EXT"
SOURCE = Path(__file__).with_name("csrc") / "kernel_modulation.cpp"

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module": ModuleType | None once tried


def _enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags: optimised for this machine's CPU (the build is local)."""
    if os.name == "nt":
        return ["/O2", "/openmp"], []
    cflags = ["-O3", "-fopenmp"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        cflags.append("-march=native")
    elif platform.machine().lower() in ("aarch64", "arm64"):
        cflags.append("-mcpu=native")
    return cflags, ["-fopenmp"]


def _cpu_id() -> str:
    """The CPU (the code is built for it: -march=native) and torch."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), cpu)
    except OSError:
        pass
    return f"{platform.machine()}|{cpu}|{torch.__version__}"


def _name() -> str:
    """The module's name: it changes with everything the binary depends on."""
    key = (
        SOURCE.read_bytes(),
        _flags(),
        _cpu_id(),
        sys.version_info[:2],
        sysconfig.get_config_var("EXT_SUFFIX"),
    )
    return "harmonize_kmod_" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def _build_dir(name: str) -> Path:
    """Where the build goes: torch's extension cache (``TORCH_EXTENSIONS_DIR`` or
    ``~/.cache/torch_extensions``), one folder per build."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch_extensions"
    )
    return Path(root).expanduser() / name


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> ModuleType:
    name = _name()
    build_dir = _build_dir(name)
    for suffix in (".so", ".pyd"):
        if (build_dir / f"{name}{suffix}").is_file():
            try:
                return _import(name, build_dir / f"{name}{suffix}")  # built before: no compiler
            except ImportError:
                break  # build it again below
    # Imported here, as it is slow to import; quiet its note that CUDA is missing.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_log.setLevel(level)

    compiler = os.environ.get("CXX", "cl" if os.name == "nt" else "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler!r} not on PATH)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    logger.warning(
        "kernel_modulation: compiling its CPU kernel (once, about a minute, into %s; "
        "%s=0 skips it)",
        build_dir,
        ENV_VAR,
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = _flags()
    return cpp_extension.load(
        name,
        [str(SOURCE)],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        verbose=False,
    )


def load() -> ModuleType | None:
    """The compiled kernels, built on the first call; ``None`` where they are unavailable."""
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if "module" not in _state:
            module = None
            if _enabled():
                try:
                    module = _build()
                except Exception as e:  # any failure to build or load: fall back
                    logger.warning(
                        "kernel_modulation: compiled CPU kernel unavailable, using the "
                        "pure-PyTorch version (%s: %s)",
                        type(e).__name__,
                        str(e).strip().splitlines()[-1] if str(e).strip() else "",
                    )
            _state["module"] = module
    return _state["module"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the compiled kernels are in use (builds them on the first call)."""
    return load() is not None
