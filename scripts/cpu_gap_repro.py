"""Minimal reproductions of the ops that keep our CPU steps behind PyTorch's, each
timed in JAX and in PyTorch (eager, channels_last), each framework in a process of its own
(two in one process share the OpenMP runtime and slow each other), round by round:

- ``conv``: a 3x3 stride-1 SAME convolution at ResNet-20's first stage (16x32x32x16, batch
  16): forward, input gradient, kernel gradient (PyTorch's backward times are its autograd
  call less its forward); in JAX both as XLA's ``lax.conv`` and as our oneDNN custom calls
  (``runtime.onednn``, where it builds);
- ``bn_relu6``: training-mode BatchNorm then ReLU6 at MobileNetV2's widest expanded
  activation (16x112x112x96): forward + backward of ``sum(relu6(bn(x)) * g)``, as XLA
  differentiates it and with ``models.layers.batchnorm_act_train``'s hand-written gradient;
- ``fwd3x3 HxWxC``: the inference forward of a 3x3 stride-1 convolution (C to C channels,
  batch 16) at each stage of ResNet-20 (32, 16, 8 px) and ResNet-50 (56, 28, 14, 7 px): ours
  through oneDNN (the pip wheel's 3.2, or ``$BENCH_ONEDNN_ROOT``'s) against PyTorch's
  (the oneDNN built into it; ``torch.__config__.show()`` names its version);
- ``chain``: 12 such convolutions at 16x32x32x16 in one program (one eager loop), with and
  without a ReLU between each two: what an XLA fusion between two oneDNN calls costs.

    python scripts/cpu_gap_repro.py [--rounds 5] [--repeats 10]

Prints ms per op and the ratio JAX / PyTorch, above 1 = JAX slower.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

INFER_SHAPES = ((32, 16), (16, 32), (8, 64), (56, 64), (28, 128), (14, 256), (7, 512))
CHAIN = 12


def _ms(fn, repeats: int) -> float:
    """Median ms of ``repeats`` calls after one warm-up call."""
    from bench.speed.timing import time_calls

    return 1000 * time_calls(fn, 0, repeats)[1]


def jax_ops(rng) -> dict:
    """No-argument calls, one per op, in JAX."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(rng.standard_normal((16, 32, 32, 16), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 16), np.float32) * 0.1)
    g = jnp.asarray(rng.standard_normal((16, 32, 32, 16), np.float32))
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    fwd = jax.jit(conv)
    dx = jax.jit(lambda g, w: jax.vjp(lambda a: conv(a, w), x)[1](g)[0])
    dw = jax.jit(lambda g, x: jax.vjp(lambda k: conv(x, k), w)[1](g)[0])
    b = jnp.asarray(rng.standard_normal((16, 112, 112, 96), np.float32))
    gb = jnp.asarray(rng.standard_normal((16, 112, 112, 96), np.float32))
    scale, bias = jnp.ones(96), jnp.zeros(96)

    def bn_relu6(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
        y = (x - mean) * jax.lax.rsqrt(var + 1e-3) * scale + bias
        return jnp.sum(jnp.clip(y, 0, 6) * gb)

    bn = jax.jit(jax.grad(bn_relu6, (0, 1, 2)))

    def bn_relu6_ours(x, scale, bias):  # models.layers.batchnorm_act_train's computation
        from models import layers

        y, _, _ = layers._bn_act(x, scale, bias, None, (1e-3, "relu6", False))
        return jnp.sum(y * gb)

    bn_ours = jax.jit(jax.grad(bn_relu6_ours, (0, 1, 2)))
    ops = {"conv fwd": lambda: fwd(x, w).block_until_ready(),
           "conv input grad": lambda: dx(g, w).block_until_ready(),
           "conv kernel grad": lambda: dw(g, x).block_until_ready(),
           "bn_relu6 fwd+bwd": lambda: jax.block_until_ready(bn(b, scale, bias)),
           "bn_relu6 fwd+bwd (hand-written)": lambda: jax.block_until_ready(
               bn_ours(b, scale, bias))}
    from runtime import onednn

    if onednn.available():
        def conv_dnn(x, w):
            return onednn.conv2d(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))

        fwd_d = jax.jit(conv_dnn)
        dx_d = jax.jit(lambda g, w: jax.vjp(lambda a: conv_dnn(a, w), x)[1](g)[0])
        dw_d = jax.jit(lambda g, x: jax.vjp(lambda k: conv_dnn(x, k), w)[1](g)[0])
        ops.update({"conv fwd (oneDNN)": lambda: fwd_d(x, w).block_until_ready(),
                    "conv input grad (oneDNN)": lambda: dx_d(g, w).block_until_ready(),
                    "conv kernel grad (oneDNN)": lambda: dw_d(g, x).block_until_ready()})
        for hw, c in INFER_SHAPES:
            xi = jnp.asarray(rng.standard_normal((16, hw, hw, c), np.float32))
            wi = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32) * 0.05)
            ops[f"fwd3x3 {hw}x{hw}x{c} (oneDNN)"] = (
                lambda xi=xi, wi=wi: fwd_d(xi, wi).block_until_ready())
        ws = [jnp.asarray(rng.standard_normal((3, 3, 16, 16), np.float32) * 0.05)
              for _ in range(CHAIN)]
        for relu in (False, True):
            def chain(x, ws, relu=relu):
                for k in ws:
                    x = conv_dnn(x, k)
                    x = jax.nn.relu(x) if relu else x
                return x

            f = jax.jit(chain)
            ops[f"chain{' + relu' if relu else ''} (oneDNN)"] = (
                lambda f=f, ws=ws: f(x, ws).block_until_ready())
    return ops


