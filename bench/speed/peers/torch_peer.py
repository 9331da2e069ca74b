"""The PyTorch peers: the same architecture, eager (``torch.compile`` optional), channels-last,
on CUDA when available, else on the CPU.

Two sources, two peers. ``torch``: torchvision's models when installed, else (and for the
CIFAR ResNets, option-A shortcuts as ``models.cifar_resnet``, and EfficientNet-Lite0..4, as
``models.efficientnet_lite``) written here, so those families need only ``torch``, and so are
Keras' ResNet50 (v1) and MobileNetV2 for machines without torchvision; Xception and
Inception-ResNet-v2 exist only in timm, so this peer takes them from there. ``timm``: always
``timm.create_model(name, pretrained=False)`` (``TIMM_MODELS``); an architecture timm has
no equivalent of gives a row whose note says so. The hand-written ones pad
convolutions symmetrically (``k // 2``) where ours pad like TensorFlow's ``SAME``; the output
shapes and the work are the same. bf16 is ``torch.autocast(dtype=torch.bfloat16)`` with
float32 parameters and optimizer state, the loss in float32 (PyTorch's AMP); fp32 allows
TF32 in matmuls and convolutions, as XLA does by default on GPUs. On CUDA
``cudnn.benchmark`` is on (as timm's ``benchmark.py``). Each timed step ends with a device
synchronise. A batch that runs out of device memory is halved until it fits (the note says
so), and the memory is handed back after each row.
"""

from __future__ import annotations

from ..timing import new_row, time_calls

try:  # this module is imported only when the torch peer is asked for
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:
    torch = None

_LEARNING_RATE = 0.01
CIFAR_RESNETS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
# Our name -> (package, constructor names to try in order): the first importable one is used.
LIBRARY_MODELS = {
    "resnet50": ("torchvision", ("resnet50",)),
    "vgg16": ("torchvision", ("vgg16",)),
    "inception_v3": ("torchvision", ("inception_v3",)),
    "mobilenet_v2": ("torchvision", ("mobilenet_v2",)),
    "xception": ("timm", ("legacy_xception", "xception")),
    "inception_resnet_v2": ("timm", ("inception_resnet_v2",)),
}
# The ``timm`` peer: our name -> timm model names to try in order (the first that
# ``timm.list_models`` knows). timm's resnet50 is torchvision's (v1.5: the stride on the 3x3
# convolution, no biases), not Keras' v1; the rest are the same architectures.
TIMM_MODELS = {
    "resnet50": ("resnet50",),
    "vgg16": ("vgg16",),
    "inception_v3": ("inception_v3",),
    "xception": ("legacy_xception", "xception"),
    "mobilenet_v2": ("mobilenetv2_100",),
    "inception_resnet_v2": ("inception_resnet_v2",),
    "efficientnet_lite0": ("efficientnet_lite0",),
    "efficientnet_lite1": ("efficientnet_lite1",),
    "efficientnet_lite2": ("efficientnet_lite2",),
    "efficientnet_lite3": ("efficientnet_lite3",),
    "efficientnet_lite4": ("efficientnet_lite4",),
}


