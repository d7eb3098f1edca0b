"""The literature's training configurations, written in sigmatune's terms.

Each entry of :data:`LITERATURE` is one published training objective expressed as a
parameterisation (``objectives.parameterisations``), a noise-level density p over λ
(``objectives.densities``), a loss weighting w(σ) in the parameterisation's own space
(``objectives.weightings``) and, where the paper learns one, an adaptive mechanism
(``objectives.adaptive``), so that a study can start from it and compare its own trials with
it on the same model, seeds and images. Conventions: VE ``x = x0 + σ·ε``, logSNR
``λ = −2·ln σ``; VP ``α = 1/sqrt(1+σ²)``; flow ``t = σ/(1+σ)``.

What an entry optimises is its effective weighting, the ε-space weight per unit λ
(Kingma & Gao 2023, eq. 6; ``DiffusionObjective.effective_weighting``)

    W(λ) = p_λ(λ)·w(σ)·σ²/c_out(σ)²,

which is, up to a constant and the truncation to the run's ``[sigma_min, sigma_max]``:

==================  =================================================================
``edm``             ``N(λ; 2.4, 2.4²)·(e^{−λ} + σd²)/σd²``
``edm2``            ``N(λ; 0.8, 2²)·(e^{−λ} + σd²)/σd²·e^{−u(σ)}``, ``u = 0`` at the start
``rectified_flow``  ``N(λ; 0, 2²)·(1 + e^{−λ/2})²``  (SD3's ``t/(1−t)·π_ln(t; 0, 1)``)
``min_snr``         ``sech(λ/2)·min(1, 5·e^{−λ})``
``v_cosine``        ``sech(λ/2)·(1 + e^{−λ}) = 2·e^{−λ/2}``
``sigmoid``         ``sigmoid(2 − λ)``
``laplace``         ``e^{−|λ|/0.5}·(1 + e^{−λ})``
``eps_cosine``      ``sech(λ/2)``
==================  =================================================================

The tests check each against the formula its paper states. :func:`get_literature` looks an
entry up by name; ``LITERATURE[name].description(sigma_data, sigma_min, sigma_max)`` gives it
in ``DiffusionObjective.describe()`` form, which ``objective_from_description`` builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sigmatune.objectives.loss import objective_from_description

__all__ = [
    "LITERATURE",
    "LiteratureConfig",
    "Term",
    "get_literature",
    "literature_names",
]


@dataclass(frozen=True)
class Term:
    """One registry choice: the ``name`` of a density, weighting or adaptive mechanism and its
    constructor ``params`` (read-only)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> dict[str, Any]:
        """``{"name", "params"}``, as ``DiffusionObjective.describe()`` writes a term."""
        return {"name": self.name, "params": dict(self.params)}


def _term(name: str, **params: Any) -> Term:
    return Term(name, MappingProxyType(params))


@dataclass(frozen=True)
class LiteratureConfig:
    """A published training configuration.

    Args:
        name: key in :data:`LITERATURE`.
        title: a short human label.
        citation: authors, year, venue, and the equations / sections the terms come from.
        parameterisation: a key of ``objectives.parameterisations.PARAMETERISATIONS``.
        density, weighting: the p(λ) and w(σ) terms.
        adaptive: the adaptive mechanism, or ``None``.
        notes: how the paper's own setting maps onto these terms, and where it differs.
    """

    name: str
    title: str
    citation: str
    parameterisation: str
    density: Term
    weighting: Term
    adaptive: Term | None = None
    notes: str = ""

    def description(self, sigma_data: float, sigma_min: float, sigma_max: float) -> dict[str, Any]:
        """This configuration on a run's data and σ range, in ``DiffusionObjective.describe()``
        form (the objective is built once, so a ValueError names any bad argument)."""
        raw = {
            "parameterisation": self.parameterisation,
            "sigma_data": sigma_data,
            "density": self.density.describe(),
            "weighting": self.weighting.describe(),
            "adaptive": None if self.adaptive is None else self.adaptive.describe(),
            "sigma_min": sigma_min,
            "sigma_max": sigma_max,
        }
        return objective_from_description(raw).describe()


