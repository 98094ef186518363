"""Small checkpoints in the exact formats `ials convert` reads, built from random weights.

- `write_nvidia_pkl`: a StyleGAN2-ADA network pickle as NVIDIA's training loop writes it: a dict of
  `torch_utils.persistence` objects (`_reconstruct_persistent_obj(meta)` with the module source, the
  class name and the module's `__dict__`, `_init_args` and `_init_kwargs` included), `dnnlib.util.EasyDict`
  kwargs, NumPy float gains, tensors through `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`
  and storages through `torch.storage._load_from_bytes`. Written by the pure-Python pickler with the
  global names of NVIDIA's environment (NumPy 1.x `numpy.core` or 2.x `numpy._core`).
- `rosinality_state_dict`: rosinality/stylegan2-pytorch `Generator.state_dict()` names and shapes,
  in its order, for any channel table.
- `lernapparat_state_dict`, `ials_classifier_state_dict`, `write_ials_pretrain`: the official IALS
  `pretrain/` folder (StyleGAN v1 lernapparat port, `ClassifyModel`, directions, codes).
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import pickle
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.networks.classifier import ARCHS

# ----------------------------------------------------------------------------
# NVIDIA StyleGAN2-ADA pickles.


class EasyDict(dict):  # type: ignore[type-arg]
    """dnnlib.util.EasyDict as NVIDIA defines it (pickled under that name)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _reconstruct_persistent_obj(meta: Any) -> Any:
    """Stands for torch_utils.persistence._reconstruct_persistent_obj; only its name is pickled."""
    raise AssertionError("never called")


_GLOBAL_NAMES: dict[Any, tuple[str, str]] = {
    _reconstruct_persistent_obj: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    EasyDict: ("dnnlib.util", "EasyDict"),
}

MODULE_SRC = '"""training/networks.py of stylegan2-ada-pytorch (its text; never executed by the reader)."""\n'


class NvidiaPickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Pickles nn.Modules the way `persistence.persistent_class.__reduce__` does.

    `init_kwargs` maps a module to the `_init_kwargs` NVIDIA would have recorded (the arguments
    actually passed); other modules record our `init_kwargs` or nothing.
    """

    def __init__(
        self,
        file: Any,
        protocol: int,
        *,
        numpy_names: str = "numpy._core",
        init_kwargs: Mapping[int, Any] | None = None,
        module_src: str = MODULE_SRC,
        class_names: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(file, protocol=protocol)
        self.numpy_names = numpy_names
        self.init_kwargs = dict(init_kwargs or {})
        self.module_src = module_src
        self.class_names = dict(class_names or {})

    # The base class dispatches functions to its own save_global; route them through ours.
    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, nn.Module):
            return NotImplemented
        state: dict[str, Any] = {}
        for key, value in vars(obj).items():
            if key == "init_kwargs":
                continue
            if key in ("_parameters", "_buffers", "_modules"):
                value = OrderedDict(value)
            elif isinstance(value, float):
                value = np.float64(value)  # NVIDIA's gains are NumPy floats (x / np.sqrt(n)).
            state[key] = value
        state["_init_args"] = ()
        state["_init_kwargs"] = self.init_kwargs.get(id(obj), dict(getattr(obj, "init_kwargs", {})))
        meta = dict(
            type="class",
            version=6,
            module_src=self.module_src,
            class_name=self.class_names.get(id(obj), type(obj).__name__),
            state=state,
        )
        return (_reconstruct_persistent_obj, (meta,), None)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = _GLOBAL_NAMES.get(obj) if _hashable(obj) else None
        module = getattr(obj, "__module__", None) or ""
        if target is None and module.startswith("numpy._core") and self.numpy_names == "numpy.core":
            target = ("numpy.core" + module[len("numpy._core") :], name or obj.__qualname__)
        if target is None:
            super().save_global(obj, name)
            return
        module_name, global_name = target
        if self.proto >= 4:
            self.save(module_name)
            self.save(global_name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module_name.encode() + b"\n" + global_name.encode() + b"\n")
        self.memoize(obj)


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


class Discriminator(nn.Module):
    """A stand-in D with a block, a NumPy array attribute and NumPy gains."""

    def __init__(self) -> None:
        super().__init__()
        self.b4 = DiscriminatorBlock()
        self.out = nn.Parameter(torch.randn([1, 8]))
        self.mbstd = np.arange(4, dtype=np.float32)


class DiscriminatorBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn([8, 3, 3, 3]))
        self.weight_gain = 1 / math.sqrt(27)


class AugmentPipe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(0.25))
        self.xflip = 1.0


def nvidia_init_kwargs(G: nn.Module) -> EasyDict:
    """What NVIDIA's train.py passes to Generator: z_dim, w_dim, EasyDict sub-kwargs, c_dim, sizes."""
    kw = G.init_kwargs  # type: ignore[attr-defined]
    return EasyDict(
        z_dim=kw["z_dim"],
        w_dim=kw["w_dim"],
        mapping_kwargs=EasyDict(num_layers=kw["mapping_kwargs"]["num_layers"]),
        synthesis_kwargs=EasyDict(**kw["synthesis_kwargs"], num_fp16_res=0, conv_clamp=None),
        c_dim=kw["c_dim"],
        img_resolution=kw["img_resolution"],
        img_channels=kw["img_channels"],
    )