if torch is not None:

    class _ConvBN(nn.Sequential):
        def __init__(self, cin, cout, k, stride=1, groups=1, act=None, eps=1e-5, bias=False):
            layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias),
                      nn.BatchNorm2d(cout, eps=eps)]
            if act is not None:
                layers.append(act())
            super().__init__(*layers)

    class _BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = _ConvBN(cin, cout, 3, stride, act=nn.ReLU)
            self.conv2 = _ConvBN(cout, cout, 3, 1)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = self.conv2(self.conv1(x))
            s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            if self.extra:  # option A: zero-pad the channels, half before and half after
                s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return F.relu(y + s)

    class CifarResNet(nn.Module):
        """He et al.'s CIFAR ResNet-(6n+2), option-A shortcuts (``models.cifar_resnet``)."""

        def __init__(self, depth: int = 20, num_classes: int = 10):
            super().__init__()
            n = (depth - 2) // 6
            layers, cin = [_ConvBN(3, 16, 3, act=nn.ReLU)], 16
            for stage, cout in enumerate((16, 32, 64)):
                for block in range(n):
                    layers.append(_BasicBlock(cin, cout, 2 if stage and not block else 1))
                    cin = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class _MBConv(nn.Module):
        def __init__(self, cin, cout, k, stride, expand):
            super().__init__()
            mid = cin * expand
            eps = 1e-3
            self.expand = _ConvBN(cin, mid, 1, act=nn.ReLU6, eps=eps) if expand != 1 else None
            self.depthwise = _ConvBN(mid, mid, k, stride, groups=mid, act=nn.ReLU6, eps=eps)
            self.project = _ConvBN(mid, cout, 1, eps=eps)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.expand(x) if self.expand is not None else x
            y = self.project(self.depthwise(y))
            return x + y if self.residual else y

    class EfficientNetLite(nn.Module):
        """EfficientNet-Lite at a width and depth multiplier (``models.efficientnet_lite``);
        no drop-connect, which costs little time."""

        def __init__(self, width: float, depth: float, num_classes: int, dropout: float):
            super().__init__()
            from models import efficientnet_lite as L

            layers = [_ConvBN(3, L.STEM_FEATURES, 3, 2, act=nn.ReLU6, eps=1e-3)]
            cin = L.STEM_FEATURES
            for i, (repeats, k, stride, expand, out) in enumerate(L.STAGES):
                cout = L.round_filters(out, width)
                if 0 < i < len(L.STAGES) - 1:
                    repeats = L.round_repeats(repeats, depth)
                for j in range(repeats):
                    layers.append(_MBConv(cin, cout, k, stride if j == 0 else 1, expand))
                    cin = cout
            layers.append(_ConvBN(cin, L.HEAD_FEATURES, 1, act=nn.ReLU6, eps=1e-3))
            self.features = nn.Sequential(*layers)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(L.HEAD_FEATURES, num_classes)

        def forward(self, x):
            return self.fc(self.dropout(self.features(x).mean((2, 3))))


    class _Bottleneck(nn.Module):
        """Keras ResNet50 (v1) bottleneck: the stride on the first 1x1 convolution, a
        projection shortcut on each stage's first block (``models.resnet``)."""

        def __init__(self, cin, mid, stride, project):
            super().__init__()
            bn = dict(eps=1.001e-5, bias=True)  # Keras' ResNet50 convolutions have biases
            self.conv1 = _ConvBN(cin, mid, 1, stride, act=nn.ReLU, **bn)
            self.conv2 = _ConvBN(mid, mid, 3, 1, act=nn.ReLU, **bn)
            self.conv3 = _ConvBN(mid, 4 * mid, 1, **bn)
            self.shortcut = _ConvBN(cin, 4 * mid, 1, stride, **bn) if project else None

        def forward(self, x):
            s = self.shortcut(x) if self.shortcut is not None else x
            return F.relu(self.conv3(self.conv2(self.conv1(x))) + s)

    class ResNet50(nn.Module):
        """Keras Applications ResNet50 (v1), used when torchvision is not installed."""

        def __init__(self, num_classes: int):
            super().__init__()
            layers = [nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64, eps=1.001e-5), nn.ReLU(),
                      nn.MaxPool2d(3, 2, 1)]
            cin = 64
            for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for b in range(blocks):
                    layers.append(_Bottleneck(cin, mid, stride if b == 0 else 1, b == 0))
                    cin = 4 * mid
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class MobileNetV2(nn.Module):
        """Keras Applications MobileNetV2 (alpha 1.0), used when torchvision is not
        installed; its inverted residuals are ``_MBConv`` with 3x3 depthwise and ReLU6."""

        def __init__(self, num_classes: int):
            super().__init__()
            from models.mobilenet_v2 import STAGES

            layers, cin = [_ConvBN(3, 32, 3, 2, act=nn.ReLU6, eps=1e-3)], 32
            for stage in STAGES:
                for expand, cout, stride in stage:
                    layers.append(_MBConv(cin, cout, 3, stride, expand))
                    cin = cout
            layers.append(_ConvBN(cin, 1280, 1, act=nn.ReLU6, eps=1e-3))
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(1280, num_classes)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    WRITTEN_HERE = {"resnet50": ResNet50, "mobilenet_v2": MobileNetV2}


