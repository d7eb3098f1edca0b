"""sigmatune: how should a diffusion model spend its effort across noise levels?

The packages live in the repository's top-level folders and are installed under this one
import name: :mod:`sigmatune.objectives` (the training objective in noise levels and the
FID score), :mod:`sigmatune.models` (networks, samplers, schedules, training, data),
:mod:`sigmatune.study` (the bilevel Optuna study and its command line) and
:mod:`sigmatune.dashboards` (figures, optuna-dashboard, the HTML report).
"""

__version__ = "0.2.0"
