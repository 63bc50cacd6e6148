"""Golden tests: our UNet and classifier against the reference implementation's data."""

from __future__ import annotations

import pytest
import torch

import models
from models.checkpoints import CheckpointError, load_weights
from models.nn import timestep_embedding
from tests.conftest import golden_tiny_unet, load_reference


@pytest.fixture(scope="module")
def tiny_unet():
    return golden_tiny_unet()


def test_tiny_unet_matches_reference_forward(tiny_unet):
    io = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        out = tiny_unet(io["x"], io["t"])
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=1e-5)


def test_tiny_unet_float_timesteps_give_the_same_output(tiny_unet):
    io = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        out = tiny_unet(io["x"], io["t"].float())
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=1e-5)


def test_timestep_embedding_matches_reference():
    io = load_reference("tiny_unet_A_io.pt")
    torch.testing.assert_close(timestep_embedding(io["t"], 32), io["timestep_embedding"], atol=1e-5, rtol=1e-5)


def test_tiny_unet_intermediates_match(tiny_unet):
    """Every block's output, so that a mismatch points at the block that causes it."""
    io = load_reference("tiny_unet_A_io.pt")
    seen = {}
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
             for name, module in tiny_unet.named_modules()
             if name in io["intermediates"]]
    try:
        with torch.inference_mode():
            tiny_unet(io["x"], io["t"])
    finally:
        for h in hooks:
            h.remove()
    assert set(seen) == set(io["intermediates"])
    for name, ref in io["intermediates"].items():
        # float32 rounding relative to the block's scale (values up to ~9 here): CPUs of other
        # instruction sets sum convolutions in other orders (seen: 1.2e-5 at output_blocks.3).
        atol = 1e-5 * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(seen[name], ref, atol=atol, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", ["celeba256", "places256", "imagenet256", "imagenet256_classifier"])
def test_official_network_layouts(name):
    entry = load_reference("adm_state_dict_keys.json")["models"][name]
    with torch.device("meta"):  # no 550M-parameter allocation
        if name.endswith("classifier"):
            net = models.build_classifier(entry["create_classifier_kwargs"])
        else:
            net = models.build_unet(entry["create_model_and_diffusion_kwargs"])
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == entry["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == entry["num_parameters"]


@pytest.mark.parametrize("name", ["celeba256", "places256", "imagenet256"])
def test_presets_describe_the_official_layouts(name):
    entry = load_reference("adm_state_dict_keys.json")["models"][name]
    with torch.device("meta"):
        net = models.build_unet(models.get_preset(name).conf)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == entry["state_dict"]


def test_imagenet_preset_classifier_layout():
    entry = load_reference("adm_state_dict_keys.json")["models"]["imagenet256_classifier"]
    with torch.device("meta"):
        net = models.build_classifier(models.get_preset("imagenet256").conf)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == entry["state_dict"]


def test_classifier_forward_shape_and_gradient():
    conf = {"image_size": 64, "classifier_width": 64, "classifier_depth": 1,
            "classifier_attention_resolutions": "16,8"}
    net = models.randomize_weights(models.build_classifier(conf), 0).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits = net(x, torch.tensor([10, 500]))
    assert logits.shape == (2, 1000)
    logits.log_softmax(-1)[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_half_precision_weights_run(tiny_unet):
    io = load_reference("tiny_unet_A_io.pt")
    net = models.build_unet(load_reference("tiny_unet_A.json")["official_conf_keys"])
    load_weights(net, {k: v.to(torch.bfloat16) for k, v in load_reference("tiny_unet_A.pt").items()})
    net = net.to(torch.bfloat16).eval()
    with torch.inference_mode():
        out = net(io["x"], io["t"])
    assert out.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the point is that it runs and stays close.
    assert (out - io["out"]).abs().mean() < 0.05


def test_strict_load_names_missing_and_unexpected_keys():
    meta = load_reference("tiny_unet_A.json")
    net = models.build_unet(meta["official_conf_keys"])
    state = dict(load_reference("tiny_unet_A.pt"))
    state["extra.weight"] = state.pop("out.2.weight")
    with pytest.raises(CheckpointError) as err:
        load_weights(net, state, config=net.config)
    text = str(err.value)
    assert "missing keys: out.2.weight" in text and "unexpected keys: extra.weight" in text
    assert "expected config" in text


def test_strict_load_names_shape_mismatches():
    meta = load_reference("tiny_unet_A.json")
    net = models.build_unet({**meta["official_conf_keys"], "num_channels": 64, "num_head_channels": 32})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(net, load_reference("tiny_unet_A.pt"))


def test_new_attention_order_is_the_legacy_one_with_channels_regrouped():
    from models.nn import QKVAttention

    heads, ch, length = 2, 4, 5
    qkv = torch.randn(3, 3 * heads * ch, length, generator=torch.Generator().manual_seed(0))
    per_head = qkv.reshape(3, heads, 3, ch, length)  # legacy: per head (q, k, v)
    regrouped = per_head.transpose(1, 2).reshape(3, 3 * heads * ch, length)  # new: (all q, all k, all v)
    torch.testing.assert_close(QKVAttention(heads)(qkv), QKVAttention(heads, legacy_order=False)(regrouped))