def build(name: str, num_classes: int) -> tuple[object | None, str]:
    """``(module, where it came from)``; module None (and the reason) when unavailable."""
    import importlib

    if name in CIFAR_RESNETS:
        return CifarResNet(CIFAR_RESNETS[name], num_classes), "written in bench.peers"
    if name in LIBRARY_MODELS:
        package, constructors = LIBRARY_MODELS[name]
        try:
            lib = importlib.import_module(package)
        except ImportError:
            lib = None
        if lib is not None:
            for ctor in constructors:
                if package == "timm" and ctor in lib.list_models(ctor):
                    return (lib.create_model(ctor, pretrained=False, num_classes=num_classes),
                            f"timm {ctor}")
                if package == "torchvision" and hasattr(lib.models, ctor):
                    kw = dict(aux_logits=False, init_weights=False) if ctor == "inception_v3" \
                        else {}
                    return (lib.models.get_model(ctor, weights=None, num_classes=num_classes,
                                                 **kw), f"torchvision {ctor}")
    if name.startswith("efficientnet_lite"):
        from models.efficientnet_lite import VARIANTS

        if name in VARIANTS:
            width, depth, _, dropout = VARIANTS[name]
            return EfficientNetLite(width, depth, num_classes, dropout), "written in bench.peers"
    if name in WRITTEN_HERE:  # torchvision missing: the Keras-equivalent written above
        return WRITTEN_HERE[name](num_classes), \
            f"written in bench.peers ({LIBRARY_MODELS[name][0]} not installed)"
    if name in LIBRARY_MODELS:
        return None, f"{LIBRARY_MODELS[name][0]} not installed (needed for {name})"
    return None, f"no PyTorch equivalent of {name}"


def build_timm(name: str, num_classes: int) -> tuple[object | None, str]:
    """``(module, 'timm NAME')`` from ``timm.create_model(NAME, pretrained=False)``; module
    None (and the reason) when timm is missing or has no equivalent of ``name``."""
    try:
        import timm
    except ImportError:
        return None, "timm not installed"
    for ctor in TIMM_MODELS.get(name, ()):
        if ctor in timm.list_models(ctor):
            return (timm.create_model(ctor, pretrained=False, num_classes=num_classes),
                    f"timm {getattr(timm, '__version__', '?')} {ctor}")
    return None, f"no timm equivalent of {name}"


def param_count(module) -> int:
    """Parameters plus BatchNorm running statistics (Keras' count, as ``models.param_count``)."""
    n = sum(p.numel() for p in module.parameters())
    n += sum(b.numel() for name, b in module.named_buffers()
             if not name.endswith("num_batches_tracked"))
    return int(n)



