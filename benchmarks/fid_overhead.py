"""How much scoring adds to an inner trial: the time to score N digits images with the
``classifier`` extractor against the time to generate them with 10 NFE.

An inner trial generates ``fid_num_images`` images with a candidate schedule and scores them;
the scorer should cost a small fraction of the generation (the issue asks < 10% for 2,000
digits images at 10 NFE). Both are timed on the same images, as a trial sees them: generation
through ``models.samplers.generate`` (one seed per image) on Karras et al.'s schedule
(``models.schedules.karras``, rho = 7) with the digits preset's U-Net
(``models.networks.make_network``) in EDM preconditioning (``models.denoiser.Denoiser``), and
scoring through ``objectives.fid.Scorer.score`` with the prefixes a trial reports (1/4, 1/2,
all). The network is untrained: its weights do not change its cost. The one-off set-up
(training the classifier, the reference statistics) is reported apart; a study pays it once.
Generation and scoring alternate, round by round; the figures are medians over the rounds.

    python benchmarks/fid_overhead.py [--num-images 2000] [--repeats 3] [--out PATH]
    python benchmarks/fid_overhead.py --quick        # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (puts the checkout on sys.path)
    describe_machine,
    format_table,
    limited_threads,
    machine_info,
    median_seconds,
    write_json,
)

from sigmatune.models.data import load_dataset  # noqa: E402
from sigmatune.models.denoiser import Denoiser  # noqa: E402
from sigmatune.models.networks import make_network  # noqa: E402
from sigmatune.models.samplers import generate, nfe, steps_for_nfe  # noqa: E402
from sigmatune.models.schedules import karras  # noqa: E402
from sigmatune.objectives.fid import Scorer, ScorerSettings  # noqa: E402
from sigmatune.study.config import load_config  # noqa: E402
from sigmatune.study.spaces import KARRAS_RHO  # noqa: E402
from sigmatune.study.trials import REPORT_FRACTIONS  # noqa: E402


def run(
    num_images: int = 2000,
    nfe_budget: int = 10,
    sampler: str = "euler",
    repeats: int = 3,
    batch_size: int = 500,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> dict:
    dev = torch.device(device)
    config = load_config("digits")
    data = load_dataset(config.dataset, seed=config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scorer = Scorer(
            data.x,
            data.labels,
            ScorerSettings("classifier", num_images, seed=config.seed),
            dataset_name=config.dataset,
            value_range=data.value_range,
            cache_dir=cache_dir or tmp,
            device=dev,
        )
        setup_seconds = time.perf_counter() - t0

    torch.manual_seed(config.seed)
    net = make_network(config.network.name, dict(config.network.params), data.shape)
    D = Denoiser(net, "edm", data.sigma_data).eval().to(dev)
    n_steps = steps_for_nfe(sampler, nfe_budget)
    sigmas = karras(n_steps, config.sigma_min, config.sigma_max, KARRAS_RHO)
    seeds = list(range(num_images))

    images: list[Tensor] = []
    fids: list[float] = []

    def generation() -> None:
        batches = generate(D, sigmas, sampler, seeds, data.shape, batch_size, device=dev)
        images[:] = [b.cpu() for b in batches]

    def scoring() -> None:
        results = list(scorer.score(iter(images), REPORT_FRACTIONS, num_images=num_images))
        fids.append(results[-1][1])

    generate_times, score_times = [], []
    for _ in range(repeats):
        generate_times.append(median_seconds(generation, 1, warmup=0))
        score_times.append(median_seconds(scoring, 1, warmup=0))

    generate_seconds = statistics.median(generate_times)
    score_seconds = statistics.median(score_times)
    info = machine_info(dev)
    params = sum(p.numel() for p in net.parameters())
    return {
        "benchmark": "fid_overhead",
        "num_images": num_images,
        "nfe": nfe(sampler, n_steps),
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
        "data": f"models.data.load_dataset({config.dataset!r})",
        "network": (
            f"models.networks.make_network({config.network.name!r}, "
            f"{dict(config.network.params)}) (digits preset, {params:,} parameters)"
        ),
        "generation": f"models.samplers.generate ({sampler}) on models.schedules.karras",
        "extractor": "classifier",
        "machine": info,
        "platform": platform.platform(),
        "processor": info["cpu"],
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": info.get("gpu") or str(dev),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--num-images", type=int, default=None, help="default 2000")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--sampler", default="euler", choices=("euler", "heun", "dpmpp_2m"))
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (default 1: on a shared machine a descheduled second "
        "thread makes every call many times slower; 0 leaves them as they are)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 images, 1 round")
    parser.add_argument(
        "--cache-dir", default=None, help="FID reference cache (default: a temporary folder)"
    )
    parser.add_argument(
        "--out", default=None, help="JSON file (default bench-out/fid_overhead.json)"
    )
    args = parser.parse_args(argv)
    num_images = args.num_images or (128 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    with limited_threads(args.threads):
        result = run(
            num_images,
            args.nfe,
            args.sampler,
            repeats,
            min(args.batch_size, num_images),
            args.device,
            args.cache_dir,
        )
    result["command"] = "python benchmarks/fid_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    table = format_table(
        ["images", "sampler", "NFE", "generate s", "score s", "score / generate", "set-up s"],
        [
            [
                result["num_images"],
                result["sampler"],
                result["nfe"],
                result["generate_seconds"],
                result["score_seconds"],
                f"{100 * result['ratio']:.1f}%",
                result["setup_seconds"],
            ]
        ],
    )
    result["table"] = table
    out = write_json("fid_overhead", result, args.out)
    print(
        f"fid_overhead.py: {describe_machine(result['machine'])}\n"
        f"scoring {result['num_images']} digits images (classifier features, prefixes 1/4, "
        f"1/2, all) against generating them (median of {result['repeats']} rounds); the "
        f"one-off set-up (classifier training + reference statistics) apart\n"
        f"{table}\n"
        f"network: {result['network']}; generation: {result['generation']}\n"
        f"written to {out}"
    )
    return result


if __name__ == "__main__":
    main()
