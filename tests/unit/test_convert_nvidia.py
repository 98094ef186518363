"""NVIDIA StyleGAN2-ADA pickles: NVIDIA's persistence records read without running anything."""

from __future__ import annotations

import copy
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from models.convert.common import ConvertError
from models.convert.nvidia_pkl import load_nvidia_pkl
from models.convert.safe_unpickle import PersistentObject, UnsafePickleError, restricted_load
from models.networks.stylegan2 import Generator
from tests.convert_fixtures import (
    NVIDIA_G_STATE_16PX,
    EasyDict,
    NvidiaPickler,
    nvidia_snapshot,
    write_nvidia_pkl,
)
from tests.packs import tiny_generator


@pytest.fixture(scope="module")
def G() -> Generator:
    G = tiny_generator(seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # Non-trivial noise strengths, biases and w_avg.
        for name, tensor in G.state_dict().items():
            if name.endswith(("noise_strength", "bias", "w_avg")):
                tensor.add_(torch.randn(tensor.shape, generator=gen))
    return G


def convert(path: Path) -> Generator:
    with open(path, "rb") as f:
        return load_nvidia_pkl(f)


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("numpy_names", ["numpy.core", "numpy._core"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_round_trip(G: Generator, protocol: int, numpy_names: str, tmp_path: Path) -> None:
    path = write_nvidia_pkl(
        tmp_path / "net.pkl", nvidia_snapshot(G), protocol=protocol, numpy_names=numpy_names
    )
    data = path.read_bytes()
    assert b"torch_utils.persistence" in data and b"_load_from_bytes" in data
    assert numpy_names.encode() + b".multiarray" in data  # NVIDIA's float gains are NumPy scalars
    G2 = convert(path)
    assert_same(G, G2)
    assert G2.init_kwargs["synthesis_kwargs"] == {"channel_base": 256, "channel_max": 32, "num_fp16_res": 0,
                                                  "conv_clamp": None}  # fmt: skip
    ws = torch.randn([2, G.num_ws, G.w_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws, noise_mode="const"), G2.synthesis(ws, noise_mode="const"))


def test_reads_records_as_data(G: Generator, tmp_path: Path) -> None:
    path = write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(G), protocol=5)
    with open(path, "rb") as f:
        data = restricted_load(f)
    assert sorted(data) == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]
    D = data["D"]
    assert isinstance(D, PersistentObject) and D.class_name == "Discriminator"
    assert D.state["mbstd"].tolist() == [0.0, 1.0, 2.0, 3.0]  # a NumPy array (protocol 5: _frombuffer)
    assert isinstance(data["G_ema"].state["_init_kwargs"]["mapping_kwargs"], dict)


def test_swapped_tensors(G: Generator, tmp_path: Path) -> None:
    swapped = copy.deepcopy(G)
    with torch.no_grad():  # Same shape: converts, and differs from the source where it should.
        fc0, fc1 = swapped.mapping.fc0.weight, swapped.mapping.fc1.weight
        tmp = fc0.clone()
        fc0.copy_(fc1)
        fc1.copy_(tmp)
    G2 = convert(write_nvidia_pkl(tmp_path / "a.pkl", nvidia_snapshot(swapped)))
    with pytest.raises(AssertionError, match="mapping.fc0.weight"):
        assert_same(G, G2)
    swapped = copy.deepcopy(G)
    b4 = swapped.synthesis.b4
    b4.conv1._parameters["weight"], b4.torgb._parameters["weight"] = b4.torgb.weight, b4.conv1.weight
    with pytest.raises(ConvertError, match=r"wrong shapes: synthesis\.b4\.conv1\.weight"):
        convert(write_nvidia_pkl(tmp_path / "b.pkl", nvidia_snapshot(swapped)))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_running(G: Generator, protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}, protocol=protocol))
    with pytest.raises(ConvertError, match=r"refused to load (posix|os|nt)\.system"):
        convert(path)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_load(io.BytesIO(b"cbuiltins\neval\n(Vprint(1)\ntR."))
    # A storage whose bytes are a malicious pickle: loaded weights-only, so refused too.
    payload = pickle.dumps(_Evil(marker), protocol=2)
    storage = b"\x80\x03ctorch.storage\n_load_from_bytes\nC" + bytes([len(payload)]) + payload + b"\x85R."
    with pytest.raises(UnsafePickleError, match="did not load weights-only"):
        restricted_load(io.BytesIO(storage))
    assert not marker.exists()


