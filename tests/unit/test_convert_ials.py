"""The official IALS pretrain/ folder: StyleGAN (v1) against a re-statement of the lernapparat port,
classifiers against a functional ResNet-18 on the IALS keys, directions, and an edit on the packed result."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.convert.common import ConvertError
from models.convert.ials_pretrain import (
    load_ials_classifier,
    load_ials_direction,
    load_ials_generator,
    load_ials_pretrain,
)
from models.ials import EditAttribute, edit
from models.networks.stylegan1 import Generator
from models.pack import PackAttribute, load_pack, save_pack
from models.sampling import sample_ws
from tests.convert_fixtures import ials_classifier_state_dict, lernapparat_state_dict, write_ials_pretrain

W_DIM = 32

# ----------------------------------------------------------------------------
# The lernapparat port (model/stylegan.py of yxuhan/IALS), re-stated on its state dict.


def nearest_up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def transposed_conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """conv_transpose2d(x, w [I, O, k, k]) as zero insertion and a correlation with the flipped kernel."""
    n, c, h, wd = x.shape
    z = x.new_zeros([n, c, (h - 1) * stride + 1, (wd - 1) * stride + 1])
    z[:, :, ::stride, ::stride] = x
    k = w.shape[-1]
    z = F.pad(z, [k - 1 - padding] * 4)
    return F.conv2d(z, w.flip([2, 3]).transpose(0, 1))


SQRT2 = math.sqrt(2)


def my_conv(x, sd, name, *, gain=SQRT2, upscale=False, fused_min_res=128):
    weight, bias = sd[f"{name}.weight"], sd[f"{name}.bias"]
    out_ch, in_ch, k, _ = weight.shape
    w = weight * gain / math.sqrt(in_ch * k * k)
    blur = sd.get(f"{name}.intermediate.kernel")
    if upscale and min(x.shape[2:]) * 2 >= fused_min_res:
        # Fused upscale: the kernel padded by one and summed over 2x2 windows (a box filter), transposed.
        w = F.pad(w.permute(1, 0, 2, 3), [1, 1, 1, 1])  # [I, O, k + 2, k + 2]
        box = torch.ones([1, 1, 2, 2])
        w = F.conv2d(w.reshape(-1, 1, k + 2, k + 2), box).reshape(in_ch, out_ch, k + 1, k + 1)
        x = transposed_conv(x, w, 2, (k + 1 - 1) // 2)
    else:
        if upscale:
            x = nearest_up(x)
        x = F.conv2d(x, w, padding=k // 2)
    if blur is not None:
        x = F.conv2d(x, blur.expand(x.shape[1], 1, 3, 3), padding=1, groups=x.shape[1])
    return x + bias.view(1, -1, 1, 1)


def epilogue(x, w, noise, sd, name):
    x = x + sd[f"{name}.top_epi.noise.weight"].view(1, -1, 1, 1) * noise
    x = torch.where(x >= 0, x, 0.2 * x)
    mean = x.mean(dim=[2, 3], keepdim=True)
    var = ((x - mean) ** 2).mean(dim=[2, 3], keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-5)
    lin_w, lin_b = sd[f"{name}.style_mod.lin.weight"], sd[f"{name}.style_mod.lin.bias"]
    style = w @ (lin_w / math.sqrt(lin_w.shape[1])).T + lin_b  # [N, 2C]
    c = x.shape[1]
    return x * (style[:, :c, None, None] + 1) + style[:, c:, None, None]


def lernapparat_mapping(z, sd):
    x = z * torch.rsqrt((z**2).mean(dim=1, keepdim=True) + 1e-8)
    i = 0
    while f"g_mapping.dense{i}.weight" in sd:
        weight, bias = sd[f"g_mapping.dense{i}.weight"], sd[f"g_mapping.dense{i}.bias"]
        x = F.leaky_relu(x @ (weight * math.sqrt(2) / math.sqrt(weight.shape[1]) * 0.01).T + bias * 0.01, 0.2)
        i += 1
    return x


def lernapparat_synthesis(ws, sd, noises, *, fused_min_res=128):
    """G_synthesis.forward with each NoiseLayer's `.noise` set to `noises[i]` (the port's trick)."""
    sd = {k.removeprefix("g_synthesis."): v for k, v in sd.items() if k.startswith("g_synthesis.")}
    blocks = sorted({int(k.split(".")[1].split("x")[0]) for k in sd if k.startswith("blocks.")})
    noise = iter(noises)
    x = None
    for i, res in enumerate(blocks):
        name = f"blocks.{res}x{res}"
        w0, w1 = ws[:, 2 * i], ws[:, 2 * i + 1]
        if res == 4:
            x = sd[f"{name}.const"].expand(ws.shape[0], -1, -1, -1) + sd[f"{name}.bias"].view(1, -1, 1, 1)
            x = epilogue(x, w0, next(noise), sd, f"{name}.epi1")
            x = epilogue(my_conv(x, sd, f"{name}.conv"), w1, next(noise), sd, f"{name}.epi2")
        else:
            x = my_conv(x, sd, f"{name}.conv0_up", upscale=True, fused_min_res=fused_min_res)
            x = epilogue(x, w0, next(noise), sd, f"{name}.epi1")
            x = epilogue(my_conv(x, sd, f"{name}.conv1"), w1, next(noise), sd, f"{name}.epi2")
    return my_conv(x, sd, "torgb", gain=1.0)


def our_noises(G: Generator) -> list[torch.Tensor]:
    return [t[None, None] for key, t in G.synthesis.state_dict().items() if key.endswith("noise_const")]


def generator_from(sd, tmp_path: Path, *, avg_code=None, fused_upscale_min_res: int = 128) -> Generator:
    path = tmp_path / "weight.pkl"
    torch.save(sd, path)
    avg = np.zeros(W_DIM, np.float32) if avg_code is None else avg_code
    with open(path, "rb") as f:
        return load_ials_generator(f, avg_code=avg, fused_upscale_min_res=fused_upscale_min_res)


# ----------------------------------------------------------------------------
# Generator.


@pytest.mark.parametrize(("resolution", "fused_min_res"), [(16, 128), (32, 16)])
def test_images_equal_lernapparat_forward(resolution: int, fused_min_res: int, tmp_path: Path) -> None:
    sd = lernapparat_state_dict(resolution, z_dim=W_DIM, w_dim=W_DIM, seed=resolution)
    G = generator_from(sd, tmp_path, fused_upscale_min_res=fused_min_res)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn([2, W_DIM], generator=gen)
    ws = torch.randn([2, G.num_ws, W_DIM], generator=gen)  # a different w per layer
    with torch.no_grad():
        assert (G.mapping(z, None)[:, 0] - lernapparat_mapping(z, sd)).abs().max() < 1e-4
        ours = G.synthesis(ws, noise_mode="const")
        theirs = lernapparat_synthesis(ws, sd, our_noises(G), fused_min_res=fused_min_res)
        no_noise = G.synthesis(ws, noise_mode="none")
        theirs_no_noise = lernapparat_synthesis(ws, sd, [0.0] * 2 * G.num_ws, fused_min_res=fused_min_res)
    diff = float((ours - theirs).abs().max())
    path = "fused" if resolution >= fused_min_res else "nearest"
    print(f"StyleGAN v1 {resolution} px ({path} upscale): max |ours - port| = {diff:.2e}")
    assert ours.shape == (2, 3, resolution, resolution)
    assert diff < 1e-4
    assert (no_noise - theirs_no_noise).abs().max() < 1e-4


def test_fused_upscale_differs_from_nearest(tmp_path: Path) -> None:
    """The threshold matters: the fused path is not the nearest-neighbour one (so both are tested)."""
    sd = lernapparat_state_dict(16, z_dim=W_DIM, w_dim=W_DIM)
    ws = torch.randn([1, 6, W_DIM])
    with torch.no_grad():
        a = generator_from(sd, tmp_path, fused_upscale_min_res=128).synthesis(ws, noise_mode="none")
        b = generator_from(sd, tmp_path, fused_upscale_min_res=8).synthesis(ws, noise_mode="none")
    assert (a - b).abs().max() > 1e-2


def test_every_tensor_lands_where_it_belongs(tmp_path: Path) -> None:
    sd = lernapparat_state_dict(16, z_dim=W_DIM, w_dim=W_DIM)
    avg_code = np.arange(W_DIM, dtype=np.float32)[None] / W_DIM  # [1, 512]-like
    G = generator_from(sd, tmp_path, avg_code=avg_code)
    own = G.state_dict()
    for key, value in sd.items():
        ours = key.replace("g_mapping.", "mapping.", 1).replace("g_synthesis.", "synthesis.", 1)
        assert torch.equal(own[ours], value), key
    assert torch.equal(G.mapping.w_avg, torch.from_numpy(avg_code[0]))
    noise_keys = sorted(set(own) - {k.replace("g_", "", 1) for k in sd} - {"mapping.w_avg"})
    assert noise_keys and all(k.endswith("noise_const") for k in noise_keys)
    assert (
        G.init_kwargs["synthesis_kwargs"]["fmap_base"] == 64
        and G.init_kwargs["synthesis_kwargs"]["fmap_max"] == 32
    )
    # Two tensors of different shapes swapped: refused. Of one shape: caught by the landing check above.
    swapped = dict(sd)
    a, b = "g_synthesis.blocks.8x8.conv1.weight", "g_synthesis.blocks.16x16.conv1.weight"
    swapped[a], swapped[b] = sd[b], sd[a]
    with pytest.raises(ConvertError, match="blocks.8x8.conv1.weight"):
        generator_from(swapped, tmp_path)
    a, b = "g_mapping.dense1.weight", "g_mapping.dense2.weight"
    swapped = {**sd, a: sd[b], b: sd[a]}
    own = generator_from(swapped, tmp_path).state_dict()
    assert not torch.equal(own["mapping.dense1.weight"], sd[a])


def test_generator_errors(tmp_path: Path) -> None:
    sd = lernapparat_state_dict(16, z_dim=W_DIM, w_dim=W_DIM)
    with pytest.raises(ConvertError, match=r"match no rule.*g_synthesis\.extra"):
        generator_from({**sd, "g_synthesis.extra": torch.zeros(1)}, tmp_path)
    with pytest.raises(ConvertError, match=r"does not fill.*epi2\.style_mod\.lin\.bias"):
        generator_from(
            {k: v for k, v in sd.items() if k != "g_synthesis.blocks.8x8.epi2.style_mod.lin.bias"}, tmp_path
        )
    with pytest.raises(ConvertError, match="avg_code.npy: expected shape"):
        generator_from(sd, tmp_path, avg_code=np.zeros([2, W_DIM], np.float32))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a state dict")
    with open(junk, "rb") as f, pytest.raises(ConvertError, match="not an IALS StyleGAN"):
        load_ials_generator(f, avg_code=np.zeros(W_DIM, np.float32))


def test_truncation_applies_psi_to_all_rows(tmp_path: Path) -> None:
    """The official scripts: w = 0.5 * w + 0.5 * avg_code on every row."""
    avg_code = np.random.RandomState(0).randn(W_DIM).astype(np.float32)
    G = generator_from(lernapparat_state_dict(16, z_dim=W_DIM, w_dim=W_DIM), tmp_path, avg_code=avg_code)
    ws = sample_ws(G, [7], truncation_psi=0.5, device="cpu")
    w = G.mapping(torch.from_numpy(np.random.RandomState(7).randn(1, W_DIM)).float(), None)
    assert torch.allclose(ws, 0.5 * w + 0.5 * torch.from_numpy(avg_code), atol=1e-6)


# ----------------------------------------------------------------------------
# Classifiers.


def resnet18_forward(x, sd):
    """ClassifyModel.forward, functional, on the IALS keys (eval-mode BatchNorm)."""

    def bn(x, p):
        stats = sd[f"{p}.running_mean"], sd[f"{p}.running_var"]
        return F.batch_norm(x, *stats, sd[f"{p}.weight"], sd[f"{p}.bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, sd["backbone.0.weight"], stride=2, padding=3), "backbone.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in (4, 5, 6, 7):
        for block in (0, 1):
            p = f"backbone.{stage}.{block}"
            stride = 2 if stage > 4 and block == 0 else 1
            out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
    x = x.mean(dim=[2, 3])
    return x @ sd["extra_layer.weight"].T + sd["extra_layer.bias"]


def test_classifier_matches_classify_model(tmp_path: Path) -> None:
    sd = ials_classifier_state_dict(width=8, seed=3)
    path = tmp_path / "weight.pkl"
    torch.save(sd, path)
    with open(path, "rb") as f:
        classifier = load_ials_classifier(f, input_resolution=16)
    own = classifier.state_dict()
    assert own["net.layer3.0.downsample.0.weight"].equal(sd["backbone.6.0.downsample.0.weight"])
    assert own["net.fc.weight"].equal(sd["extra_layer.weight"])
    assert own["net.bn1.running_var"].equal(sd["backbone.1.running_var"])
    images = torch.rand([2, 3, 64, 64], generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = classifier.logits(images)
        official = resnet18_forward(F.avg_pool2d((images + 1) / 2, 4, 4), sd)  # (img + 1) / 2, avg_pool2d 4
    print(f"IALS classifier: max |ours - ClassifyModel| = {float((ours - official).abs().max()):.2e}")
    assert (ours - official).abs().max() < 1e-4

    swapped = {**sd, "backbone.4.0.conv1.weight": sd["backbone.4.1.conv1.weight"],
               "backbone.4.1.conv1.weight": sd["backbone.4.0.conv1.weight"]}  # fmt: skip
    torch.save(swapped, path)
    with open(path, "rb") as f, torch.no_grad():
        assert (load_ials_classifier(f, input_resolution=16).logits(images) - official).abs().max() > 1e-3
    torch.save({k: v for k, v in sd.items() if not k.startswith("extra_layer.bias")}, path)
    with open(path, "rb") as f, pytest.raises(ConvertError, match=r"does not fill.*net\.fc\.bias"):
        load_ials_classifier(f)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_classifier_architecture_is_read_from_the_keys(arch: str, tmp_path: Path) -> None:
    sd = ials_classifier_state_dict(width=4, seed=5, arch=arch)
    path = tmp_path / "weight.pkl"
    torch.save(sd, path)
    with open(path, "rb") as f:
        classifier = load_ials_classifier(f, input_resolution=16)
    assert classifier.init_kwargs["arch"] == arch
    assert classifier.state_dict()["net.fc.weight"].equal(sd["extra_layer.weight"])


def test_direction_shapes_and_norm(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.full([1, W_DIM], 3.0, np.float32))
    with open(path, "rb") as f:
        d = load_ials_direction(f, w_dim=W_DIM, what="d.npy")
    assert d.shape == (W_DIM,) and torch.allclose(d, torch.full([W_DIM], 1 / math.sqrt(W_DIM)))
    np.save(path, np.zeros([W_DIM, 2], np.float32))
    with open(path, "rb") as f, pytest.raises(ConvertError, match=r"expected shape \[32\] or \[1, 32\]"):
        load_ials_direction(f, w_dim=W_DIM, what="d.npy")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(path, "rb") as f, pytest.raises(ConvertError, match="not a NumPy .npy array"):
        load_ials_direction(f, w_dim=W_DIM, what="d.npy")


# ----------------------------------------------------------------------------
# The folder, packed and edited.


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy_format", [False, True])
def test_folder_to_pack_and_edit(legacy_format: bool, tmp_path: Path) -> None:
    root = write_ials_pretrain(tmp_path / "pretrain", legacy_format=legacy_format)
    result = load_ials_pretrain(root, dataset="ffhq", classifier_resolution=16)
    assert sorted(result.attributes) == ["male", "smiling", "young"]
    smiling = result.attributes["smiling"]
    assert sorted(smiling.directions) == ["averaged", "ganspace", "interfacegan"]
    ours = np.load(root / "attr_level_direction/ours/ffhq/smiling.npy")[0]
    assert torch.allclose(
        smiling.directions["averaged"], torch.from_numpy(ours / np.linalg.norm(ours)), atol=1e-6
    )
    assert [p.name for p in result.latent_codes] == ["real1.npy", "real2.npy"]
    assert any("imagenet_vgg16.pth" in note for note in result.notes)

    attributes = {
        name: PackAttribute(name, a.description, a.classifier, None, a.directions)
        for name, a in result.attributes.items()
    }
    pack_path = save_pack(tmp_path / "pack", name="ials-ffhq", description="test", generator=result.generator,
                          generator_kind="stylegan1", attributes=attributes)  # fmt: skip
    pack = load_pack(pack_path, "cpu")
    assert pack.generator_kind == "stylegan1" and pack.num_ws == 6
    ws = sample_ws(pack.generator, [1], truncation_psi=0.5, device="cpu")
    primal = pack.attributes["smiling"]
    condition = pack.attributes["male"]
    out = edit(
        pack.generator,
        ws,
        primal=EditAttribute("smiling", primal.steering, primal.directions["interfacegan"]),
        conditions=[EditAttribute("male", condition.steering, condition.directions["interfacegan"])],
        steps=2,
        step=0.1,
        lambda1=0.75,
        lambda2=0.0,
        synthesis_kwargs=pack.edit_synthesis_kwargs,
        device="cpu",
    )
    assert out.ws.shape == (1, 3, 6, W_DIM) and torch.isfinite(out.ws).all()
    assert not torch.equal(out.ws[:, 0], out.ws[:, 2])


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"not an IALS pretrain/ folder for dataset 'ffhq'"):
        load_ials_pretrain(tmp_path)
    root = write_ials_pretrain(tmp_path / "pretrain", dataset="celebahq")
    with pytest.raises(ConvertError, match=r"datasets found: \['celebahq'\]"):
        load_ials_pretrain(root, dataset="ffhq")
    marker = tmp_path / "pwned"
    weights = root / "classifier" / "male" / "weight.pkl"
    torch.save({"backbone.0.weight": _Evil(marker)}, weights, pickle_module=pickle)
    with pytest.raises(ConvertError, match="weights_only"):
        load_ials_pretrain(root, dataset="celebahq", classifier_resolution=16)
    assert not marker.exists()


def test_bad_latent_codes_are_notes(tmp_path: Path) -> None:
    root = write_ials_pretrain(tmp_path / "pretrain")
    codes = root / "real_latent_code"
    (codes / "real1.npy").write_bytes(b"\x93NUMPY corrupt")
    np.save(codes / "real3.npy", np.array(["not", "numbers"]))
    np.save(codes / "real4.npy", np.zeros([2, W_DIM], np.float32))
    result = load_ials_pretrain(root, classifier_resolution=16)
    assert result.latent_codes == [codes / "real2.npy"]
    skipped = sorted(note for note in result.notes if note.startswith("skipped real_latent_code/"))
    assert [note.split(":")[0] for note in skipped] == [
        f"skipped real_latent_code/real{i}.npy" for i in (1, 3, 4)
    ]
    assert "not a NumPy .npy array" in skipped[0] and "expected a numeric array" in skipped[1]
    assert "shape [2, 32] is not [6, 32]" in skipped[2]


def test_errors_name_the_file(tmp_path: Path) -> None:
    root = write_ials_pretrain(tmp_path / "pretrain")

    def message(path: Path, content: object) -> str:
        original = path.read_bytes()
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        try:
            with pytest.raises(ConvertError) as info:
                load_ials_pretrain(root, classifier_resolution=16)
        finally:
            path.write_bytes(original)
        text = str(info.value)
        assert "{" not in text and "\n" not in text, text
        return text

    generator = root / "stylegan" / "ffhq" / "weight.pkl"
    sd = lernapparat_state_dict(16, z_dim=W_DIM, w_dim=W_DIM)
    text = message(generator, {**sd, "g_synthesis.extra": torch.zeros(1)})
    assert text.startswith(
        "an IALS StyleGAN (v1) generator state dict (stylegan/ffhq/weight.pkl): source tensors"
    )
    assert "(stylegan/ffhq/weight.pkl): not readable with torch.load" in message(generator, b"junk")
    male = root / "classifier" / "male" / "weight.pkl"
    clf = ials_classifier_state_dict()
    text = message(male, {k: v for k, v in clf.items() if k != "extra_layer.bias"})
    assert text.startswith(
        "an IALS attribute classifier state dict (classifier/male/weight.pkl): tensors of ours"
    )
    text = message(male, {**clf, "extra_layer.bias": torch.full([2], float("nan"))})
    assert text.endswith("(classifier/male/weight.pkl): non-finite values in ['net.fc.bias']")
