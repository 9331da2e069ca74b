"""Every registered model honours the output contract; exact parameter counts where published.

Registry-driven, as timm's ``tests/test_models.py``: a model added with ``@register_model`` is
tested here with no edit. Each model is built at a small input (its ``min_input_size``, at
least 32x32) with 3 classes; forward passes and gradients run under ``nnx.jit`` (one compile
each, cheaper than eager dispatch for the big graphs). Headless variants and parameter counts
use ``nnx.eval_shape`` (shapes only: no weights allocated, nothing compiled).

Cost on 2 CPU cores is compile time: building a model compiles one initializer per weight
shape, so the contract test draws weights with the ``rbg`` PRNG (half threefry's compile
time; same distributions), and the compiled checks run on one representative per family
for the near-duplicates (``GRAD_REPRESENTATIVE``); those get the contract by shapes.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from models._registry import PREPROCESSING_MODES, get_builder
from models.layers import Classifier

NUM_CLASSES = 3
BATCH = 2

# model -> the model whose numerical checks cover it (same blocks, other depth or width);
# None: none is run (says why). These variants get the contract by shapes only
# (``_shape_contract``: eval_shape, nothing compiled); every other model runs it for real:
# eval forward, determinism, train-mode gradients.
GRAD_REPRESENTATIVE = {
    **{f"efficientnet_lite{i}": "efficientnet_lite0" for i in range(1, 5)},
    **{f"resnet{d}": "resnet20" for d in (32, 44, 56, 110)},
    # Its forward pass alone compiles for ~2 CPU-minutes. It is built from classes checked
    # elsewhere: Stem and conv_bn of inception_v3, InceptionResNetBlock and Towers, which
    # inception_resnet_small uses too.
    "inception_resnet_v2": None,
}


# Cases that take longest on 2 CPU cores (15-60 s each): marked slow, so that
# ``pytest -m "not slow"`` is a quick pass over the small models. CI runs them all.
SLOW = ("efficientnet_lite*", "inception_resnet_v2", "inception_v3", "mobilenet_v2",
        "resnet50", "resnet110", "xception")


def _cases() -> list:
    slow = {n for pattern in SLOW for n in models.list_models(pattern)}
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n
            for n in models.list_models()]


def _size(name: str) -> int:
    info = models.get_model_info(name)
    return max(32, *(info.min_input_size or (32, 32)))


def _overrides(name: str, size: int) -> dict:
    """Builders whose top depends on the input size (flatten heads) take ``input_size``."""
    params = inspect.signature(get_builder(name)).parameters
    return {"input_size": (size, size)} if "input_size" in params else {}


def _inputs(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(0.0, 1.0, (BATCH, size, size, 3)), jnp.float32)
    y = jnp.arange(BATCH) % NUM_CLASSES
    return x, y


@nnx.jit
def _eval_step(model, x):
    return model(x), model.embed(x)


def _loss(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def _grad_step(model, x, y):
    (loss, logits), grads = nnx.value_and_grad(_loss, has_aux=True)(model, x, y)
    return loss, logits, grads


def _finite(a) -> bool:
    return bool(np.all(np.isfinite(np.asarray(a))))


def _shape_contract(name: str, kw: dict, x) -> None:
    """The contract by shapes alone (``nnx.eval_shape``: nothing allocated or compiled), for
    the variants whose representative runs the numerical checks on the same classes."""
    covered_by = GRAD_REPRESENTATIVE[name]
    assert covered_by is None or covered_by in models.list_models()
    model = nnx.eval_shape(lambda: models.create_model(name, num_classes=NUM_CLASSES, **kw))
    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.num_features, int) and model.num_features > 0
    names = model.block_names()
    assert names and names[-1] == "head" and len(set(names)) == len(names), names
    for block in names:
        assert getattr(model, block, None) is not None, f"{name}: no attribute {block!r}"
    for mode in ("eval", "train"):
        getattr(model, mode)()
        logits = nnx.eval_shape(lambda m, x: m(x), model, x)
        assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32, mode
    emb = nnx.eval_shape(lambda m, x: m.embed(x), model, x)
    assert emb.shape == (BATCH, model.num_features)
    headless = nnx.eval_shape(lambda: models.create_model(name, num_classes=0, **kw))
    assert headless.num_classes == 0 and "head" not in headless.block_names()


@pytest.mark.parametrize("name", _cases())
def test_model_contract(name):
    info = models.get_model_info(name)
    assert info.name == name and info.input_size[2] == 3
    assert info.preprocessing in PREPROCESSING_MODES
    size = _size(name)
    kw = _overrides(name, size)
    x, y = _inputs(size)
    if name in GRAD_REPRESENTATIVE:
        _shape_contract(name, kw, x)
        return
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    model = models.create_model(name, num_classes=NUM_CLASSES, rngs=rngs, **kw)

    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.num_features, int) and model.num_features > 0
    names = model.block_names()
    assert names and names[-1] == "head", names
    assert len(set(names)) == len(names), names
    for block in names:  # --freeze looks blocks up by name
        assert getattr(model, block, None) is not None, f"{name}: no attribute {block!r}"

    model.eval()
    logits, emb = _eval_step(model, x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert emb.shape == (BATCH, model.num_features)
    assert _finite(logits) and _finite(emb), f"{name}: non-finite output in eval mode"
    logits_again, _ = _eval_step(model, x)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits_again),
                                  err_msg=f"{name}: eval mode is not deterministic")

    # num_classes=0: no head, model(x) is the embedding. (num_features may differ from the
    # model with a head: VGG16 without its top pools block5, with it the embedding is fc2.)
    headless = nnx.eval_shape(lambda: models.create_model(name, num_classes=0, **kw))
    assert headless.num_classes == 0 and headless.num_features > 0
    assert "head" not in headless.block_names()
    if type(headless).__call__ is Classifier.__call__:
        # The shared __call__ returns embed(x) when there is no head (test_classifier_...);
        # tracing the whole graph again would only repeat that.
        assert headless.head is None
    else:
        out = nnx.eval_shape(lambda m, x: m(x), headless, x)
        assert out.shape == (BATCH, headless.num_features), f"{name}: headless {out.shape}"

    model.train()
    loss, train_logits, grads = _grad_step(model, x, y)
    assert _finite(loss) and _finite(train_logits), f"{name}: non-finite train-mode output"
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    params = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    assert len(leaves) == len(params) > 0
    bad = [jax.tree_util.keystr(p) for p, g in leaves if not _finite(g)]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"
    zero = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(np.asarray(g))]
    # A few arrays may legitimately get no gradient at initialisation (a bias a BatchNorm
    # cancels, a ReLU dead on this batch); most must.
    assert len(zero) <= 0.1 * len(leaves), (
        f"{name}: {len(zero)} of {len(leaves)} parameter arrays have zero gradient, "
        f"e.g. {zero[:5]}"
    )


def test_classifier_without_head_returns_the_embedding():
    """The shared ``Classifier.__call__``: with ``num_classes=0`` ``model(x)`` is
    ``model.embed(x)`` (what test_model_contract relies on for every model using it)."""
    model = models.create_model("benchmark_cnn", num_classes=0)
    assert model.head is None and model.block_names()[-1] != "head"
    x, _ = _inputs(32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model.embed(x)))
    assert model(x).shape == (BATCH, model.num_features) == (BATCH, 64)


def _count(name: str, **kw) -> dict[str, int]:
    """Parameter counts of a model built abstractly (shapes only, no weights allocated)."""
    return models.param_count(nnx.eval_shape(lambda: models.create_model(name, **kw)))


# ---- exact sizes ----------------------------------------------------------------------------

def test_benchmark_cnn_size():
    # Report 003, Figure 5: 208 + 2,080 + 8,256 + 6,500, at 224x224x3 and 100 classes.
    assert _count("benchmark_cnn") == {"trainable": 17_044, "non_trainable": 0,
                                       "total": 17_044}


@pytest.mark.parametrize("kw,total", [
    (dict(depth=1), 4_560),                      # 208 + 4,352
    (dict(depth=3), 27_184),                     # the report's benchmark, 16/32/64
    (dict(depth=4), 76_464),                     # 16/32/64/128
    (dict(depth=4, width=128), 231_680),         # 128 x 4
    (dict(widths=(64, 64, 64, 64)), 66_816),
    (dict(widths=(32, 64, 64, 128)), 91_040),
])
def test_small_cnn_sizes_match_report_002(kw, total):
    """Totals of report 002's Keras summaries (UECFOOD-256: 256 classes)."""
    assert _count("small_cnn", **kw)["total"] == total


