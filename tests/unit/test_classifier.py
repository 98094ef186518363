"""AttributeClassifier: torchvision's ResNet layout and names, the input mapping, the outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.networks.classifier import AttributeClassifier, resnet18, resnet34, resnet50

BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def torchvision_keys(layers: list[int], is_bottleneck: bool) -> list[str]:
    """torchvision's ResNet state-dict keys, in order, written out from its module layout."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    num_convs = 3 if is_bottleneck else 2
    for stage, num_blocks in enumerate(layers, start=1):
        for idx in range(num_blocks):
            prefix = f"layer{stage}.{idx}"
            for conv in range(1, num_convs + 1):
                keys += [f"{prefix}.conv{conv}.weight"] + [f"{prefix}.bn{conv}.{k}" for k in BN_KEYS]
            if idx == 0 and (stage > 1 or is_bottleneck):
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics, so that round trips and eval mode are tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)


def test_resnet18_keys_match_torchvision() -> None:
    state = resnet18(num_classes=2).state_dict()
    assert list(state) == torchvision_keys([2, 2, 2, 2], is_bottleneck=False)
    assert len(state) == 122
    for key in ["layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var"]:
        assert key in state
    assert "layer1.0.downsample.0.weight" not in state
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["fc.weight"].shape == (2, 512)
    assert state["fc.bias"].shape == (2,)
    assert state["bn1.num_batches_tracked"].dtype == torch.int64


def test_resnet34_keys_match_torchvision() -> None:
    state = resnet34(num_classes=2).state_dict()
    assert list(state) == torchvision_keys([3, 4, 6, 3], is_bottleneck=False)
    assert len(state) == 218
    assert "layer1.2.conv2.weight" in state and "layer3.5.bn2.running_var" in state
    assert "layer1.0.downsample.0.weight" not in state
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["fc.weight"].shape == (2, 512)


def test_resnet50_keys_match_torchvision() -> None:
    network = resnet50(num_classes=2)
    state = network.state_dict()
    assert list(state) == torchvision_keys([3, 4, 6, 3], is_bottleneck=True)
    assert len(state) == 320
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.5.bn3.running_mean"].shape == (1024,)
    # v1.5: the stride-2 convolution is the 3x3 one.
    assert network.layer2[0].conv2.stride == (2, 2)
    assert network.layer2[0].conv1.stride == (1, 1)
    assert state["fc.weight"].shape == (2, 2048)


def test_parameter_counts_match_torchvision() -> None:
    # torchvision.models.resnet18() and resnet50() with their 1000-class heads.
    assert sum(p.numel() for p in resnet18().parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet34().parameters()) == 21_797_672
    assert sum(p.numel() for p in resnet50().parameters()) == 25_557_032


def test_children_order_matches_official_backbone_indices() -> None:
    # IALS's classifier is `nn.Sequential(*list(resnet.children())[:-1])` + a head: backbone.N is child N.
    names = [name for name, _ in AttributeClassifier(arch="resnet18", width=8).net.named_children()]
    assert names == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]


def test_state_dict_is_torchvision_under_net() -> None:
    classifier = AttributeClassifier(arch="resnet18", width=8)
    keys = list(classifier.state_dict())
    assert keys == ["net." + key for key in torchvision_keys([2, 2, 2, 2], is_bottleneck=False)]
    assert classifier.state_dict()["net.fc.weight"].shape == (2, 64)


@pytest.mark.parametrize(("arch", "fc_in"), [("resnet18", 64), ("resnet50", 256)])
def test_output_shapes(arch: str, fc_in: int) -> None:
    classifier = AttributeClassifier(arch=arch, width=8, input_resolution=32).eval()
    assert classifier.net.fc.in_features == fc_in
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    assert classifier.preprocess(images).shape == (3, 3, 32, 32)
    assert classifier.logits(images).shape == (3, 2)
    assert classifier(classifier.preprocess(images)).shape == (3, 2)
    assert classifier.probability(images).shape == (3,)


def test_preprocess_1024_equals_official_avg_pool() -> None:
    classifier = AttributeClassifier(arch="resnet18", width=8, input_resolution=256)
    images = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = F.avg_pool2d((images + 1) / 2, 4, 4)
    torch.testing.assert_close(classifier.preprocess(images), expected, rtol=0, atol=1e-6)


def test_preprocess_upsamples_smaller_images_bilinearly() -> None:
    classifier = AttributeClassifier(arch="resnet18", width=8, input_resolution=32)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    x = classifier.preprocess(images)
    assert x.shape == (2, 3, 32, 32)
    expected = F.interpolate((images + 1) / 2, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, expected)
    # An image at the input resolution is only mapped.
    same = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(classifier.preprocess(same), (same + 1) / 2)


def test_preprocess_value_range_and_normalization() -> None:
    images = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3).expand(1, 3, 3, 3)
    identity = AttributeClassifier(arch="resnet18", width=8, input_resolution=3, value_range=(-1, 1))
    torch.testing.assert_close(identity.preprocess(images), images)
    bytes_range = AttributeClassifier(arch="resnet18", width=8, input_resolution=3, value_range=(0, 255))
    torch.testing.assert_close(bytes_range.preprocess(images)[0, 0, 0], torch.tensor([0.0, 127.5, 255.0]))

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    imagenet = AttributeClassifier(arch="resnet18", width=8, input_resolution=3, mean=mean, std=std)
    expected = ((images + 1) / 2 - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(
        1, 3, 1, 1
    )
    torch.testing.assert_close(imagenet.preprocess(images), expected)
    # Normalisation constants follow the module but are not weights.
    assert not any(key in imagenet.state_dict() for key in ("mean", "std"))
    assert imagenet.to(torch.float64).mean.dtype == torch.float64


def test_probability_is_softmax_class_1() -> None:
    classifier = AttributeClassifier(arch="resnet18", width=8, input_resolution=32)
    randomize_(classifier)
    classifier.eval()
    images = torch.rand(4, 3, 48, 48) * 2 - 1
    probability = classifier.probability(images)
    assert ((probability >= 0) & (probability <= 1)).all()
    torch.testing.assert_close(probability, torch.softmax(classifier.logits(images), dim=1)[:, 1])
    # Eval mode uses the running statistics: one image scores the same alone and in a batch.
    torch.testing.assert_close(classifier.probability(images[:1]), probability[:1])


def test_gradient_reaches_the_images() -> None:
    classifier = (
        AttributeClassifier(arch="resnet18", width=8, input_resolution=16).eval().requires_grad_(False)
    )
    images = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(classifier.probability(images).sum(), images)
    assert grad.shape == images.shape
    assert grad.abs().sum() > 0


def test_init_kwargs_rebuild_the_classifier() -> None:
    classifier = AttributeClassifier(
        arch="resnet50", width=8, input_resolution=64, mean=[0.5] * 3, std=[0.5] * 3
    )
    assert classifier.init_kwargs == {
        "arch": "resnet50",
        "width": 8,
        "num_classes": 2,
        "input_resolution": 64,
        "value_range": (0.0, 1.0),
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    rebuilt = AttributeClassifier(**classifier.init_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in classifier.state_dict().items()
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "vgg16"}, "Unknown classifier arch 'vgg16'"),
        ({"value_range": (1, 0)}, "value_range"),
        ({"mean": [0.5] * 3}, "mean and std must be given together"),
        ({"mean": [0.5] * 3, "std": [0.0] * 3}, "std > 0"),
        ({"num_classes": 1}, "num_classes >= 2"),
    ],
)
def test_invalid_kwargs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttributeClassifier(**kwargs)  # type: ignore[arg-type]
