"""Where the CPU train-step gap to PyTorch comes from: ResNet-20's convolutions, one by one.

ResNet-20's train step is almost only 3x3 convolutions at three shapes (16 channels at 32x32,
32 at 16x16, 64 at 8x8). For each shape this times, in JAX (XLA:CPU) and PyTorch (eager,
channels_last, oneDNN), the three kernels a train step runs per convolution: forward, the
gradient with respect to the input and the gradient with respect to the kernel; warm-up
excluded, ``block_until_ready()``, median of repeats. Run it as a script:

    python -m bench.peers.conv_gap [--batch 128] [--repeats 20] [--json out.json]

Set ``XLA_FLAGS`` before it to compare XLA:CPU options (e.g. the YNNPACK fusions).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

SHAPES = ((32, 16), (16, 32), (8, 64))  # (spatial size, channels) of ResNet-20's 3x3 convs
N_CONVS = {16: 6, 32: 6, 64: 6}  # 3x3 convs per width in ResNet-20 (stride-2 ones counted at their stage)


def _median_ms(fn, warmup: int, repeats: int) -> float:
    """Median ms of ``repeats`` calls after ``warmup`` (``bench.speed.timing.time_calls``)."""
    from ..timing import time_calls

    return 1000 * time_calls(fn, max(0, warmup - 1), repeats)[1]


def time_jax(batch: int, size: int, ch: int, warmup: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, ch), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, ch, ch), np.float32) * 0.1)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    fwd = jax.jit(conv)
    _, vjp = jax.vjp(conv, x, w)
    g = jnp.ones((batch, size, size, ch), jnp.float32)
    bwd_in = jax.jit(lambda g, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    bwd_w = jax.jit(lambda g, x: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    return {
        "fwd": _median_ms(lambda: fwd(x, w).block_until_ready(), warmup, repeats),
        "bwd_input": _median_ms(lambda: bwd_in(g, w).block_until_ready(), warmup, repeats),
        "bwd_kernel": _median_ms(lambda: bwd_w(g, x).block_until_ready(), warmup, repeats),
    }


def time_kernel_grad_shifted(batch: int, size: int, ch: int, warmup: int, repeats: int
                             ) -> float:
    """The kernel gradient written as 9 shifted matmuls (one per tap), ms: a rewrite that
    could sidestep XLA:CPU's backward-filter convolution (it does not, see the results)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, ch), np.float32))
    g = jnp.asarray(rng.standard_normal((batch, size, size, ch), np.float32))

    @jax.jit
    def shifted(g, x):
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = [xp[:, i:i + size, j:j + size, :].reshape(-1, ch).T @ g.reshape(-1, ch)
                for i in range(3) for j in range(3)]
        return jnp.stack(taps).reshape(3, 3, ch, ch)

    dn = ("NHWC", "HWIO", "NHWC")
    w = jnp.zeros((3, 3, ch, ch), jnp.float32)
    ref = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=dn), w)[1](g)[0]
    np.testing.assert_allclose(np.asarray(shifted(g, x)), np.asarray(ref), rtol=1e-3,
                               atol=1e-3 * float(jnp.abs(ref).max()))  # the same gradient
    return _median_ms(lambda: shifted(g, x).block_until_ready(), warmup, repeats)


def time_torch(batch: int, size: int, ch: int, warmup: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    x = torch.randn(batch, ch, size, size).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    g = torch.ones(batch, ch, size, size).to(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            conv(x)

    def bwd_in():
        out = conv(xr)
        torch.autograd.grad(out, xr, g)

    def bwd_w():
        out = conv(x)
        torch.autograd.grad(out, conv.weight, g)

    t_fwd = _median_ms(fwd, warmup, repeats)
    # PyTorch cannot run a backward without its forward: subtract the forward's time.
    return {"fwd": t_fwd,
            "bwd_input": _median_ms(bwd_in, warmup, repeats) - t_fwd,
            "bwd_kernel": _median_ms(bwd_w, warmup, repeats) - t_fwd}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--rewrite", action="store_true",
                   help="also time the kernel gradient as 9 shifted matmuls in JAX")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for size, ch in SHAPES:
        row = {"shape": f"{args.batch}x{size}x{size}x{ch}", "convs_in_resnet20": N_CONVS[ch]}
        for k, v in time_jax(args.batch, size, ch, args.warmup, args.repeats).items():
            row[f"jax_{k}_ms"] = v
        if args.rewrite:
            row["jax_bwd_kernel_shifted_ms"] = time_kernel_grad_shifted(
                args.batch, size, ch, args.warmup, args.repeats)
        if not args.no_torch:
            for k, v in time_torch(args.batch, size, ch, args.warmup, args.repeats).items():
                row[f"torch_{k}_ms"] = v
        rows.append(row)
    kinds = ("fwd", "bwd_input", "bwd_kernel")
    print("| shape (NHWC) | convs | " + " | ".join(
        f"{fw} {k} ms" for k in kinds for fw in ("jax", "torch") if not (
            fw == "torch" and args.no_torch)) + " |")
    print("|---|---|" + "---|" * (len(kinds) * (1 if args.no_torch else 2)))
    for r in rows:
        cells = [f"{r[f'{fw}_{k}_ms']:.2f}" for k in kinds for fw in ("jax", "torch")
                 if f"{fw}_{k}_ms" in r]
        print(f"| {r['shape']} | {r['convs_in_resnet20']} | " + " | ".join(cells) + " |")
    if args.rewrite:
        print("jax kernel gradient as 9 shifted matmuls, ms: " + ", ".join(
            f"{r['shape']} {r['jax_bwd_kernel_shifted_ms']:.2f}" for r in rows))
    for fw in ("jax", "torch"):
        if f"{fw}_fwd_ms" in rows[0]:
            total = sum(r["convs_in_resnet20"] * sum(r[f"{fw}_{k}_ms"] for k in kinds)
                        for r in rows)
            print(f"{fw}: ResNet-20's 3x3 convolutions, forward + both gradients: "
                  f"{total:.0f} ms per step of {args.batch} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
