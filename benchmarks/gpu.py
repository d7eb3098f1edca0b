"""Training and sampling throughput on a CUDA GPU for the cifar10 preset's network: float32
against bf16 autocast, and torch.compile off against on.

Training (images/s): the step of ``models.training.train`` (minibatch, ``objectives.loss``
with EDM's defaults, Adam, EMA), written out here so that autocast and torch.compile can be
switched (``train`` itself always uses bf16 autocast on CUDA: its row, eager, is measured as
well). Images in channels_last, as ``train`` puts them. Sampling (images/s):
``models.samplers.generate`` with the preset's first sampler at its primary NFE budget on
Karras et al.'s schedule (rho = 7), ``models.denoiser.Denoiser`` around the network, run in
float32 or under bf16 autocast, the network eager or compiled. float32 here means torch's
defaults (cuDNN may use TF32 for convolutions; the settings are recorded). The data are
CIFAR-10 when it is on disk, else uniform noise in [-1, 1] of its shape (the cost does not
depend on the values). Compilation happens in the warm-up and is reported apart.

On a machine without CUDA the script says it needs a GPU and exits with status 0.

    python -m benchmarks.gpu                    # full default: minutes, mostly compiling
    python -m benchmarks.gpu --quick            # smoke run
    python -m benchmarks.gpu --no-compile --out bench-out/gpu-eager.json
    python -m benchmarks.gpu --device cpu --preset digits --quick   # the code path on a CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._common import (
    BENCH_OUT,
    benchmark_parser,
    describe_machine,
    format_table,
    git_state,
    machine_info,
    median_seconds,
    results_path,
    write_json,
)
from sigmatune.models.data import load_dataset
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.samplers import generate, nfe, steps_for_nfe
from sigmatune.models.schedules import karras
from sigmatune.models.training import TrainSettings, train
from sigmatune.objectives.loss import objective_from_description
from sigmatune.study.config import Config, load_config
from sigmatune.study.spaces import KARRAS_RHO, edm_defaults_description

MODES = [  # (precision, compiled)
    ("float32", False),
    ("bf16", False),
    ("float32", True),
    ("bf16", True),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_data(config: Config, shape_fallback: tuple[int, ...], n: int) -> tuple[Tensor, str]:
    """The preset's data set when it is on disk (no download), else uniform noise."""
    try:
        data = load_dataset(
            config.dataset, root=config.data_root or None, seed=config.seed, download=False
        )
        return data.x, f"models.data.load_dataset({config.dataset!r})"
    except Exception as exc:  # not downloaded (cifar10), or no network
        g = torch.Generator().manual_seed(config.seed)
        x = 2 * torch.rand((n, *shape_fallback), generator=g) - 1
        return x, f"uniform noise in [-1, 1] ({config.dataset} unavailable: {type(exc).__name__})"


def preset_shape(preset: str) -> tuple[int, ...]:
    return {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "digits": (1, 8, 8), "toy": (2,)}[preset]


class Bench:
    """What the measurements share: the preset, the data on the device, the network."""

    def __init__(self, preset: str, device: torch.device, batch_size: int | None) -> None:
        self.preset = preset
        self.device = device
        self.config = load_config(preset)
        x, self.data_source = load_data(self.config, preset_shape(preset), 10_000)
        self.shape = tuple(x.shape[1:])
        self.sigma_data = float(x.std())
        self.images = x.ndim == 4 and device.type == "cuda"
        fmt = torch.channels_last if self.images else torch.contiguous_format
        self.memory_format = fmt
        self.data = x.to(device)
        if x.ndim == 4:
            self.data = self.data.contiguous(memory_format=fmt)
        self.batch_size = batch_size or self.config.train.batch_size
        torch.manual_seed(self.config.seed)
        self.net0 = make_network(
            self.config.network.name, dict(self.config.network.params), self.shape
        )
        self.parameters = sum(p.numel() for p in self.net0.parameters())
        self.description = (
            f"{self.config.network.name} {dict(self.config.network.params)} on "
            f"{tuple(self.shape)}, {self.parameters:,} parameters"
        )

    def fresh_net(self) -> nn.Module:
        net = copy.deepcopy(self.net0).to(self.device)
        if self.images:
            net = net.to(memory_format=torch.channels_last)
        return net

    def objective(self) -> Any:
        return objective_from_description(edm_defaults_description(self.config, self.sigma_data))


# -- training -------------------------------------------------------------------------------------