def nvidia_snapshot(G_ema: nn.Module) -> dict[str, Any]:
    """The dict NVIDIA's training loop pickles: training_set_kwargs, G, D, G_ema, augment_pipe."""
    return dict(
        training_set_kwargs=dict(
            class_name="training.dataset.ImageFolderDataset", path="ffhq.zip", use_labels=False,
            max_size=70000, xflip=True, resolution=G_ema.img_resolution,
        ),
        G=copy.deepcopy(G_ema),
        D=Discriminator(),
        G_ema=G_ema,
        augment_pipe=AugmentPipe(),
    )  # fmt: skip


def write_nvidia_pkl(
    path: Path,
    data: dict[str, Any],
    *,
    protocol: int = 4,
    numpy_names: str = "numpy._core",
    module_src: str = MODULE_SRC,
    class_names: Mapping[int, str] | None = None,
) -> Path:
    """Pickle `data` (e.g. `nvidia_snapshot(G)`) as NVIDIA's persistence would (G, G_ema: NVIDIA's kwargs)."""
    init_kwargs = {id(data[k]): nvidia_init_kwargs(data[k]) for k in ("G", "G_ema") if k in data}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
        NvidiaPickler(
            buffer,
            protocol,
            numpy_names=numpy_names,
            init_kwargs=init_kwargs,
            module_src=module_src,
            class_names=class_names,
        ).dump(data)
    path.write_bytes(buffer.getvalue())
    return path


