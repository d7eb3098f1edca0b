"""The digits model behind the trained-model quality figures: EDM's defaults (Karras et al.
2022, Table 1: ``edm`` preconditioning, ``lognormal(-1.2, 1.2)``, ``unit`` weighting) on the
``digits`` preset's U-Net and training settings, for ``train_nimg`` images, trained by the
product's own ``models.training.train`` and cached as a model file.

The cache is a folder (``bench-out/digits-model`` by default): the training checkpoints, and
a model file ``model-<nimg>.pt`` (``study.modelfile``) at every checkpoint. A longer run
resumes the last checkpoint of a shorter one (the learning-rate and EMA schedules depend on
images seen, not on the budget, so a run continued to N images equals one trained to N).

    python -m benchmarks.digits_model --train-nimg 1000000      # train (or find) the model
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks._common import BENCH_OUT, limited_threads
from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.training import TrainSettings, train
from sigmatune.objectives.loss import objective_from_description
from sigmatune.study.config import Config, load_config
from sigmatune.study.modelfile import load_model_file, save_model_file
from sigmatune.study.spaces import edm_defaults_description
from sigmatune.study.storage import short_hash

DEFAULT_CACHE = BENCH_OUT / "digits-model"
CHECKPOINT_NIMG = 200_000


def model_path(cache: Path, nimg: int) -> Path:
    return Path(cache) / f"model-{int(nimg):09d}.pt"


def cached_models(cache: Path) -> dict[int, Path]:
    """The model files in ``cache`` by their images trained."""
    found = {}
    for p in Path(cache).glob("model-*.pt"):
        try:
            found[int(p.stem.split("-")[1])] = p
        except (IndexError, ValueError):
            continue
    return dict(sorted(found.items()))


def train_digits_model(
    config: Config,
    train_nimg: int,
    cache: Path = DEFAULT_CACHE,
    *,
    checkpoint_nimg: int = CHECKPOINT_NIMG,
    log: Callable[[str], None] = print,
) -> tuple[Denoiser, int]:
    """The EDM-defaults model of ``config``'s data set and network after ``train_nimg`` images
    (read from the cache, or trained from the cache's last checkpoint); its images trained."""
    from sigmatune.models.data import load_dataset

    cache = Path(cache)
    have = cached_models(cache)
    done = [n for n in have if n >= train_nimg and n - train_nimg < config.train.batch_size]
    if done:
        D, payload = load_model_file(have[done[0]])
        return D.eval(), int(payload["nimg"])
    data = load_dataset(config.dataset, root=config.data_root or None, seed=config.seed)
    description = edm_defaults_description(config, data.sigma_data)
    objective = objective_from_description(description)
    torch.manual_seed(config.seed)
    net = make_network(config.network.name, dict(config.network.params), data.shape)
    settings = TrainSettings(
        train_nimg=int(train_nimg),
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        ema_halflife_nimg=config.train.ema_halflife_nimg,
        seed=config.seed,
        checkpoint_nimg=int(checkpoint_nimg),
        grad_clip=config.train.grad_clip or None,
    )

    def save(nimg: int, ema: torch.nn.Module, *_: object) -> None:
        save_model_file(
            model_path(cache, nimg),
            net=ema,
            network=config.network.name,
            network_params=dict(config.network.params),
            shape=tuple(data.shape),
            parameterisation=description["parameterisation"],
            sigma_data=data.sigma_data,
            dataset=config.dataset,
            nimg=nimg,
        )
        log(f"digits model: {nimg:,} images, saved {model_path(cache, nimg).name}")

    result = train(
        net,
        objective,
        data.x,
        settings,
        checkpoint_dir=cache / "checkpoints",
        run_key=short_hash("benchmarks.digits_model", config.to_dict()["network"], description),
        callback=save,
        device="cpu",
        progress=False,
        log=log,
    )
    D, payload = load_model_file(model_path(cache, result.nimg))
    return D.eval(), int(payload["nimg"])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-nimg", type=int, required=True)
    p.add_argument("--checkpoint-nimg", type=int, default=CHECKPOINT_NIMG)
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="model folder")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with limited_threads(args.threads):
        _, nimg = train_digits_model(
            load_config("digits"),
            args.train_nimg,
            Path(args.cache),
            checkpoint_nimg=args.checkpoint_nimg,
            log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
        )
    print(f"{nimg:,} images in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
