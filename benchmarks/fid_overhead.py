"""How much scoring adds to an inner trial: the time to score N digits images with the
``classifier`` extractor against the time to generate them with 10 NFE.

An inner trial generates ``fid_num_images`` images with a candidate schedule and scores them;
the scorer should cost a small fraction of the generation (the issue asks < 10% for 2,000
digits images at 10 NFE). Both are timed on the same images, as a trial sees them: generation
through ``models.samplers.generate`` (one seed per image) with the digits preset's U-Net, and
scoring through ``Scorer.score`` with the prefixes a trial reports (1/4, 1/2, all). The
network is untrained: its weights do not change its cost. The one-off set-up (training the
classifier, the reference statistics) is reported apart; a study pays it once.

Without the ``models`` package (or parts of it) a stand-in is used: scikit-learn's digits, a
small U-Net-like denoiser and a plain Euler loop on Karras et al.'s schedule.

    python benchmarks/fid_overhead.py [--num-images 2000] [--repeats 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from objectives.fid import Scorer  # noqa: E402

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


# -- data, network and sampler (models/ when present, else stand-ins) --------------------------


def load_digits_data() -> tuple[Tensor, Tensor, str]:
    """Digits [1797, 1, 8, 8] in [-1, 1] and labels; where they came from."""
    try:
        from models.data import load_dataset

        data = load_dataset("digits")
        return data.x, data.labels, "models.data.load_dataset('digits')"
    except ImportError:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0
        return x, torch.from_numpy(bunch.target).long(), "sklearn.datasets.load_digits"


class _StandInUNet(nn.Module):
    """A two-level conv net with a noise embedding, about the size of the digits preset's
    U-Net (used only when models.networks is missing)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.emb = nn.Sequential(nn.Linear(1, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.down = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
        )
        self.mid = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.SiLU(),
        )
        self.out = nn.Conv2d(2 * channels, 1, 3, padding=1)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        h = self.down(x) + self.emb(c_noise.reshape(-1, 1).to(x))[:, :, None, None]
        return self.out(torch.cat([h, self.mid(h)], dim=1))


def build_denoiser(sigma_data: float) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """The digits preset's network in EDM preconditioning, as ``D(x, sigma)``."""
    try:
        from models.denoiser import Denoiser
        from models.networks import UNet

        torch.manual_seed(0)
        net = UNet(
            in_channels=1,
            channels=32,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(),
            image_size=8,
        )
        return Denoiser(net, "edm", sigma_data).eval(), "models.networks.UNet (digits preset)"
    except ImportError:
        torch.manual_seed(0)
        net = _StandInUNet().eval()

        def D(x: Tensor, sigma: Tensor) -> Tensor:  # EDM preconditioning, Karras et al. eq. 7
            s = sigma.reshape(-1, 1, 1, 1)
            c_skip = sigma_data**2 / (s**2 + sigma_data**2)
            c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
            c_in = 1 / (s**2 + sigma_data**2).sqrt()
            return c_skip * x + c_out * net(c_in * x, sigma.log() / 4)

        return D, "stand-in conv net (models.networks missing)"


def karras_sigmas(n: int) -> Tensor:
    """Karras et al. 2022, eq. 5 (rho = 7), n steps and a final 0."""
    try:
        from models.schedules import karras

        return karras(n, SIGMA_MIN, SIGMA_MAX, RHO)
    except ImportError:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
        return torch.cat([(hi + ramp * (lo - hi)) ** RHO, torch.zeros(1, dtype=torch.float64)])