def test_module_source_is_never_executed(G: Generator, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').write('ran')\n"
    G2 = convert(write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(G), module_src=src))
    assert not marker.exists()
    assert_same(G, G2)


class SynthesisInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("transform", torch.eye(3))


def test_stylegan3_is_not_supported_yet(G: Generator, tmp_path: Path) -> None:
    sg3 = copy.deepcopy(G)
    sg3.synthesis.input = SynthesisInput()
    with pytest.raises(ConvertError, match="StyleGAN3 pickles are not supported yet"):
        convert(write_nvidia_pkl(tmp_path / "sg3.pkl", nvidia_snapshot(sg3)))


def test_not_a_network_pickle(G: Generator, tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a pickle")
    with pytest.raises(ConvertError, match=r"not an NVIDIA StyleGAN2-ADA network pickle \(\.pkl\)"):
        convert(path)
    with pytest.raises(
        ConvertError, match=r"a torch\.save checkpoint .*did you mean `ials convert rosinality`"
    ):
        convert(path)
    torch.save({"g_ema": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ConvertError, match=r"legacy format\); did you mean `ials convert rosinality`"):
        convert(path)
    path.write_bytes(b"")
    with pytest.raises(ConvertError, match="empty file"):
        convert(path)
    path.write_bytes(pickle.dumps({"G": 1, "D": 2}))
    with pytest.raises(ConvertError, match=r"expected a dict with a G_ema network, found \['D', 'G'\]"):
        convert(path)
    tf = b"\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01."
    path.write_bytes(tf)
    with pytest.raises(ConvertError, match="TensorFlow StyleGAN pickle"):
        convert(path)


def test_unknown_kwargs_fail(G: Generator, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    data = nvidia_snapshot(G)
    kwargs = EasyDict(z_dim=32, w_dim=32, c_dim=0, img_resolution=16, img_channels=3,
                      mapping_kwargs=EasyDict(num_layers=2),
                      synthesis_kwargs=EasyDict(channel_base=256, channel_max=32, magic=1))  # fmt: skip
    NvidiaPickler(buffer, 4, init_kwargs={id(data["G_ema"]): kwargs}).dump(data)
    path = tmp_path / "k.pkl"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ConvertError, match=r"does not know: \['synthesis_kwargs.magic'\]"):
        convert(path)


def test_kwargs_of_tensorflow_converted_pickles(tmp_path: Path) -> None:
    """NVIDIA's own ffhq.pkl & co. were converted by legacy.py, which records every kwarg explicitly."""
    kwargs = EasyDict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
        mapping_kwargs=EasyDict(num_layers=2, embed_features=None, layer_features=None, activation="lrelu",
                                lr_multiplier=0.01, w_avg_beta=0.995),
        synthesis_kwargs=EasyDict(channel_base=256, channel_max=32, num_fp16_res=2, conv_clamp=256,
                                  architecture="skip", resample_filter=[1, 3, 3, 1], use_noise=True,
                                  activation="lrelu"),
    )  # fmt: skip
    torch.manual_seed(0)
    source = Generator(**kwargs).eval()
    data = nvidia_snapshot(source)
    buffer = io.BytesIO()
    NvidiaPickler(buffer, 4, init_kwargs={id(data["G_ema"]): kwargs}).dump(data)
    path = tmp_path / "ffhq.pkl"
    path.write_bytes(buffer.getvalue())
    G2 = convert(path)
    assert_same(source, G2)
    assert G2.init_kwargs["synthesis_kwargs"]["num_fp16_res"] == 2
    assert G2.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 256


def test_names_and_shapes_are_nvidias(G: Generator, tmp_path: Path) -> None:
    """Against NVIDIA's own state dict (frozen from training/networks.py), not only our Generator's."""
    G2 = convert(write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(G)))
    ours = {key: tuple(t.shape) for key, t in G2.state_dict().items()}
    assert ours == dict(NVIDIA_G_STATE_16PX)
    assert len(NVIDIA_G_STATE_16PX) == len(dict(NVIDIA_G_STATE_16PX))