def test_vgg16_sizes_match_keras():
    # keras.applications.VGG16: with the top (224x224, 1000 classes) and without.
    assert _count("vgg16")["total"] == 138_357_544
    assert _count("vgg16", num_classes=0) == {"trainable": 14_714_688, "non_trainable": 0,
                                              "total": 14_714_688}


def test_vgg16_cut_size_matches_report_000():
    # Report 000, section 9: 1,792 + 36,928 + 73,856 + 295,168 + 1,180,160 + 2,359,808
    # + 8,192 (BatchNorm on 2,048 features; Keras counts the moving statistics) + 262,272
    # + 387, at 64x64x3 and 3 classes.
    assert _count("vgg16_cut") == {"trainable": 4_214_467, "non_trainable": 4_096,
                                   "total": 4_218_563}


def _cifar_resnet_by_hand(depth: int, num_classes: int = 10) -> tuple[int, int]:
    """He et al.'s 6n+2 network counted by hand: (trainable, BatchNorm moving statistics).

    3x3 conv weights (no biases: BatchNorm follows), BatchNorm gamma/beta, the linear head;
    option-A shortcuts add nothing. Each BatchNorm also keeps a moving mean and variance.
    """
    n = (depth - 2) // 6
    convs = 3 * 3 * 3 * 16  # stem
    bn_channels = 16
    in_c = 16
    for c in (16, 32, 64):
        for _ in range(n):
            convs += 9 * in_c * c + 9 * c * c
            bn_channels += 2 * c
            in_c = c
    trainable = convs + 2 * bn_channels + 64 * num_classes + num_classes
    return trainable, 2 * bn_channels


