"""``inner.search_images``: the search ranks its trials on the first ``search_images`` search
seeds, while every reported figure stays on held-out sets of ``fid_num_images`` images."""

from __future__ import annotations

import optuna
import torch

from sigmatune.models.data import gmm2d_mixture
from sigmatune.study import inner
from sigmatune.study.config import load_config
from sigmatune.study.context import make_context

NFE = 7  # heun: 4 steps, 7 evaluations per image


class _Counting:
    def __init__(self, D):
        self.D, self.images = D, 0

    def __call__(self, x, sigma):
        self.images += x.shape[0]
        return self.D(x, sigma)


def test_the_search_generates_search_images_per_trial_and_reports_on_the_full_sets(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    config = load_config(
        "toy",
        {
            "storage": f"sqlite:///{tmp_path / 's.db'}",
            "device": "cpu",
            "inner.inner_trials": 4,
            "inner.sampler": "random",
            "inner.nfe_budgets": [NFE],
            "inner.fid_num_images": 96,
            "inner.search_images": 24,
            "inner.batch_size": 96,
            "inner.prune": False,
            "inner.peers": [],
        },
    )
    ctx = make_context(
        config, storage=optuna.storages.InMemoryStorage(), progress=False, log=lambda _m: None
    )
    assert len(ctx.seeds.search) == 24 and len(ctx.seeds.held_out(0)) == 96
    D = _Counting(gmm2d_mixture())
    study = inner.open_inner_study(ctx, D, "s/nfe-7", NFE)
    D.images = 0
    inner.run_search(ctx, study, D, NFE)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    assert len(finished) == 4
    assert D.images == 4 * 24 * NFE  # every trial 24 images, 7 evaluations each
    record = inner.summarise(ctx, study, D.D, NFE)
    assert record.held_out.seeds == (ctx.seeds.held_out_start, 96, 3)
    assert record.search_fid is not None
