"""oneDNN's CPU convolution inside XLA programs: ``conv2d`` (NHWC, HWIO, float32; grouped
too, so depthwise) with its two gradients, each an XLA FFI custom call into
``runtime/onednn_conv.cc``.

Why: at the ResNets' 3x3 shapes (batch 16, 2-core CPU) XLA:CPU's own kernel gradient takes
0.9-3x oneDNN's time, its input gradient 1-2.6x, its forward 0.8-2x
(``docs/cpu-formulations.md``), and no formulation in JAX closes that. The jaxlib wheels
carry oneDNN, but their convolution rewrite is compiled out. oneDNN runs on OpenMP: a
process that also runs PyTorch shares that runtime with it, and slows it (so ``bench
speed`` times peers in processes of their own).

The extension is built on first use, like ``torch.utils.cpp_extension.load``: the system's
C++ compiler (``$CXX``, else ``c++``) against oneDNN and jaxlib's own FFI headers, into
``<cache>/ext/onednn_conv-<hash>.so`` (``runtime.paths.cache_root()``; the hash covers the
source, oneDNN's version header and location, jaxlib's version and the compiler), written
atomically; later processes load it. oneDNN is looked for in ``$BENCH_ONEDNN_ROOT``, then in
this Python environment (pip's ``onednn-cpu-gomp`` + ``onednn-devel-cpu-gomp``, oneDNN 3.2,
a dependency on Linux x86-64), then in the system (Debian/Ubuntu ``apt-get install
libdnnl-dev``, oneDNN 2.6); the source compiles against either API. Where anything is
missing, ``available()`` is False, ``why_unavailable()`` says what, and
``models.layers.Conv`` keeps XLA's convolution. Nothing is downloaded.

``BENCH_ONEDNN=0`` turns it off; ``BENCH_REQUIRE_ONEDNN=1`` (CI) makes a failed build an
error instead of a fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from runtime.paths import cache_root

SOURCE = Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"fwd": "BenchOnednnConvForward", "dx": "BenchOnednnConvInputGrad",
            "dk": "BenchOnednnConvKernelGrad", "bias_act": "BenchOnednnConvBiasAct",
            "bias_sum_act": "BenchOnednnConvBiasSumAct"}
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}  # conv2d_bias_act's post-op
_lock = threading.Lock()
_state: dict = {}  # "lib", "version" once loaded, or "error"


_SYSTEM_INCLUDES = (Path("/usr/include"), Path("/usr/local/include"))


def _find_onednn() -> tuple[Path | None, Path | None]:
    """``(include_dir, lib_dir)`` of the oneDNN to build against: ``$BENCH_ONEDNN_ROOT``
    (its ``include/`` and ``lib/``), else the one pip installed into this Python environment
    (``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp``, oneDNN 3.2, a dependency on Linux
    x86-64), else the system's (``None, None``: the compiler's default paths). Raises
    RuntimeError where none is there."""
    root = os.environ.get("BENCH_ONEDNN_ROOT")
    candidates = [Path(root)] if root else [Path(sys.prefix), Path(sys.base_prefix)]
    for base in candidates:
        inc = base / "include"
        libs = [base / d for d in ("lib", "lib64", "lib/x86_64-linux-gnu",
                                   "lib/aarch64-linux-gnu")]
        lib = next((d for d in libs if (d / "libdnnl.so").exists()), None)
        if (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and lib is not None:
            return inc, lib
    if root:
        raise RuntimeError(f"BENCH_ONEDNN_ROOT={root}: no include/oneapi/dnnl/dnnl.hpp and "
                           "lib/libdnnl.so under it")
    if ctypes.util.find_library("dnnl") is None or not any(
            (d / "oneapi" / "dnnl" / "dnnl.hpp").is_file() for d in _SYSTEM_INCLUDES):
        raise RuntimeError("oneDNN not found (pip install onednn-cpu-gomp "
                           "onednn-devel-cpu-gomp, or apt-get install libdnnl-dev)")
    return None, None


def _library_path(cxx: str, inc: Path | None, lib: Path | None) -> Path:
    import jaxlib

    h = hashlib.sha256(SOURCE.read_bytes())
    version_h = (inc or Path("/usr/include")) / "oneapi" / "dnnl" / "dnnl_version.h"
    h.update(version_h.read_bytes() if version_h.is_file() else b"")
    h.update(f"{jaxlib.__version__}\0{cxx}\0{inc}\0{lib}".encode())
    return cache_root() / "ext" / f"onednn_conv-{h.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the extension unless a built copy for this source, oneDNN, jaxlib and
    compiler is cached; return its path. Raises RuntimeError with one line saying what is
    missing."""
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler {cxx!r} on PATH (set $CXX or install g++)")
    inc, lib = _find_onednn()
    out = _library_path(cxx, inc, lib)
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem, suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    # The compiler searches /usr/include itself; naming it again breaks libstdc++'s
    # #include_next.
    dnnl = [] if inc is None or inc in _SYSTEM_INCLUDES else ["-isystem", str(inc)]
    link = ["-ldnnl"] if lib is None else [f"-L{lib}", f"-Wl,-rpath,{lib}", "-ldnnl"]
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", *dnnl, "-isystem",
           jax.ffi.include_dir(), str(SOURCE), "-o", tmp, *link]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln),
                         proc.stderr.strip()[-300:]) or f"{cxx} exited {proc.returncode}"
            raise RuntimeError(f"building {SOURCE.name} failed: {first.strip()}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# How long oneDNN's OpenMP worker spins for more work after a parallel region, in libgomp's
# units. Its default when it has no more threads than cores (300,000, some milliseconds)
# kept the worker spinning while XLA's own thread pool ran the fusions and matrix products
# between two oneDNN calls, three busy threads on two cores: MobileNetV2's train step took
# 705 ms against 548 with 1,000 (libgomp's own value when it has more threads than cores),
# EfficientNet-Lite0's 842 against 661, ResNet-20's 45.7 against 37.6.
OPENMP_SPIN = "1000"


@contextlib.contextmanager
def _short_openmp_spin():
    """``GOMP_SPINCOUNT=OPENMP_SPIN`` while the extension loads: libgomp reads it once, when
    it is loaded, and it is restored at once so that child processes (``bench speed``'s
    peers) do not inherit it. A ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` of the user's is
    kept."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN
    try:
        yield
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def _load() -> dict:
    """Build, load and register the FFI targets once per process."""
    with _lock:
        if _state:
            return _state
        try:
            if os.environ.get("BENCH_ONEDNN", "1").strip().lower() in ("0", "off", "false", "no"):
                raise RuntimeError("turned off by BENCH_ONEDNN=0")
            path = build()
            with _short_openmp_spin():
                lib = ctypes.cdll.LoadLibrary(str(path))
            for target, symbol in _TARGETS.items():
                jax.ffi.register_ffi_target(f"bench_onednn_conv_{target}",
                                            jax.ffi.pycapsule(getattr(lib, symbol)),
                                            platform="cpu")
            lib.BenchOnednnVersion.restype = ctypes.c_char_p
            _state.update(lib=lib, version=lib.BenchOnednnVersion().decode())
        except (RuntimeError, OSError, subprocess.TimeoutExpired, AttributeError) as e:
            if os.environ.get("BENCH_REQUIRE_ONEDNN") == "1":
                raise RuntimeError(f"oneDNN convolution required (BENCH_REQUIRE_ONEDNN=1) "
                                   f"but unavailable: {e}") from None
            _state["error"] = str(e)
        return _state


def available() -> bool:
    """Whether ``conv2d`` can run here (builds the extension on the first call)."""
    return "lib" in _load()


def why_unavailable() -> str | None:
    """None when available, else one line saying why not."""
    return _load().get("error")


def version() -> str | None:
    """oneDNN's version, as the loaded library reports it, or None."""
    return _load().get("version")


def conv2d(x, kernel, strides, pads, dilation, groups: int = 1):
    """``lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)`` for float32,
    computed by oneDNN, with both gradients by oneDNN too. ``strides``, ``dilation``: pairs;
    ``pads``: two ``(lo, hi)`` pairs, none negative; ``groups=C`` with a ``(h, w, 1, C)``
    kernel is a depthwise convolution. Raises RuntimeError where ``available()`` is
    False."""
    if not available():
        raise RuntimeError(f"oneDNN conv2d unavailable: {why_unavailable()}")
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise TypeError(f"oneDNN conv2d takes float32, got {x.dtype} and {kernel.dtype}")
    if (x.ndim != 4 or kernel.ndim != 4 or groups < 1 or x.shape[3] != kernel.shape[2] * groups
            or kernel.shape[3] % groups):
        raise ValueError(f"oneDNN conv2d: input {x.shape} and HWIO kernel {kernel.shape} "
                         f"in {groups} group(s)")
    geom = (tuple(strides), tuple(tuple(p) for p in pads), tuple(dilation), int(groups))
    if any(p < 0 for pair in geom[1] for p in pair):
        raise ValueError(f"oneDNN conv2d: negative padding {geom[1]}")
    if kernel.shape[:2] == (1, 1):
        # oneDNN's 1x1 kernel gradient with a stride gives wrong sums for some small shapes
        # (2x8x8x3 -> 8, stride 2), in 2.6 and 3.2 alike; a 1x1 convolution is a matrix
        # product, which models.layers.conv_matmul computes.
        raise ValueError("oneDNN conv2d: 1x1 kernels are matrix products (conv_matmul)")
    return _conv(x, kernel, geom)


def conv2d_bias_act(x, kernel, bias, strides, pads, dilation, groups: int = 1,
                    act: str | None = None, residual=None):
    """``act(conv2d(x, kernel, ...) + bias [+ residual])`` in one oneDNN call, for inference:
    the bias, the residual (oneDNN's sum post-op, into the residual's buffer, which XLA
    hands over or copies: ``input_output_aliases``) and the activation (``None``, ``"relu"``
    or ``"relu6"``) are post-ops of the convolution, so no pass over the output follows it. Any kernel size, 1x1 included (only the strided 1x1
    kernel gradient is wrong in oneDNN, and this has no gradient: JAX refuses to
    differentiate it; ``models.layers.conv_bn_act`` gives it one). Raises where ``conv2d``
    does."""
    if not available():
        raise RuntimeError(f"oneDNN conv2d unavailable: {why_unavailable()}")
    if act not in ACTIVATIONS:
        raise ValueError(f"oneDNN conv2d activation {act!r}: expected one of {list(ACTIVATIONS)}")
    if any(a.dtype != jnp.float32 for a in (x, kernel, bias)):
        raise TypeError(f"oneDNN conv2d takes float32, got {x.dtype}, {kernel.dtype} and "
                        f"{bias.dtype}")
    if (x.ndim != 4 or kernel.ndim != 4 or groups < 1 or x.shape[3] != kernel.shape[2] * groups
            or kernel.shape[3] % groups or bias.shape != (kernel.shape[3],)):
        raise ValueError(f"oneDNN conv2d: input {x.shape}, HWIO kernel {kernel.shape} in "
                         f"{groups} group(s) and bias {bias.shape}")
    geom = (tuple(strides), tuple(tuple(p) for p in pads), tuple(dilation), int(groups))
    if any(p < 0 for pair in geom[1] for p in pair):
        raise ValueError(f"oneDNN conv2d: negative padding {geom[1]}")
    oh, ow = _out_hw(x.shape, kernel.shape, geom)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"oneDNN conv2d of {x.shape} with {kernel.shape}: empty output")
    out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, kernel.shape[3]), x.dtype)
    if residual is None:
        return jax.ffi.ffi_call("bench_onednn_conv_bias_act", out, vmap_method="sequential")(
            x, kernel, bias, **_attrs(geom), act=np.int64(ACTIVATIONS[act]))
    if residual.shape != out.shape or residual.dtype != jnp.float32:
        raise ValueError(f"oneDNN conv2d: residual {residual.shape} {residual.dtype}, "
                         f"expected the output's {out.shape} float32")
    return jax.ffi.ffi_call("bench_onednn_conv_bias_sum_act", out, vmap_method="sequential",
                            input_output_aliases={3: 0})(
        x, kernel, bias, residual, **_attrs(geom), act=np.int64(ACTIVATIONS[act]))


