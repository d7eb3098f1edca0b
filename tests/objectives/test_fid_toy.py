"""The toy preset's scorer (``rff`` on ``gmm2d``, fid_num_images = 1000) resolves what matters
on the toy data: narrower modes, collapsed modes and a missing mode each stand far outside the
spread of true samples' scores, and far-off samples keep scoring worse (issue 10, item 3:
the single-bandwidth features put the first inside the noise and saturated at data x10).

Criterion, for each bad distribution: min over 5 seed sets of its score minus the mean score of
true samples over the same 5 seed sets >= 5 x the (sample) std of those true scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sigmatune.models.analytic import GaussianMixture
from sigmatune.models.data import gmm2d_mixture, load_dataset
from sigmatune.objectives.fid import Scorer, ScorerSettings

FID_NUM_IMAGES = 1000  # the toy preset's
SEED_SETS = 5
SEPARATION = 5.0  # in stds of the true-vs-reference scores


@pytest.fixture(scope="module")
def toy_scorer() -> Scorer:
    data = load_dataset("gmm2d", seed=0)  # what the toy preset scores against
    settings = ScorerSettings("rff", FID_NUM_IMAGES, seed=0)
    return Scorer(data.x, None, settings, dataset_name="gmm2d", value_range=data.value_range)


def collapsed(n: int, generator: torch.Generator) -> torch.Tensor:
    """Every mode collapsed to its centre."""
    mixture = gmm2d_mixture()
    return mixture.means[torch.multinomial(mixture.weights, n, True, generator=generator)]


TRUTH = gmm2d_mixture()
BAD = {
    "mode std x0.5": GaussianMixture.ring(n_modes=8, radius=0.6, std=0.05).sample,
    "modes collapsed to their centres": collapsed,
    "one of 8 modes dropped": GaussianMixture(TRUTH.means[1:], TRUTH.stds[1:]).sample,
}


def scores(scorer: Scorer, sample, scale: float = 1.0) -> np.ndarray:
    """Scores of 5 seed sets of FID_NUM_IMAGES samples."""
    return np.array(
        [
            scorer.score_tensor(
                scale * sample(FID_NUM_IMAGES, generator=torch.Generator().manual_seed(100 + k))
            )
            for k in range(SEED_SETS)
        ]
    )


@pytest.fixture(scope="module")
def true_scores(toy_scorer) -> np.ndarray:
    return scores(toy_scorer, TRUTH.sample)


def test_the_toy_scorer_is_the_multi_scale_one(toy_scorer):
    bandwidths = toy_scorer.extractor.bandwidths
    assert len(bandwidths) == 4 and toy_scorer.extractor.num_features <= 512
    # from the global layout (median distance ~0.85) down to below the modes' std (0.1)
    assert bandwidths[0] == pytest.approx(0.85, rel=0.05) and bandwidths[-1] < 0.05


@pytest.mark.parametrize("name", sorted(BAD))
def test_toy_scorer_separates_true_samples_from_a_bad_distribution(toy_scorer, true_scores, name):
    bad = scores(toy_scorer, BAD[name])
    spread = true_scores.std(ddof=1)
    separation = (bad.min() - true_scores.mean()) / spread
    assert separation >= SEPARATION, (
        f"{name}: {bad} against true {true_scores} ({separation:.1f} stds)"
    )


def test_toy_scorer_does_not_saturate(toy_scorer, true_scores):
    x2, x10, x100 = (scores(toy_scorer, TRUTH.sample, scale) for scale in (2.0, 10.0, 100.0))
    assert x2.min() > 10 * true_scores.max()
    assert x10.min() > 3 * x2.max() and x100.min() > 3 * x10.max()
