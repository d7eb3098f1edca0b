from __future__ import annotations

import pytest
import torch

from sigmatune.models.networks import MLP, NETWORKS, UNet, make_network

UNET_CASES = [
    # (channels C, size, channel_mult, attn_resolutions)
    (1, 8, (1, 2), ()),
    (1, 8, (1, 2), (4,)),
    (1, 8, (1, 2), (8, 4)),
    (1, 28, (1, 2), ()),
    (1, 28, (1, 2, 2), (7,)),
    (1, 28, (1, 2, 2, 2), (8,)),  # 28 is padded to 32: resolutions 32, 16, 8, 4
    (3, 32, (1, 2, 2), ()),
    (3, 32, (1, 2, 2), (16,)),
]


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (the zero-initialised output layers too) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(("C", "size", "mult", "attn"), UNET_CASES)
def test_unet_output_has_input_shape(C, size, mult, attn):
    net = UNet(in_channels=C, channels=8, channel_mult=mult, attn_resolutions=attn, image_size=size)
    x = torch.randn(3, C, size, size)
    y = net(x, torch.randn(3))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_unet_output_layer_starts_at_zero():
    net = UNet(channels=8)
    assert torch.equal(net(torch.randn(2, 1, 8, 8), torch.zeros(2)), torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize(("C", "size", "mult", "attn"), [UNET_CASES[2], UNET_CASES[5]])
def test_unet_examples_do_not_mix_across_the_batch(C, size, mult, attn):
    # GroupNorm and attention must act per example: example 0 alone gives the same output.
    net = UNet(
        in_channels=C, channels=8, channel_mult=mult, attn_resolutions=attn, image_size=size
    ).eval()
    _randomise(net)
    x, c = torch.randn(4, C, size, size), torch.randn(4)
    torch.testing.assert_close(net(x, c)[:1], net(x[:1], c[:1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_parameter_gets_a_gradient_and_c_noise_matters(name):
    shape = (2,) if name == "mlp" else (1, 8, 8)
    params = (
        {"hidden": 16, "emb_dim": 8} if name == "mlp" else {"channels": 8, "attn_resolutions": [4]}
    )
    net = make_network(name, params, shape)
    _randomise(net)
    x = torch.randn(5, *shape)
    out = net(x, torch.linspace(-1.5, 1.5, 5))
    out.square().sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused
    same_x = x[:1].expand(2, *shape)
    y = net(same_x, torch.tensor([-1.0, 1.0]))
    assert not torch.allclose(y[0], y[1])


def test_mlp_shapes_and_zero_start():
    net = MLP(3, hidden=32, depth=2, emb_dim=16)
    y = net(torch.randn(7, 3), torch.randn(7))
    assert y.shape == (7, 3)
    assert torch.equal(y, torch.zeros(7, 3))
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        net(torch.randn(7, 2), torch.randn(7))


def test_make_network_takes_sizes_from_the_shape():
    unet = make_network("unet", {"channels": 8, "channel_mult": [1, 2, 2]}, (3, 28, 28))
    assert unet.in_channels == 3 and unet.resolutions == (28, 14, 7)
    assert make_network("mlp", {}, (5,)).dim == 5
    with pytest.raises(ValueError, match="unknown network 'resnet'; valid: mlp, unet"):
        make_network("resnet", {}, (2,))
    with pytest.raises(ValueError, match="shape"):
        make_network("mlp", {}, (1, 8, 8))
    with pytest.raises(ValueError, match="in_channels"):
        make_network("unet", {"in_channels": 3}, (1, 8, 8))


def test_bad_unet_arguments_name_the_parameter():
    with pytest.raises(ValueError, match=r"attn_resolutions must be among .*\[8, 4\]"):
        UNet(attn_resolutions=(16,))
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(channel_mult=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)