def torch_ops(rng) -> dict:
    """The same ops in PyTorch (eager, channels_last)."""
    import torch

    cl = torch.channels_last
    x = torch.from_numpy(rng.standard_normal((16, 16, 32, 32), np.float32)).to(memory_format=cl)
    g = torch.from_numpy(rng.standard_normal((16, 16, 32, 32), np.float32)).to(memory_format=cl)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=cl)
    xr = x.clone().requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal((16, 96, 112, 112), np.float32)).to(
        memory_format=cl).requires_grad_(True)
    gb = torch.from_numpy(rng.standard_normal((16, 96, 112, 112), np.float32)).to(memory_format=cl)
    bn = torch.nn.BatchNorm2d(96, eps=1e-3).train()

    def fwd():
        with torch.no_grad():
            conv(x)

    def both(grad_of):
        return lambda: torch.autograd.grad(conv(grad_of[0]), grad_of[1], g)

    def bn_step():
        (torch.nn.functional.relu6(bn(b)) * gb).sum().backward()

    ops = {"conv fwd": fwd, "conv input grad + fwd": both((xr, xr)),
           "conv kernel grad + fwd": both((x, conv.weight)), "bn_relu6 fwd+bwd": bn_step}
    for hw, c in INFER_SHAPES:
        xi = torch.from_numpy(rng.standard_normal((16, c, hw, hw), np.float32)).to(
            memory_format=cl)
        ci = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=cl).eval()

        def infer(xi=xi, ci=ci):
            with torch.inference_mode():
                ci(xi)

        ops[f"fwd3x3 {hw}x{hw}x{c}"] = infer
    convs = [torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=cl).eval()
             for _ in range(CHAIN)]
    for relu in (False, True):
        def chain(relu=relu):
            with torch.inference_mode():
                y = x
                for c in convs:
                    y = c(y)
                    y = torch.relu(y) if relu else y

        ops[f"chain{' + relu' if relu else ''}"] = chain
    return ops


def _one_round(framework: str, repeats: int) -> dict:
    """ms per op of one framework, in a fresh process (``--only``)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", framework,
                           "--repeats", str(repeats)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Time both frameworks' ops round by round and print the medians and ratios."""
    import json
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--only", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:  # the child: one framework, one round, JSON on the last line
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ops = (jax_ops if args.only == "jax" else torch_ops)(np.random.default_rng(0))
        print(json.dumps({k: _ms(f, args.repeats) for k, f in ops.items()}))
        return 0
    load0 = os.getloadavg()[0]
    t: dict = {}
    for _ in range(args.rounds):
        for fw in ("jax", "torch"):
            for k, v in _one_round(fw, args.repeats).items():
                t.setdefault((fw, k), []).append(v)
    m = {k: statistics.median(v) for k, v in t.items()}
    torch_ms = {"conv fwd": m[("torch", "conv fwd")],
                "conv input grad": m[("torch", "conv input grad + fwd")] - m[("torch", "conv fwd")],
                "conv kernel grad": m[("torch", "conv kernel grad + fwd")]
                - m[("torch", "conv fwd")],
                "bn_relu6 fwd+bwd": m[("torch", "bn_relu6 fwd+bwd")]}
    torch_ms.update({k: v for (fw, k), v in m.items()
                     if fw == "torch" and k.startswith(("fwd3x3", "chain"))})
    print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}")
    print("| op | jax ms | torch ms | jax / torch |")
    print("|---|---|---|---|")
    for k, v in torch_ms.items():
        for form in ("", " (oneDNN)", " (hand-written)"):
            if ("jax", k + form) in m:
                print(f"| {k}{form} | {m[('jax', k + form)]:.2f} | {v:.2f} | "
                      f"{m[('jax', k + form)] / v:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
