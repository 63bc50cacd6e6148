"""Half precision as the reference runs it (guided-diffusion's `use_fp16`, `classifier_use_fp16`).

Only the weights and biases of the convolutions in the torso (the UNet's input, middle and
output blocks; the classifier's input and middle blocks) are float16; embeddings, the ResBlocks'
embedding projections, GroupNorms and the output heads stay float32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.checkpoints import load_weights
from models.presets import _IMAGENET_CLASSIFIER, _TINY, Preset
from tests.conftest import REFERENCE, load_reference

UNET_TORSO = ("input_blocks.", "middle_block.", "output_blocks.")
CLASSIFIER_TORSO = ("input_blocks.", "middle_block.")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# The imagenet256 structure (class labels, attention, ResBlock up/down, a noisy classifier) at a
# small size (64 px: the smallest the classifier's layouts cover).
TINY_IMAGENET = {**_TINY, **_IMAGENET_CLASSIFIER, "image_size": 64, "attention_resolutions": "32,16",
                 "class_cond": True, "use_fp16": True,
                 "classifier_width": 64, "classifier_depth": 1, "classifier_attention_resolutions": "16,8"}


def expected_dtype(net: nn.Module, name: str, torso: tuple[str, ...], half: torch.dtype) -> torch.dtype:
    owner = net.get_submodule(name.rpartition(".")[0])
    return half if name.startswith(torso) and isinstance(owner, CONVS) else torch.float32


def assert_reference_layout(net: nn.Module, torso: tuple[str, ...], half: torch.dtype = torch.float16) -> int:
    """Every named parameter's dtype against the reference's rule; returns how many are half."""
    wrong = [f"{name}: {p.dtype}" for name, p in net.named_parameters()
             if p.dtype != expected_dtype(net, name, torso, half)]
    assert not wrong, wrong
    return sum(p.dtype == half for p in net.parameters())


def test_imagenet256_unet_layout_is_the_reference_one():
    with torch.device("meta"):  # the real 550M-parameter layout, no allocation
        net = models.build_unet(models.get_preset("imagenet256").conf).convert_to_fp16()
    halves = assert_reference_layout(net, UNET_TORSO)
    params = dict(net.named_parameters())
    for name in ("input_blocks.0.0.weight", "input_blocks.0.0.bias", "input_blocks.1.0.in_layers.2.weight",
                 "input_blocks.7.0.skip_connection.weight", "middle_block.1.qkv.weight",
                 "middle_block.1.proj_out.bias", "output_blocks.0.0.out_layers.3.weight",
                 "output_blocks.0.1.qkv.bias"):
        assert params[name].dtype == torch.float16, name
    for name in ("time_embed.0.weight", "time_embed.2.bias", "label_emb.weight",
                 "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.in_layers.0.weight",
                 "middle_block.1.norm.bias", "output_blocks.0.0.emb_layers.1.bias",
                 "out.0.weight", "out.2.weight", "out.2.bias"):
        assert params[name].dtype == torch.float32, name
    assert net.dtype == torch.float16
    assert 0 < halves < len(params)


@pytest.mark.parametrize("use_fp16", [False, True])
def test_imagenet256_classifier_layout(use_fp16):
    conf = {**models.get_preset("imagenet256").conf, "classifier_use_fp16": use_fp16}
    with torch.device("meta"):
        net = models.build_classifier(conf)
        if net.config.use_fp16:
            net.convert_to_fp16()
    if use_fp16:
        assert assert_reference_layout(net, CLASSIFIER_TORSO) > 0
        assert net.out[2].qkv_proj.weight.dtype == torch.float32  # the attention-pool head
        assert net.dtype == torch.float16
    else:
        assert {p.dtype for p in net.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """A class-conditional preset with a classifier, at the tiny size, weights in files."""
    folder = tmp_path_factory.mktemp("tiny_imagenet")
    unet = models.randomize_weights(models.build_unet(TINY_IMAGENET), 0)
    classifier = models.randomize_weights(models.build_classifier(TINY_IMAGENET), 1)
    torch.save(unet.state_dict(), folder / "unet.pt")
    torch.save(classifier.state_dict(), folder / "classifier.pt")
    return folder


def load_tiny_imagenet(folder, dtype, **conf):
    preset = Preset(name="tiny_imagenet", description="test", conf={**TINY_IMAGENET, **conf},
                    checkpoint="unet.pt", classifier_checkpoint="classifier.pt", class_cond=True)
    return models.load_preset(preset, checkpoint=folder / "unet.pt", classifier_checkpoint=folder / "classifier.pt",
                              dtype=dtype)


@pytest.mark.parametrize("classifier_use_fp16", [False, True])
def test_load_preset_float16_applies_the_reference_layout(tiny_imagenet, classifier_use_fp16):
    loaded = load_tiny_imagenet(tiny_imagenet, torch.float16, classifier_use_fp16=classifier_use_fp16)
    assert assert_reference_layout(loaded.unet, UNET_TORSO) > 0
    assert loaded.unet.dtype == torch.float16
    if classifier_use_fp16:
        assert assert_reference_layout(loaded.classifier, CLASSIFIER_TORSO) > 0
    else:
        assert {p.dtype for p in loaded.classifier.parameters()} == {torch.float32}
    # float32 stays float32 throughout, whatever the conf says.
    full = load_tiny_imagenet(tiny_imagenet, torch.float32, classifier_use_fp16=True)
    assert {p.dtype for p in full.unet.parameters()} | {p.dtype for p in full.classifier.parameters()} \
        == {torch.float32}


def test_load_preset_bfloat16_uses_the_same_layout(tiny_imagenet):
    loaded = load_tiny_imagenet(tiny_imagenet, torch.bfloat16)
    assert assert_reference_layout(loaded.unet, UNET_TORSO, torch.bfloat16) > 0


def test_mixed_layout_forward_is_close_to_float32(tiny_imagenet):
    """CPU float16 convolutions run (torch 2.13). Measured: UNet max |diff| 0.0064, mean 0.0009
    (outputs of mean magnitude 0.51); classifier logits max |diff| 0.0011."""
    full = load_tiny_imagenet(tiny_imagenet, torch.float32)
    half = load_tiny_imagenet(tiny_imagenet, torch.float16, classifier_use_fp16=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 64, 64, generator=g)
    t = torch.tensor([0, 500, 999])
    y = torch.tensor([1, 500, 999])
    with torch.inference_mode():
        ref, out = full.unet(x, t, y), half.unet(x, t, y)
        logits_ref, logits = full.classifier(x, t), half.classifier(x, t)
    assert out.dtype == torch.float32 and logits.dtype == torch.float32
    assert (out - ref).abs().max() < 0.03 and (out - ref).abs().mean() < 0.003
    assert (logits - logits_ref).abs().max() < 0.01


def test_mixed_layout_classifier_gives_gradients(tiny_imagenet):
    """Classifier guidance differentiates through the float16 torso."""
    classifier = load_tiny_imagenet(tiny_imagenet, torch.float16, classifier_use_fp16=True).classifier
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    classifier(x, torch.tensor([10, 500])).log_softmax(-1)[:, 3].sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_reference_checkpoint_loads_strictly_then_converts():
    """Weights load strictly into the float32 network, then the torso converts; the converted
    network keeps its keys, reloads the file strictly and keeps its layout."""
    path = REFERENCE / "tiny_unet_A.pt"
    loaded = models.load_preset("tiny", checkpoint=path, dtype=torch.float16)
    assert assert_reference_layout(loaded.unet, UNET_TORSO) > 0
    state = load_reference("tiny_unet_A.pt")
    assert list(loaded.unet.state_dict()) == list(state)
    load_weights(loaded.unet, state)
    assert_reference_layout(loaded.unet, UNET_TORSO)
    io = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        out = loaded.unet(io["x"], io["t"])
    assert out.dtype == torch.float32
    assert (out - io["out"]).abs().max() < 0.03  # measured 0.0065 (mean 0.0009)


def test_convert_torso_back_to_float32():
    net = models.build_unet(_TINY).convert_to_fp16().convert_torso(torch.float32)
    assert {p.dtype for p in net.parameters()} == {torch.float32} and net.dtype == torch.float32
