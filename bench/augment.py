"""On-device, seeded data augmentation that runs inside the jitted train step.

Two policies, both on uint8-valued float images (NHWC, values 0..255), before preprocessing:

* ``flip``: random horizontal flip only (cheap; the best choice for very short schedules).
* ``crop_flip``: pad by ``pad`` pixels (zeros), random crop back to size, random horizontal
  flip: the CIFAR recipe of He et al. 2015.
* ``affine``: what the reports' Keras ``ImageDataGenerator`` did: random rotation
  (+-``rotation`` degrees), shifts (+-``shift`` of the size), zoom (1 +- ``zoom``) and a
  horizontal flip, bilinear sampling with nearest-edge fill (Keras' default fill mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import AUGMENTS as POLICIES  # noqa: F401
from .config import AugmentConfig


def _flip(key, x):
    n = x.shape[0]
    do = jax.random.bernoulli(key, 0.5, (n,))
    return jnp.where(do[:, None, None, None], x[:, :, ::-1, :], x)


def crop_flip(key, x, pad: int = 4, flip: bool = True):
    n, h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)

    def crop_one(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    out = jax.vmap(crop_one)(xp, offsets)
    return _flip(k_flip, out) if flip else out


def _bilinear_sample(img, ys, xs):
    """Sample ``img`` (H, W, C) at float coordinates, clamping to the edge ('nearest' fill)."""
    h, w, _ = img.shape
    ys = jnp.clip(ys, 0.0, h - 1.0)
    xs = jnp.clip(xs, 0.0, w - 1.0)
    y0 = jnp.floor(ys).astype(jnp.int32)
    x0 = jnp.floor(xs).astype(jnp.int32)
    y1 = jnp.minimum(y0 + 1, h - 1)
    x1 = jnp.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[..., None]
    wx = (xs - x0)[..., None]
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def affine(key, x, rotation=15.0, shift=0.1, zoom=0.1, flip=True, vflip=False):
    """Random rotation, shift (a fraction, or a (height, width) pair of fractions as Keras'
    ``height_shift_range``/``width_shift_range``), zoom, horizontal and vertical flips."""
    n, h, w, _ = x.shape
    k_rot, k_shift, k_zoom, k_flip, k_vflip = jax.random.split(key, 5)
    theta = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-rotation, maxval=rotation))
    sh = jnp.broadcast_to(jnp.asarray(shift, jnp.float32), (2,))
    t = jax.random.uniform(k_shift, (n, 2), minval=-1.0, maxval=1.0) * sh * jnp.array([h, w])
    s = jax.random.uniform(k_zoom, (n, 2), minval=1 - zoom, maxval=1 + zoom)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def warp(img, th, tt, ss):
        # Inverse map: output pixel -> source pixel (rotate, zoom about the centre, shift).
        dy, dx = yy - cy, xx - cx
        cos, sin = jnp.cos(th), jnp.sin(th)
        sy = (cos * dy - sin * dx) * ss[0] + cy + tt[0]
        sx = (sin * dy + cos * dx) * ss[1] + cx + tt[1]
        return _bilinear_sample(img, sy, sx)

    out = jax.vmap(warp)(x, theta, t, s)
    if vflip:
        do = jax.random.bernoulli(k_vflip, 0.5, (n,))
        out = jnp.where(do[:, None, None, None], out[:, ::-1], out)
    return _flip(k_flip, out) if flip else out


def apply(cfg: AugmentConfig, key, x):
    """Augment a batch ``x`` (float, 0..255) with policy ``cfg``; identity for 'none'."""
    if cfg.policy == "none":
        return x
    if cfg.policy == "flip":
        return _flip(key, x)
    if cfg.policy == "crop_flip":
        return crop_flip(key, x, cfg.pad, cfg.flip)
    return affine(key, x, cfg.rotation, cfg.shift, cfg.zoom, cfg.flip)