def is_out_of_memory(e: BaseException) -> bool:
    """PyTorch's allocation failure (``torch.OutOfMemoryError``, or its message)."""
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def _release() -> None:
    import gc

    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(model: str, *, batch_size: int, image_size: int, precision: str = "fp32",
            warmup: int = 2, repeats: int = 10, train: bool = True, infer: bool = True,
            num_classes: int | None = None, torch_compile: bool = False,
            source: str = "torch", **_ignored) -> dict:
    """A ``bench.speed`` row for ``model`` in PyTorch (``note`` says why when it cannot run).

    ``source``: ``'torch'`` (torchvision or written here, see the module docstring) or
    ``'timm'``. The row's framework is the source, plus ``'+compile'`` with ``torch_compile``.
    A batch that runs out of device memory is halved until it fits."""
    if source not in ("torch", "timm"):
        raise ValueError(f"source {source!r}: not 'torch' or 'timm'")
    framework = source + ("+compile" if torch_compile else "")
    row = new_row(model, framework, precision, image_size, batch_size)
    if torch is None:
        row["note"] = "torch not installed"
        return row
    tried = []
    while True:
        try:
            out = _measure_at(model, framework, batch_size=batch_size, image_size=image_size,
                              precision=precision, warmup=warmup, repeats=repeats, train=train,
                              infer=infer, num_classes=num_classes,
                              torch_compile=torch_compile, source=source)
            break
        except Exception as e:  # noqa: BLE001 -- only out-of-memory is retried
            if not is_out_of_memory(e) or batch_size <= 1:
                raise
            tried.append(batch_size)
            batch_size //= 2
            if torch_compile:
                torch._dynamo.reset()
        finally:
            _release()
    if tried:
        out["batch_note"] = (f"batch {', '.join(map(str, tried))} ran out of device memory; "
                             f"measured at {batch_size}")
    return out


def _measure_at(model: str, framework: str, *, batch_size: int, image_size: int,
                precision: str, warmup: int, repeats: int, train: bool, infer: bool,
                num_classes: int | None, torch_compile: bool, source: str) -> dict:
    import contextlib
    import math

    import models

    row = new_row(model, framework, precision, image_size, batch_size)
    num_classes = num_classes or models.get_model_info(model).num_classes
    net, origin = (build_timm if source == "timm" else build)(model, num_classes)
    if net is None:
        row["note"] = origin
        return row
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net = net.to(device, memory_format=torch.channels_last)
    row.update(params=param_count(net), devices=1,
               device=f"1x {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}",
               note=f"torch {torch.__version__}, {origin}, channels_last, "
                    + ("AMP bf16 autocast, " if precision == "bf16" else
                       "TF32 allowed, " if device.type == "cuda" else "")
                    + ("torch.compile" if torch_compile else "eager"))
    fn = torch.compile(net) if torch_compile else net
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(
        device, memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    opt = torch.optim.SGD(net.parameters(), lr=_LEARNING_RATE, momentum=0.9)
    last_loss = []

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = fn(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        sync()
        last_loss[:] = [loss.detach()]

    def infer_step():
        with torch.inference_mode(), autocast():
            fn(x)
        sync()

    for phase, step, mode in (("train", train_step if train else None, net.train),
                              ("infer", infer_step if infer else None, net.eval)):
        if step is None:
            continue
        mode()
        first, median = time_calls(step, warmup, repeats)
        row[f"{phase}_img_per_s"] = batch_size / median
        row[f"{phase}_step_ms"] = 1000 * median
        row[f"{phase}_compile_s"] = max(0.0, first - median)
    if last_loss and not math.isfinite(float(last_loss[0])):
        row["note"] += "; the train loss is not finite"
    return row


def eager_steps(model: str, batch_size: int, image_size: int,
                num_classes: int | None = None) -> dict:
    """``{'train': fn, 'infer': fn, 'origin': str}``: the peer's eager CPU train step (SGD
    with momentum, channels_last) and inference step, each a no-argument call that returns
    once done; for interleaved comparisons (``scripts/cpu_ab.py``, the per-op profile)."""
    import models

    if torch is None:
        raise ValueError("torch is not installed (pip install torch)")
    num_classes = num_classes or models.get_model_info(model).num_classes
    net, origin = build(model, num_classes)
    if net is None:
        raise ValueError(f"no PyTorch peer for {model}: {origin}")
    net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(
        memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=_LEARNING_RATE, momentum=0.9)

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    def infer():
        net.eval()
        with torch.inference_mode():
            net(x)

    return {"train": train, "infer": infer, "origin": origin}