@pytest.mark.parametrize("depth,trainable,total,published_m", [
    (20, 269_722, 271_098, 0.27),
    (32, 464_154, 466_426, 0.46),
    (44, 658_586, 661_754, 0.66),
    (56, 853_018, 857_082, 0.85),
    (110, 1_727_962, 1_736_058, 1.7),
])
def test_cifar_resnet_sizes(depth, trainable, total, published_m):
    by_hand, stats = _cifar_resnet_by_hand(depth)
    assert (by_hand, by_hand + stats) == (trainable, total)
    assert _count(f"resnet{depth}") == {"trainable": trainable, "non_trainable": stats,
                                        "total": total}
    # He et al. 2015, Table 6 ("# params"), rounded as the paper prints it.
    assert round(trainable / 1e6, 2 if published_m < 1 else 1) == published_m


# ---- the small CNNs and VGG -----------------------------------------------------------------

def test_small_cnn_widths_double_up_to_128():
    from models.simple_cnn import small_cnn_widths

    assert small_cnn_widths(5, 16) == [16, 32, 64, 128, 128]
    assert small_cnn_widths(2, 128) == [128, 128]
    with pytest.raises(ValueError, match="depth"):
        small_cnn_widths(0, 16)


def test_flatten_head_is_sized_for_its_input():
    """basic_cnn's flatten head fits input_size only; the error says how to build it."""
    model = nnx.eval_shape(lambda: models.create_model("basic_cnn", input_size=32))
    assert model.num_features == 128
    assert nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 32, 32, 3))).shape == (1, 3)
    with pytest.raises(ValueError, match=r"input_size=\(32, 32\)"):
        nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="too small"):
        nnx.eval_shape(lambda: models.create_model("deeper_cnn", input_size=16))