def test_protocol_1_is_refused_with_the_protocols_read(G: Generator, tmp_path: Path) -> None:
    path = write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(G), protocol=1)
    with pytest.raises(ConvertError, match=r"copy_?reg\._reconstructor.*protocols 2 to 5"):
        convert(path)


def _one_error(data: bytes) -> str:
    """The ConvertError of `data` read as a network pickle (nothing else may escape)."""
    with pytest.raises(ConvertError) as info:
        load_nvidia_pkl(io.BytesIO(data))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_corrupt_memo_index_allocates_nothing() -> None:
    # LONG_BINPUT at memo index 2**32 - 1, as a flipped byte gives: the C unpickler would size its memo
    # array by it (MemoryError, or gigabytes zero-filled); the pure-Python one keeps a dict.
    assert "expected a dict with a G_ema network, found list" in _one_error(b"\x80\x02]r\xff\xff\xff\xff.")


@pytest.mark.parametrize("error", [MemoryError(), RecursionError("maximum recursion depth exceeded")])
def test_any_read_failure_is_a_convert_error(error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(f: object) -> None:
        raise error

    monkeypatch.setattr("models.convert.nvidia_pkl.restricted_load", fail)
    assert f"not an NVIDIA StyleGAN2-ADA network pickle (.pkl): {type(error).__name__}" in _one_error(b"\x80")


def test_interrupts_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(f: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("models.convert.nvidia_pkl.restricted_load", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_nvidia_pkl(io.BytesIO(b"\x80"))


def test_unexpected_records_are_a_convert_error(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = dict(type="class", version=6, module_src="", class_name="Generator", state={"_modules": [1]})
    monkeypatch.setattr(
        "models.convert.nvidia_pkl.restricted_load", lambda f: {"G_ema": PersistentObject(meta)}
    )
    assert "cannot rebuild G_ema: AttributeError" in _one_error(b"\x80")


def test_deep_nesting_is_read_without_recursion() -> None:
    # 100000 nested lists: no RecursionError, then refused as not a network pickle.
    depth = 100_000
    deep = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    assert "expected a dict with a G_ema network, found list" in _one_error(deep)
    nested = restricted_load(io.BytesIO(deep))
    for _ in range(depth - 1):
        nested = nested[0]
    assert nested == []


class _BuildOverRecord(NvidiaPickler):
    """Appends a BUILD with `state` to the persistence record of `target`, after its checks have passed."""

    def __init__(self, *args, target, state, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target, self.state = target, state

    def reducer_override(self, obj):
        reduced = super().reducer_override(obj)
        return (*reduced[:2], self.state) if obj is self.target else reduced


def test_build_over_a_record_is_refused(G: Generator) -> None:
    data, buffer = nvidia_snapshot(G), io.BytesIO()
    _BuildOverRecord(buffer, 4, target=data["G_ema"], state={"module_src": 5}).dump(data)
    assert "persistent object 'Generator' with instance state dict" in _one_error(buffer.getvalue())


def test_huge_stride_0_tensor_is_refused_before_any_copy(G: Generator) -> None:
    data = nvidia_snapshot(G)
    huge = torch.zeros(1, dtype=torch.float64).expand(2**30, 2**30)  # 8 EiB as float64, one value stored
    data["G_ema"].mapping.fc0._parameters["weight"] = nn.Parameter(huge, requires_grad=False)
    buffer = io.BytesIO()
    NvidiaPickler(buffer, 4).dump(data)
    message = _one_error(buffer.getvalue())
    assert "wrong shapes: mapping.fc0.weight: expected (32, 32), got (1073741824, 1073741824)" in message