# NVIDIA's own names and shapes, frozen: `training.networks.Generator(z_dim=32, c_dim=0, w_dim=32,
# img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(
# channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=None)).state_dict()` of
# NVlabs/stylegan2-ada-pytorch at d72cc7d, in its order. Our tests pickle our own Generator, so only
# this list catches a name or shape that drifts from NVIDIA's (the config of `tests.packs.tiny_generator`).
NVIDIA_G_STATE_16PX: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("synthesis.b4.const", (32, 4, 4)),
    ("synthesis.b4.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.weight", (32, 32, 3, 3)),
    ("synthesis.b4.conv1.noise_strength", ()),
    ("synthesis.b4.conv1.bias", (32,)),
    ("synthesis.b4.conv1.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.noise_const", (4, 4)),
    ("synthesis.b4.conv1.affine.weight", (32, 32)),
    ("synthesis.b4.conv1.affine.bias", (32,)),
    ("synthesis.b4.torgb.weight", (3, 32, 1, 1)),
    ("synthesis.b4.torgb.bias", (3,)),
    ("synthesis.b4.torgb.affine.weight", (32, 32)),
    ("synthesis.b4.torgb.affine.bias", (32,)),
    ("synthesis.b8.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.weight", (32, 32, 3, 3)),
    ("synthesis.b8.conv0.noise_strength", ()),
    ("synthesis.b8.conv0.bias", (32,)),
    ("synthesis.b8.conv0.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.noise_const", (8, 8)),
    ("synthesis.b8.conv0.affine.weight", (32, 32)),
    ("synthesis.b8.conv0.affine.bias", (32,)),
    ("synthesis.b8.conv1.weight", (32, 32, 3, 3)),
    ("synthesis.b8.conv1.noise_strength", ()),
    ("synthesis.b8.conv1.bias", (32,)),
    ("synthesis.b8.conv1.resample_filter", (4, 4)),
    ("synthesis.b8.conv1.noise_const", (8, 8)),
    ("synthesis.b8.conv1.affine.weight", (32, 32)),
    ("synthesis.b8.conv1.affine.bias", (32,)),
    ("synthesis.b8.torgb.weight", (3, 32, 1, 1)),
    ("synthesis.b8.torgb.bias", (3,)),
    ("synthesis.b8.torgb.affine.weight", (32, 32)),
    ("synthesis.b8.torgb.affine.bias", (32,)),
    ("synthesis.b16.resample_filter", (4, 4)),
    ("synthesis.b16.conv0.weight", (16, 32, 3, 3)),
    ("synthesis.b16.conv0.noise_strength", ()),
    ("synthesis.b16.conv0.bias", (16,)),
    ("synthesis.b16.conv0.resample_filter", (4, 4)),
    ("synthesis.b16.conv0.noise_const", (16, 16)),
    ("synthesis.b16.conv0.affine.weight", (32, 32)),
    ("synthesis.b16.conv0.affine.bias", (32,)),
    ("synthesis.b16.conv1.weight", (16, 16, 3, 3)),
    ("synthesis.b16.conv1.noise_strength", ()),
    ("synthesis.b16.conv1.bias", (16,)),
    ("synthesis.b16.conv1.resample_filter", (4, 4)),
    ("synthesis.b16.conv1.noise_const", (16, 16)),
    ("synthesis.b16.conv1.affine.weight", (16, 32)),
    ("synthesis.b16.conv1.affine.bias", (16,)),
    ("synthesis.b16.torgb.weight", (3, 16, 1, 1)),
    ("synthesis.b16.torgb.bias", (3,)),
    ("synthesis.b16.torgb.affine.weight", (16, 32)),
    ("synthesis.b16.torgb.affine.bias", (16,)),
    ("mapping.w_avg", (32,)),
    ("mapping.fc0.weight", (32, 32)),
    ("mapping.fc0.bias", (32,)),
    ("mapping.fc1.weight", (32, 32)),
    ("mapping.fc1.bias", (32,)),
)


# ----------------------------------------------------------------------------
# rosinality stylegan2-pytorch.


def make_kernel(k: list[float]) -> torch.Tensor:
    f = torch.tensor(k, dtype=torch.float32)
    kernel = f[None, :] * f[:, None]
    return kernel / kernel.sum()