def test_dropout_acts_in_train_mode_only():
    model = models.create_model("small_cnn", num_classes=NUM_CLASSES, depth=2, dropout=0.5)
    x, _ = _inputs(32)
    model.train()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    assert not np.allclose(a, b), "train mode: dropout should make two passes differ"
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))


def test_vgg16_top_depends_on_input_size():
    # Keras: with the top the flatten size follows the input (224 for ImageNet weights);
    # without it any input >= 32 works and the embedding is the GAP of block5_pool.
    top = nnx.eval_shape(lambda: models.create_model("vgg16", num_classes=5, input_size=64))
    assert top.block_names() == [f"block{i}" for i in range(1, 6)] + ["fc1", "fc2", "head"]
    assert top.num_features == 4096
    assert top.fc1.kernel.shape == (2 * 2 * 512, 4096)
    with pytest.raises(ValueError, match="input_size"):
        nnx.eval_shape(lambda m, x: m(x), top, jnp.zeros((1, 32, 32, 3)))
    bare = nnx.eval_shape(lambda: models.create_model("vgg16", num_classes=0))
    assert bare.num_features == 512
    for hw in (32, 45, 224):
        out = nnx.eval_shape(lambda m, x: m(x), bare, jnp.zeros((1, hw, hw, 3)))
        assert out.shape == (1, 512)
    # GAP features and a new head: how to fine-tune from the ImageNet notop file.
    gap = nnx.eval_shape(lambda: models.create_model("vgg16", num_classes=5, include_top=False))
    assert gap.block_names()[-2:] == ["block5", "head"] and gap.head.kernel.shape == (512, 5)
    with pytest.raises(ValueError, match="32x32"):
        nnx.eval_shape(lambda: models.create_model("vgg16", input_size=16))


def test_vgg16_keras_layer_names():
    model = nnx.eval_shape(lambda: models.create_model("vgg16", input_size=32))
    per_block = (2, 2, 3, 3, 3)
    convs = [f"block{b}_conv{i}" for b, n in enumerate(per_block, 1) for i in range(1, n + 1)]
    assert list(model.keras_layers()) == convs + ["fc1", "fc2", "predictions"]


def test_vgg16_load_weights_with_and_without_top(tmp_path):
    """A file with the top loads into a model without it; a notop file into a model with
    fc1/fc2 is refused, saying to build it with include_top=False."""
    from models.keras_weights import save_keras_h5

    full = models.create_model("vgg16", num_classes=10, input_size=32, seed=1)
    full_path = tmp_path / "vgg16_top.h5"
    save_keras_h5(full, full_path)
    bare = models.create_model("vgg16", num_classes=0, weights=str(full_path))
    for name, layer in bare.keras_layers().items():
        want = full.keras_layers()[name]
        np.testing.assert_array_equal(np.asarray(layer.kernel[...]), np.asarray(want.kernel[...]))
        np.testing.assert_array_equal(np.asarray(layer.bias[...]), np.asarray(want.bias[...]))

    notop_path = tmp_path / "vgg16_notop.h5"
    save_keras_h5(bare, notop_path)
    with pytest.raises(ValueError, match="include_top=False"):
        models.create_model("vgg16", num_classes=10, input_size=32, weights=str(notop_path))
    tuned = models.create_model("vgg16", num_classes=10, include_top=False,
                                weights=str(notop_path))
    np.testing.assert_array_equal(np.asarray(tuned.block5[2].kernel[...]),
                                  np.asarray(full.block5[2].kernel[...]))
    # The top file's fc1 is sized for 32x32 inputs: a model with the top at 64x64 refuses it.
    with pytest.raises(ValueError, match="fc1"):
        models.create_model("vgg16", num_classes=10, input_size=64, weights=str(full_path))


def test_vgg16_imagenet_entry():
    spec = models.get_model_info("vgg16").pretrained["imagenet"]
    assert spec.filename == "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert spec.url.endswith("/vgg16/" + spec.filename) and spec.url.startswith("https://")
    assert (spec.md5, spec.size) == ("6d6bbae143d832006294945121d1f1fc", 58_889_256)
    assert models.get_model_info("vgg16").preprocessing == "caffe"


