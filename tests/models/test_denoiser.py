from __future__ import annotations

import math

import pytest
import torch

from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import MLP
from sigmatune.objectives.parameterisations import PARAMETERISATIONS

SIGMA_DATA = 0.5

# (c_skip, c_out, c_in) written out from docs/development.md, independently of objectives/.
EXPECTED = {
    "edm": lambda s, d: (
        d**2 / (s**2 + d**2),
        s * d / math.sqrt(s**2 + d**2),
        1 / math.sqrt(s**2 + d**2),
    ),
    "v": lambda s, d: (1 / (s**2 + 1), s / math.sqrt(s**2 + 1), 1 / math.sqrt(s**2 + 1)),
    "eps": lambda s, d: (1.0, -s, 1 / math.sqrt(s**2 + d**2)),
    "x0": lambda s, d: (0.0, d, 1 / math.sqrt(s**2 + d**2)),
    "flow": lambda s, d: (1 / (1 + s), -s / (1 + s), 1 / (1 + s)),
}


def test_expected_table_covers_the_registry():
    assert set(EXPECTED) == set(PARAMETERISATIONS)


class OracleNet(torch.nn.Module):
    """Returns F_target = (x0 - c_skip x)/c_out for the x it was built for, and records what
    it was called with."""

    def __init__(self, x0, x, sigmas, name):
        super().__init__()
        self.x0, self.x, self.sigmas, self.name = x0, x, sigmas, name
        self.calls = []

    def forward(self, x_in, c_noise):
        self.calls.append((x_in, c_noise))
        out = torch.empty_like(self.x)
        for b, s in enumerate(self.sigmas.tolist()):
            c_skip, c_out, _ = EXPECTED[self.name](s, SIGMA_DATA)
            out[b] = (self.x0[b] - c_skip * self.x[b]) / c_out
        return out


@pytest.mark.parametrize("name", sorted(PARAMETERISATIONS))
@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_denoiser_returns_x0_when_F_returns_its_target(name, shape):
    g = torch.Generator().manual_seed(0)
    B = 4
    x0 = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    sigmas = torch.tensor([0.002, 0.3, 2.0, 80.0], dtype=torch.float64)
    x = x0 + sigmas.reshape(-1, *[1] * len(shape)) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    net = OracleNet(x0, x, sigmas, name)
    D = Denoiser(net, name, SIGMA_DATA)
    torch.testing.assert_close(D(x, sigmas), x0, rtol=1e-9, atol=1e-9)
    # F saw c_in * x and c_noise = ln(sigma)/4 (one per example).
    x_in, c_noise = net.calls[-1]
    c_in = torch.tensor(
        [EXPECTED[name](s, SIGMA_DATA)[2] for s in sigmas.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(x_in, c_in.reshape(-1, *[1] * len(shape)) * x)
    torch.testing.assert_close(c_noise, sigmas.log() / 4)
    # F is the raw network output.
    torch.testing.assert_close(D.F(x, sigmas), net(x_in, c_noise))


def test_scalar_sigma_broadcasts_over_the_batch():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1, emb_dim=8)
    with torch.no_grad():
        net.out.weight.normal_()
    D = Denoiser(net, "edm", SIGMA_DATA)
    x = torch.randn(5, 2)
    torch.testing.assert_close(D(x, 0.7), D(x, torch.full((5,), 0.7)))
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \[B\]=\[5\]"):
        D(x, torch.ones(3))


def test_untrained_net_gives_c_skip_times_x_in_the_input_dtype():
    D = Denoiser(MLP(2, hidden=16, depth=1, emb_dim=8), "edm", SIGMA_DATA)  # F = 0 at start
    x = torch.randn(3, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    out = D(x, sigma)
    assert out.dtype == torch.float64
    c_skip = torch.tensor(
        [EXPECTED["edm"](s, SIGMA_DATA)[0] for s in sigma.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(out, c_skip[:, None] * x, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    net = MLP(2)
    with pytest.raises(ValueError, match="unknown parameterisation 'foo'"):
        Denoiser(net, "foo", SIGMA_DATA)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        Denoiser(net, "edm", 0.0)