def rosinality_state_dict(
    size: int, style_dim: int, n_mlp: int, channels: Mapping[int, int], *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`Generator(size, style_dim, n_mlp).state_dict()` of rosinality's model.py, with `channels` widths.

    Values are random but of trained scales: modulation biases near 1, noise and biases non-zero.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * scale + shift

    blur = make_kernel([1, 3, 3, 1]) * 4
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = randn(style_dim, style_dim, scale=100.0)  # divided by lr_mul at init
        sd[f"style.{i}.bias"] = randn(style_dim, scale=10.0)

    def styled_conv(name: str, cin: int, cout: int, up: bool) -> None:
        sd[f"{name}.conv.weight"] = randn(1, cout, cin, 3, 3)
        if up:
            sd[f"{name}.conv.blur.kernel"] = blur.clone()
        sd[f"{name}.conv.modulation.weight"] = randn(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = randn(cin, scale=0.2, shift=1.0)
        sd[f"{name}.noise.weight"] = randn(1, scale=0.3)
        sd[f"{name}.activate.bias"] = randn(cout, scale=0.2)

    def to_rgb(name: str, cin: int, up: bool) -> None:
        sd[f"{name}.bias"] = randn(1, 3, 1, 1, scale=0.2)
        if up:
            sd[f"{name}.upsample.kernel"] = blur.clone()
        sd[f"{name}.conv.weight"] = randn(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = randn(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = randn(cin, scale=0.2, shift=1.0)

    sd["input.input"] = randn(1, channels[4], 4, 4)
    styled_conv("conv1", channels[4], channels[4], False)
    to_rgb("to_rgb1", channels[4], False)
    log_size = int(math.log2(size))
    in_ch = channels[4]
    for i in range(3, log_size + 1):
        out_ch = channels[2**i]
        styled_conv(f"convs.{2 * (i - 3)}", in_ch, out_ch, True)
        styled_conv(f"convs.{2 * (i - 3) + 1}", out_ch, out_ch, False)
        in_ch = out_ch
    for i in range(3, log_size + 1):
        to_rgb(f"to_rgbs.{i - 3}", channels[2**i], True)
    for layer_idx in range((log_size - 2) * 2 + 1):
        res = (layer_idx + 5) // 2
        sd[f"noises.noise_{layer_idx}"] = randn(1, 1, 2**res, 2**res)
    return sd


def write_rosinality(
    path: Path, state: dict[str, torch.Tensor], *, latent_avg: torch.Tensor | None, training: bool = False
) -> Path:
    """`convert_weight.py`'s {"g_ema", "latent_avg"}, or train.py's checkpoint (with args, no latent_avg)."""
    if training:
        ckpt: dict[str, Any] = {
            "g": state, "d": {"convs.0.0.weight": torch.randn(8, 3, 1, 1)}, "g_ema": state,
            "g_optim": {"state": {}, "param_groups": []}, "d_optim": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(size=16, r1=10.0, n_mlp=2), "ada_aug_p": 0.0,
        }  # fmt: skip
    else:
        ckpt = {"g_ema": state, "latent_avg": latent_avg}
    torch.save(ckpt, path)
    return path


# ----------------------------------------------------------------------------
# The official IALS pretrain/ folder.


def lernapparat_state_dict(
    resolution: int,
    *,
    z_dim: int = 32,
    w_dim: int = 32,
    num_mapping: int = 8,
    fmap_base: int = 64,
    fmap_max: int = 32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The port's `nn.Sequential(g_mapping=G_mapping(), g_synthesis=G_synthesis()).state_dict()`, in order."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * scale + shift

    def nf(stage: int) -> int:
        return min(int(fmap_base / 2.0**stage), fmap_max)

    sd: dict[str, torch.Tensor] = {}
    features = [z_dim] + [w_dim] * num_mapping
    for i in range(num_mapping):
        sd[f"g_mapping.dense{i}.weight"] = randn(
            features[i + 1], features[i], scale=100.0
        )  # init_std 1/lrmul
        sd[f"g_mapping.dense{i}.bias"] = randn(features[i + 1], scale=10.0)
    log2 = int(math.log2(resolution))
    sd["g_synthesis.torgb.weight"] = randn(3, nf(log2 - 1), 1, 1)
    sd["g_synthesis.torgb.bias"] = randn(3, scale=0.1)

    def epilogue(prefix: str, ch: int) -> None:
        sd[f"{prefix}.top_epi.noise.weight"] = randn(ch, scale=0.3)
        sd[f"{prefix}.style_mod.lin.weight"] = randn(2 * ch, w_dim)
        sd[f"{prefix}.style_mod.lin.bias"] = randn(2 * ch, scale=0.2)

    for res_log2 in range(2, log2 + 1):
        block = f"g_synthesis.blocks.{2**res_log2}x{2**res_log2}"
        ch = nf(res_log2 - 1)
        if res_log2 == 2:
            sd[f"{block}.const"] = randn(1, ch, 4, 4)
            sd[f"{block}.bias"] = randn(ch, scale=0.2)
            epilogue(f"{block}.epi1", ch)
            sd[f"{block}.conv.weight"] = randn(ch, ch, 3, 3)
            sd[f"{block}.conv.bias"] = randn(ch, scale=0.2)
            epilogue(f"{block}.epi2", ch)
        else:
            sd[f"{block}.conv0_up.weight"] = randn(ch, nf(res_log2 - 2), 3, 3)
            sd[f"{block}.conv0_up.bias"] = randn(ch, scale=0.2)
            sd[f"{block}.conv0_up.intermediate.kernel"] = make_kernel([1, 2, 1])[None, None]
            epilogue(f"{block}.epi1", ch)
            sd[f"{block}.conv1.weight"] = randn(ch, ch, 3, 3)
            sd[f"{block}.conv1.bias"] = randn(ch, scale=0.2)
            epilogue(f"{block}.epi2", ch)
    return sd


# torchvision's resnet18 children as the IALS `backbone` nn.Sequential numbers them.
_BACKBONE_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def ials_classifier_state_dict(
    *, width: int = 8, seed: int = 0, arch: str = "resnet18"
) -> dict[str, torch.Tensor]:
    """`ClassifyModel().state_dict()`: `backbone.N.*` and `extra_layer.*`, random BatchNorm statistics."""
    torch.manual_seed(seed)
    net = ARCHS[arch](width=width, num_classes=2)
    gen = torch.Generator().manual_seed(seed + 1)
    sd: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        top, rest = key.split(".", 1)
        value = value.clone()
        if value.is_floating_point() and ("bn" in key or "downsample.1" in key):
            if key.endswith("running_var") or key.endswith("weight"):
                value = 0.5 + torch.rand(value.shape, generator=gen)
            else:
                value = 0.2 * torch.randn(value.shape, generator=gen)
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(1000)
        sd[f"extra_layer.{rest}" if top == "fc" else f"backbone.{_BACKBONE_INDEX[top]}.{rest}"] = value
    sd["extra_layer.weight"] = torch.randn(sd["extra_layer.weight"].shape, generator=gen)
    sd["extra_layer.bias"] = torch.randn(sd["extra_layer.bias"].shape, generator=gen)
    return sd


IALS_TEST_ATTRIBUTES = ("smiling", "male", "young")


def write_ials_pretrain(
    root: Path,
    *,
    resolution: int = 16,
    w_dim: int = 32,
    dataset: str = "ffhq",
    attributes: tuple[str, ...] = IALS_TEST_ATTRIBUTES,
    legacy_format: bool = False,
    seed: int = 0,
) -> Path:
    """A pretrain/ folder: stylegan/{dataset}/{weight.pkl,avg_code.npy}, classifier/, attr_level_direction/,
    real_latent_code/ and vgg/, as the official scripts read them."""
    save: Callable[[Any, Path], None] = (
        (lambda obj, p: torch.save(obj, p, _use_new_zipfile_serialization=False)) if legacy_format
        else (lambda obj, p: torch.save(obj, p))
    )  # fmt: skip
    gen_dir = root / "stylegan" / dataset
    gen_dir.mkdir(parents=True)
    save(
        OrderedDict(lernapparat_state_dict(resolution, w_dim=w_dim, z_dim=w_dim, seed=seed)),
        gen_dir / "weight.pkl",
    )
    rng = np.random.RandomState(seed)
    np.save(gen_dir / "avg_code.npy", rng.randn(w_dim).astype(np.float32) * 0.3)
    for idx, attr in enumerate(attributes):
        (root / "classifier" / attr).mkdir(parents=True)
        save(
            OrderedDict(ials_classifier_state_dict(seed=seed + 10 + idx)),
            root / "classifier" / attr / "weight.pkl",
        )
        for folder in ("interfacegan", "ganspace", "ours"):
            (root / "attr_level_direction" / folder / dataset).mkdir(parents=True, exist_ok=True)
            np.save(
                root / "attr_level_direction" / folder / dataset / f"{attr}.npy",
                rng.randn(1, w_dim).astype(np.float32) * 3,
            )
    num_ws = 2 * int(math.log2(resolution)) - 2
    (root / "real_latent_code").mkdir()
    for name in ("real1", "real2"):
        np.save(root / "real_latent_code" / f"{name}.npy", rng.randn(num_ws, w_dim).astype(np.float32))
    (root / "vgg").mkdir()
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, root / "vgg" / "imagenet_vgg16.pth")
    return root