def make_train_step(bench: Bench, precision: str, compiled: bool) -> Callable[[int], None]:
    """``steps -> None``: that many steps of train()'s loop, with device-side random draws."""
    cfg = bench.config.train
    device, B = bench.device, bench.batch_size
    net = bench.fresh_net().train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    F = torch.compile(net) if compiled else net
    objective = bench.objective()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    beta = 0.5 ** (B / cfg.ema_halflife_nimg)
    autocast = precision == "bf16"

    def steps(n: int) -> None:
        for _ in range(n):
            x0 = bench.data[torch.randint(bench.data.shape[0], (B,), device=device)]
            x0 = x0.contiguous(memory_format=bench.memory_format)  # as train() has it
            sigma, factor = objective.sample_sigma(B, generator)
            noise = torch.randn_like(x0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                per_example = objective.loss(F, x0, sigma.to(device), noise, factor.to(device))
            loss = per_example.float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - beta)

    return steps


def our_train_step(bench: Bench) -> Callable[[int], None]:
    """``steps -> None``: ``models.training.train`` itself for that many steps (bf16 autocast
    on CUDA, eager; no progress bar, no checkpoints)."""
    cfg = bench.config.train
    objective = bench.objective()
    data = bench.data

    def steps(n: int) -> None:
        settings = TrainSettings(
            train_nimg=n * bench.batch_size,
            batch_size=bench.batch_size,
            lr=cfg.lr,
            ema_halflife_nimg=cfg.ema_halflife_nimg,
            seed=0,
        )
        train(bench.fresh_net(), objective, data, settings, progress=False, device=bench.device)

    return steps


def timed_steps(fn: Callable[[int], None], n: int, device: torch.device) -> float:
    """Wall time of ``fn(n)`` up to the device's last kernel."""

    def call() -> None:
        fn(n)
        synchronize(device)

    return median_seconds(call, 1, warmup=0)


def bench_training(
    bench: Bench, modes: list[tuple[str, bool]], steps: int, warmup: int, repeats: int, log: Any
) -> list[dict]:
    rows = []
    candidates: list[tuple[str, str, bool]] = [
        (f"step, {precision}, {'compiled' if compiled else 'eager'}", precision, compiled)
        for precision, compiled in modes
    ]
    candidates.append(("models.training.train (bf16 autocast on CUDA), eager", "bf16", False))
    for i, (name, precision, compiled) in enumerate(candidates):
        log(f"training: {name}")
        # train() builds its optimiser and EMA per call: it is timed as whole calls
        if i < len(modes):
            run_fn = make_train_step(bench, precision, compiled)
        else:
            run_fn = our_train_step(bench)
        warm_s = timed_steps(run_fn, warmup, bench.device)
        times = [timed_steps(run_fn, steps, bench.device) for _ in range(repeats)]
        seconds = statistics.median(times)
        rows.append(
            {
                "what": name,
                "precision": precision,
                "compiled": compiled,
                "batch_size": bench.batch_size,
                "steps": steps,
                "seconds": seconds,
                "images_per_s": steps * bench.batch_size / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "warmup_seconds": warm_s,
                "seconds_all": times,
            }
        )
        if bench.device.type == "cuda":
            rows[-1]["max_memory_gib"] = torch.cuda.max_memory_allocated(bench.device) / 2**30
            torch.cuda.reset_peak_memory_stats(bench.device)
    return rows


# -- sampling -------------------------------------------------------------------------------------


def make_sampler(
    bench: Bench, precision: str, compiled: bool, num_images: int, batch_size: int
) -> tuple[Callable[[], None], str, int]:
    sampler = bench.config.inner.samplers[0]
    n = steps_for_nfe(sampler, bench.config.inner.nfe_budgets[0])
    sigmas = karras(n, bench.config.sigma_min, bench.config.sigma_max, KARRAS_RHO)
    net = bench.fresh_net().eval()
    D = Denoiser(torch.compile(net) if compiled else net, "edm", bench.sigma_data).eval()
    autocast = precision == "bf16"
    device = bench.device

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if bench.images:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return D(x, sigma)

    def run() -> None:
        for _ in generate(
            denoise, sigmas, sampler, range(num_images), bench.shape, batch_size, device=device
        ):
            pass
        synchronize(device)

    return run, sampler, nfe(sampler, n)


def bench_sampling(
    bench: Bench,
    modes: list[tuple[str, bool]],
    num_images: int,
    batch_size: int,
    repeats: int,
    log: Any,
) -> list[dict]:
    rows = []
    for precision, compiled in modes:
        name = f"generate, {precision}, {'compiled' if compiled else 'eager'}"
        log(f"sampling: {name}")
        run, sampler, n_fe = make_sampler(bench, precision, compiled, num_images, batch_size)
        warm_s = median_seconds(run, 1, 0)  # compiles
        times = [median_seconds(run, 1, 0) for _ in range(repeats)]
        seconds = statistics.median(times)
        rows.append(
            {
                "what": name,
                "precision": precision,
                "compiled": compiled,
                "sampler": sampler,
                "nfe": n_fe,
                "num_images": num_images,
                "batch_size": batch_size,
                "seconds": seconds,
                "images_per_s": num_images / seconds,
                "warmup_seconds": warm_s,
                "seconds_all": times,
            }
        )
    return rows