def _attrs(geom) -> dict:
    strides, pads, dilation, groups = geom
    return dict(strides=np.asarray(strides, np.int64),
                pad_lo=np.asarray([p[0] for p in pads], np.int64),
                pad_hi=np.asarray([p[1] for p in pads], np.int64),
                dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))


def _out_hw(x_shape, k_shape, geom):
    strides, pads, dilation, _ = geom
    return tuple((x_shape[1 + i] + sum(pads[i]) - (k_shape[i] - 1) * dilation[i] - 1)
                 // strides[i] + 1 for i in range(2))


def _forward(x, kernel, geom):
    oh, ow = _out_hw(x.shape, kernel.shape, geom)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"oneDNN conv2d of {x.shape} with {kernel.shape}: empty output")
    out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, kernel.shape[3]), x.dtype)
    return jax.ffi.ffi_call("bench_onednn_conv_fwd", out, vmap_method="sequential")(
        x, kernel, **_attrs(geom))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, geom):
    return _forward(x, kernel, geom)


def _conv_fwd(x, kernel, geom):
    return _forward(x, kernel, geom), (x, kernel)


def _conv_bwd(geom, res, g):
    x, kernel = res
    g = g.astype(jnp.float32)
    dx = jax.ffi.ffi_call("bench_onednn_conv_dx", jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="sequential")(g, kernel, **_attrs(geom))
    dk = jax.ffi.ffi_call("bench_onednn_conv_dk",
                          jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
                          vmap_method="sequential")(x, g, **_attrs(geom))
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