def generate_batches(
    D: Callable[[Tensor, Tensor], Tensor],
    sigmas: Tensor,
    sampler: str,
    seeds: Sequence[int],
    batch_size: int,
    device: torch.device,
) -> tuple[Iterator[Tensor], str]:
    """``models.samplers.generate`` when present, else an Euler loop with per-image seeds."""
    try:
        from models.samplers import generate

        return generate(D, sigmas, sampler, seeds, (1, 8, 8), batch_size, device=device), (
            f"models.samplers.generate ({sampler})"
        )
    except ImportError as exc:
        if sampler != "euler":
            raise ValueError(
                f"the stand-in sampler is euler only, but got sampler={sampler!r}"
            ) from exc

        def stream() -> Iterator[Tensor]:
            s = sigmas.tolist()
            for start in range(0, len(seeds), batch_size):
                noise = [
                    torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(seed))
                    for seed in seeds[start : start + batch_size]
                ]
                x = s[0] * torch.stack(noise).to(device)
                with torch.no_grad():
                    for i in range(len(s) - 1):
                        sigma = x.new_full((x.shape[0],), s[i])
                        denoised = D(x, sigma)
                        x = (
                            denoised
                            if s[i + 1] == 0
                            else x + (s[i + 1] - s[i]) * (x - denoised) / s[i]
                        )
                yield x

        return stream(), "stand-in Euler loop (models.samplers missing)"


def steps_for(sampler: str, nfe: int) -> int:
    """Steps that spend at most ``nfe`` evaluations (heun's last step is Euler: 2n - 1)."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


# -- the benchmark -----------------------------------------------------------------------------


def run(
    num_images: int = 2000,
    nfe: int = 10,
    sampler: str = "euler",
    repeats: int = 3,
    batch_size: int = 500,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> dict:
    dev = torch.device(device)
    x, labels, data_source = load_digits_data()
    sigma_data = float(x.std())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scorer = Scorer(
            x,
            labels,
            extractor="classifier",
            fid_num_images=num_images,
            cache_dir=cache_dir or tmp,
            dataset_name="digits",
            device=dev,
        )
        setup_seconds = time.perf_counter() - t0

    D, network = build_denoiser(sigma_data)
    if isinstance(D, nn.Module):
        D = D.to(dev)
    n_steps = steps_for(sampler, nfe)
    sigmas = karras_sigmas(n_steps)
    seeds = list(range(num_images))

    generate_times, score_times, fids = [], [], []
    images: list[Tensor] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batches, sampler_source = generate_batches(D, sigmas, sampler, seeds, batch_size, dev)
        images = [b.cpu() for b in batches]
        generate_times.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        results = list(scorer.score(iter(images)))
        score_times.append(time.perf_counter() - t0)
        fids.append(results[-1][1])

    generate_seconds = statistics.median(generate_times)
    score_seconds = statistics.median(score_times)
    actual_nfe = n_steps if sampler != "heun" else 2 * n_steps - 1
    return {
        "num_images": num_images,
        "nfe": actual_nfe,
        "sampler": sampler,
        "steps": n_steps,
        "batch_size": batch_size,
        "repeats": repeats,
        "generate_seconds": generate_seconds,
        "score_seconds": score_seconds,
        "ratio": score_seconds / generate_seconds,
        "generate_seconds_all": generate_times,
        "score_seconds_all": score_times,
        "setup_seconds": setup_seconds,
        "fid_untrained_network": fids[-1],
        "fid_all_finite": all(math.isfinite(f) for f in fids),
        "data": data_source,
        "network": network,
        "generation": sampler_source,
        "extractor": "classifier",
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--sampler", default="euler", choices=("euler", "heun", "dpmpp_2m"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-dir", default=None, help="FID reference cache (default: a temporary folder)"
    )
    parser.add_argument("--out", default="bench-out/fid_overhead.json")
    args = parser.parse_args(argv)
    result = run(
        args.num_images,
        args.nfe,
        args.sampler,
        args.repeats,
        args.batch_size,
        args.device,
        args.cache_dir,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"scoring {result['num_images']} digits images (classifier features, prefixes 1/4, "
        f"1/2, all): {result['score_seconds']:.3f} s; generating them with "
        f"{result['nfe']} NFE ({result['sampler']}): {result['generate_seconds']:.3f} s; "
        f"ratio {100 * result['ratio']:.1f}% (median of {result['repeats']})\n"
        f"one-off set-up (classifier training + reference statistics): "
        f"{result['setup_seconds']:.2f} s\n"
        f"{result['platform']}, {result['cpu_count']} CPUs ({result['torch_threads']} torch "
        f"threads), torch {result['torch']}, device {result['device']}\n"
        f"network: {result['network']}; generation: {result['generation']}\n"
        f"written to {out}"
    )
    return result


if __name__ == "__main__":
    main()