LITERATURE: dict[str, LiteratureConfig] = {
    config.name: config
    for config in (
        LiteratureConfig(
            name="edm",
            title="EDM (Karras et al. 2022)",
            citation=(
                "Karras, Aittala, Aila & Laine 2022, 'Elucidating the Design Space of "
                "Diffusion-Based Generative Models', NeurIPS 2022: Table 1 (preconditioning; "
                "ln σ ~ N(P_mean, P_std²) with P_mean = -1.2, P_std = 1.2; loss weight "
                "λ(σ) = (σ² + σ_data²)/(σ·σ_data)²) and eq. 8 (the loss)."
            ),
            parameterisation="edm",
            density=_term("lognormal", P_mean=-1.2, P_std=1.2),
            weighting=_term("unit"),
            notes=(
                "EDM's λ(σ) = 1/c_out(σ)², so λ(σ)·‖D − x0‖² = ‖F − F_target‖²: the unit "
                "weight of F's loss."
            ),
        ),
        LiteratureConfig(
            name="edm2",
            title="EDM2: learned uncertainty weighting (Karras et al. 2024)",
            citation=(
                "Karras, Aittala, Lehtinen, Hellsten, Aila & Laine 2024, 'Analyzing and "
                "Improving the Training Dynamics of Diffusion Models', CVPR 2024: eqs. 14-16 "
                "and 21 (loss λ(σ)/e^{u(σ)}·‖D − x0‖² + u(σ) with a learned log-variance "
                "u(σ)); P_mean = -0.4, P_std = 1.0 (the ImageNet-512 presets of the official "
                "train_edm2.py)."
            ),
            parameterisation="edm",
            density=_term("lognormal", P_mean=-0.4, P_std=1.0),
            weighting=_term("unit"),
            adaptive=_term("uncertainty"),
            notes=(
                "EDM2's ImageNet-64 presets use P_mean = -0.8, P_std = 1.6. u starts at 0, "
                "so W starts as EDM's with the new density and then moves by e^{-u(σ)}."
            ),
        ),
        LiteratureConfig(
            name="rectified_flow",
            title="Rectified flow, logit-normal t (SD3, Esser et al. 2024)",
            citation=(
                "Esser, Kulal, Blattmann, Entezari, Müller, Saini, Levi, Lorenz, Sauer, "
                "Boesel, Podell, Dockhorn, English & Rombach 2024, 'Scaling Rectified Flow "
                "Transformers for High-Resolution Image Synthesis', ICML 2024: §2 "
                "(z_t = (1 − t)·x0 + t·ε, velocity target ε − x0) and §3.1 (logit-normal "
                "sampling π_ln(t; m, s), loss weight w_t = t/(1 − t)·π(t)); m = 0, s = 1, their "
                "best 'rf/lognorm(0.00, 1.00)'."
            ),
            parameterisation="flow",
            density=_term("lognormal", P_mean=0.0, P_std=1.0),
            weighting=_term("unit"),
            notes=(
                "With t = σ/(1 + σ), t/(1 − t) = σ, so logit(t) = ln σ: t ~ logit-normal(m, s) "
                "is exactly ln σ ~ N(m, s²), EDM's log-normal with P_mean = m, P_std = s. The "
                "unit weight is on the velocity's squared error."
            ),
        ),
        LiteratureConfig(
            name="min_snr",
            title="Min-SNR-γ, γ = 5, cosine schedule (Hang et al. 2023)",
            citation=(
                "Hang, Gu, Li, Bao, Chen, Hu, Geng & Guo 2023, 'Efficient Diffusion Training "
                "via Min-SNR Weighting Strategy', ICCV 2023: §3, 'Min-SNR-γ loss weight "
                "strategy' (w_t = min{SNR(t), γ} on the x0 loss, min{SNR(t), γ}/SNR(t) on the "
                "ε loss), γ = 5, t uniform under the cosine schedule."
            ),
            parameterisation="eps",
            density=_term("cosine", shift=0.0),
            weighting=_term("min_snr", gamma=5.0),
            notes=(
                "The paper's main ImageNet runs predict x0 (their configs: predict_xstart, "
                "noise_schedule cosine, min_snr_5). Min-SNR-γ gives x0-, ε- and v-prediction the "
                "same W; sigmatune's min_snr family is the ε-space form, so this entry predicts "
                "ε. Their cosine schedule is improved-DDPM's, with offset s = 0.008, which "
                "lowers p(λ) above λ ≈ 6 (by 17% at λ = 8); cosine(shift=0) is its s → 0 limit."
            ),
        ),
        LiteratureConfig(
            name="v_cosine",
            title="v-prediction, cosine schedule (Salimans & Ho 2022)",
            citation=(
                "Salimans & Ho 2022, 'Progressive Distillation for Fast Sampling of Diffusion "
                "Models', ICLR 2022: §4 (v = α·ε − σ·x, whose loss ‖v − v̂‖² = (1 + α²/σ²)·"
                "‖x − x̂‖² is the 'SNR+1' weighting), cosine schedule α_t = cos(πt/2) with t "
                "uniform; Kingma & Gao 2023, Table 1: W(λ) ∝ e^{−λ/2}."
            ),
            parameterisation="v",
            density=_term("cosine", shift=0.0),
            weighting=_term("unit"),
            notes="Uniform t under α_t = cos(πt/2) is cosine(shift=0) in λ, exactly.",
        ),
        LiteratureConfig(
            name="sigmoid",
            title="Sigmoid weighting, b = 2 (Kingma & Gao 2023)",
            citation=(
                "Kingma & Gao 2023, 'Understanding Diffusion Objectives as the ELBO with Simple "
                "Data Augmentation', NeurIPS 2023: eq. 6 (the weighted loss, ε-space, per unit "
                "λ; the sampling density p(λ) only changes the variance), §5 (sigmoid "
                "weighting w(λ) = sigmoid(−λ + b), b = 2) and App. F (adaptive noise schedule)."
            ),
            parameterisation="eps",
            density=_term("uniform"),
            weighting=_term("sigmoid", b=2.0),
            adaptive=_term("importance"),
            notes=(
                "Kingma & Gao's weighting is W itself; they sample λ from a cosine or an "
                "adaptive schedule p and weight by w/p. Here p is uniform in λ over the run's "
                "range and ε is predicted, so W = sigmoid(2 − λ) up to a constant, and the "
                "importance mechanism (their App. F) draws λ where the weighted loss is large "
                "without changing W."
            ),
        ),
        LiteratureConfig(
            name="laplace",
            title="Laplace noise schedule, μ = 0, b = 0.5 (Hang et al. 2024)",
            citation=(
                "Hang, Gu, Geng & Guo 2024, 'Improved Noise Schedule for Diffusion Training', "
                "arXiv:2407.03297 (ICCV 2025): §2 (p(λ) = e^{−|λ − μ|/b}/(2b), schedule "
                "λ(t) = μ − b·sgn(0.5 − t)·ln(1 − 2|t − 0.5|)), μ = 0, b = 0.5 (ImageNet-256), "
                "v-prediction with the plain MSE of their main comparison."
            ),
            parameterisation="v",
            density=_term("laplace", mu=0.0, b=0.5),
            weighting=_term("unit"),
            notes="They use b = 0.75 at 512²; the Laplace schedule helps x0- and ε-prediction too.",
        ),
        LiteratureConfig(
            name="eps_cosine",
            title="ε-prediction, cosine schedule (improved DDPM, Nichol & Dhariwal 2021)",
            citation=(
                "Nichol & Dhariwal 2021, 'Improved Denoising Diffusion Probabilistic Models', "
                "ICML 2021: §3.2 (cosine schedule, eq. 17) with t uniform, and L_simple "
                "(Ho, Jain & Abbeel 2020, NeurIPS 2020, eq. 14: unit weight on ‖ε − ε̂‖²); "
                "Kingma & Gao 2023, Table 1: W(λ) ∝ sech(λ/2)."
            ),
            parameterisation="eps",
            density=_term("cosine", shift=0.0),
            weighting=_term("unit"),
            notes=(
                "Improved DDPM's offset s = 0.008 lowers p(λ) above λ ≈ 6 (by 17% at λ = 8, "
                "52% at λ = 10); cosine(shift=0) is its s → 0 limit."
            ),
        ),
    )
}


def literature_names() -> list[str]:
    """The names in :data:`LITERATURE`, EDM's defaults first (the order a study enqueues)."""
    return list(LITERATURE)


def get_literature(name: str) -> LiteratureConfig:
    """The configuration registered as ``name``; a ValueError lists the valid names."""
    if name not in LITERATURE:
        raise ValueError(
            f"unknown literature configuration {name!r}; valid: {', '.join(LITERATURE)}"
        )
    return LITERATURE[name]