_CALL = re.compile(r"= f32\[([\d,]*)\]\S* custom-call\(.*"
                   r"custom_call_target=\"bench_onednn_conv_(\w+)\""
                   r".*operand_layout_constraints=\{f32\[([\d,]*)\]\S*, f32\[([\d,]*)\]"
                   r".*backend_config=\{([^}]*)\}")
_ATTR = re.compile(r"(\w+) = dense<\[?([-\d, ]+)\]?>")


def _taps_reading_input(size: int, out: int, kernel: int, stride: int, pad_lo: int,
                        dilation: int) -> int:
    """(output position, tap) pairs along one axis whose input index is inside the image."""
    return sum(1 for o in range(out) for t in range(kernel)
               if 0 <= o * stride + t * dilation - pad_lo < size)


def custom_call_flops(hlo_text: str) -> tuple[float, int]:
    """FLOPs of the oneDNN convolution calls in a compiled module's text, which XLA's cost
    analysis cannot see (it counts each custom call as -1 FLOP), and how many there are.
    Counted as XLA counts a convolution: 2 FLOPs per multiply-add that reads an input pixel
    (not the padding), the same for each of the three passes."""
    flops, count = 0.0, 0
    for m in _CALL.finditer(hlo_text):
        kind = m.group(2)
        result, a, b = ([int(d) for d in m.group(i).split(",") if d] for i in (1, 3, 4))
        attrs = {}
        for name, vals in _ATTR.findall(m.group(5)):
            v = [int(t) for t in vals.replace(" ", "").split(",")]
            attrs[name] = v * 2 if len(v) == 1 else v
        x, out, kernel = {"fwd": (a, result, b), "bias_act": (a, result, b),
                          "bias_sum_act": (a, result, b),
                          "dx": (result, a, b), "dk": (a, b, result)}[kind]
        valid = [_taps_reading_input(x[1 + i], out[1 + i], kernel[i], attrs["strides"][i],
                                     attrs["pad_lo"][i], attrs["dilation"][i])
                 for i in range(2)]
        flops += 2.0 * out[0] * out[3] * kernel[2] * valid[0] * valid[1]  # C / groups
        count += 1
    return flops, count