def test_mobilenet_v2_batchnorm_momentum_override():
    """Keras' 0.999 by default; an override for short runs from scratch (seeds suite 003)."""
    def momenta(m):
        return {float(bn.momentum) for _, bn in nnx.iter_graph(m) if isinstance(bn, nnx.BatchNorm)}

    assert momenta(models.create_model("mobilenet_v2", num_classes=10, alpha=0.35)) == {0.999}
    assert momenta(models.create_model("mobilenet_v2", num_classes=10, alpha=0.35,
                                       bn_momentum=0.9)) == {0.9}
    with pytest.raises(ValueError, match="bn_momentum"):
        models.create_model("mobilenet_v2", num_classes=10, alpha=0.35, bn_momentum=1.0)


def _host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


@pytest.mark.parametrize("name", ["resnet20", "basic_cnn", "mobilenet_v2"])
def test_jitted_init_matches_eager_init(name):
    """create_model's one-program init draws what the layer-by-layer eager build draws (the
    same keys; floats within an ulp or two), and leaves the caller's Rngs where eager does."""
    rngs_fast, rngs_eager = nnx.Rngs(3), nnx.Rngs(3)
    fast = models.create_model(name, rngs=rngs_fast)
    eager = models.create_model(name, rngs=rngs_eager, eager=True)
    a = jax.tree_util.tree_flatten_with_path(nnx.state(fast))[0]
    b = jax.tree_util.tree_flatten_with_path(nnx.state(eager))[0]
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_allclose(_host(x), _host(y), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(_host(rngs_fast.params()), _host(rngs_eager.params()))
    x = jnp.zeros((1, *models.get_model_info(name).input_size[:2], 3))
    fast.eval(), eager.eval()
    np.testing.assert_allclose(fast(x), eager(x), rtol=1e-5, atol=1e-6)


def test_loading_without_eager_init_fills_every_variable(tmp_path):
    """Weights loaded into a traced-only model: what the file holds is the file's, what it
    skips (a head of another size) is the eager init's; nothing is left unset."""
    src = models.create_model("vgg16", 10, seed=1, input_size=32)
    path = tmp_path / "w.h5"
    from models.keras_weights import save_keras_h5

    save_keras_h5(src, path)
    fast = models.create_model("vgg16", 5, seed=2, weights=str(path), input_size=32)
    eager = models.create_model("vgg16", 5, seed=2, weights=str(path), input_size=32,
                                eager=True)
    for (p, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(nnx.state(fast))[0],
                              jax.tree_util.tree_flatten_with_path(nnx.state(eager))[0]):
        assert isinstance(x, jax.Array), p
        assert not np.isnan(_host(x)).any() if jnp.issubdtype(x.dtype, jnp.inexact) else True
        np.testing.assert_allclose(_host(x), _host(y), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(p))
    assert fast.head.kernel.shape == (4096, 5)  # the skipped head: initialised, not loaded
    np.testing.assert_array_equal(fast.block1[0].kernel[...], src.block1[0].kernel[...])


def test_image_size_sets_the_size_dependent_options():
    assert models.size_kwargs("basic_cnn", 48) == {"input_size": (48, 48)}
    assert models.size_kwargs("basic_cnn", (40, 56)) == {"input_size": (40, 56)}
    assert models.size_kwargs("resnet20", 48) == {}
    m = models.create_model("basic_cnn", 3, image_size=48)
    assert m(jnp.zeros((2, 48, 48, 3))).shape == (2, 3)
    with pytest.raises(Exception):
        models.create_model("basic_cnn", 3)(jnp.zeros((2, 48, 48, 3)))
    # An explicit builder option wins over image_size.
    m = models.create_model("basic_cnn", 3, image_size=48, input_size=(32, 32))
    assert m(jnp.zeros((1, 32, 32, 3))).shape == (1, 3)