# -- report ---------------------------------------------------------------------------------------


def relative(rows: list[dict]) -> None:
    """Speed-up of each row over the float32 eager one."""
    base = next((r for r in rows if r["precision"] == "float32" and not r["compiled"]), None)
    for r in rows:
        r["speedup_vs_float32_eager"] = (
            r["images_per_s"] / base["images_per_s"] if base is not None else None
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("gpu", __doc__, 1)
    parser.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes")
    parser.add_argument("--preset", default="cifar10", help="whose network (default cifar10)")
    parser.add_argument("--device", default="cuda", help="default cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per round")
    parser.add_argument("--num-images", type=int, default=None, help="images per sampling round")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--sections", default="training,sampling", help="comma-separated: training, sampling"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/gpu.json on a GPU, bench-out/gpu-cpu.json on "
        "the CPU code path)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu.py needs a CUDA GPU, and this machine has none (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}): nothing measured. "
            "Run it on a machine with a GPU (or with --device cpu to try the code path)."
        )
        return None
    default = None if device.type == "cuda" else BENCH_OUT / "gpu-cpu.json"
    args.out = results_path("gpu", args.out or default, args.allow_dirty)

    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args, argv, device)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, argv: Sequence[str] | None, device: torch.device) -> dict:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    quick = args.quick
    steps = args.steps or (3 if quick else 20)
    warmup = 2 if quick else 5
    repeats = args.repeats or (1 if quick else 3)
    sample_batch = 500
    num_images = args.num_images or (sample_batch if quick else 4 * sample_batch)
    if quick and device.type != "cuda":
        sample_batch = num_images = args.num_images or 16
    sample_batch = min(sample_batch, num_images)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    modes = [m for m in MODES if not (args.no_compile and m[1])]

    t_start = time.perf_counter()
    bench = Bench(args.preset, device, args.batch_size or (32 if quick else None))
    info = machine_info(device)
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": info,
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "git": git_state(),
        "quick": quick,
        "preset": args.preset,
        "network": bench.description,
        "data": bench.data_source,
        "settings": {
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "channels_last": bench.images,
            "repeats": repeats,
            "train_steps": steps,
            "train_warmup_steps": warmup,
        },
    }
    if "training" in sections:
        result["training"] = bench_training(bench, modes, steps, warmup, repeats, log)
        relative(result["training"])
    if "sampling" in sections:
        result["sampling"] = bench_sampling(bench, modes, num_images, sample_batch, repeats, log)
        relative(result["sampling"])
    result["wall_seconds"] = time.perf_counter() - t_start

    tables = []
    if result.get("training"):
        tables.append(
            f"Training, batch {bench.batch_size} ({steps} steps per round, median of {repeats})\n"
            + format_table(
                ["what", "img/s", "ms/step", "x float32 eager", "warm-up s"],
                [
                    [
                        r["what"],
                        r["images_per_s"],
                        r["ms_per_step"],
                        r["speedup_vs_float32_eager"],
                        r["warmup_seconds"],
                    ]
                    for r in result["training"]
                ],
            )
        )
    if result.get("sampling"):
        r0 = result["sampling"][0]
        tables.append(
            f"Sampling, {r0['sampler']} {r0['nfe']} NFE, {num_images} images in batches of "
            f"{sample_batch} (median of {repeats})\n"
            + format_table(
                ["what", "img/s", "x float32 eager", "warm-up s"],
                [
                    [
                        r["what"],
                        r["images_per_s"],
                        r["speedup_vs_float32_eager"],
                        r["warmup_seconds"],
                    ]
                    for r in result["sampling"]
                ],
            )
        )
    result["tables"] = tables
    path = write_json("gpu", result, args.out)
    print(f"gpu.py: {describe_machine(info)}")
    if device.type == "cuda":
        print(f"card: {torch.cuda.get_device_name(device)}")
    else:
        print("(not a GPU: these figures only show that the code path runs)")
    print(f"network: {bench.description}; data: {bench.data_source}")
    print("\n\n".join(tables))
    print(f"wall time {result['wall_seconds']:.0f} s; written to {path}")
    return result


if __name__ == "__main__":
    main()
