"""What sigmatune's own machinery costs, each part timed against a bare equivalent in the same
process: one module per measured thing, each with its typed row.

- ``training``: ``models.training.train`` against a plain PyTorch loop (same network, batch,
  Adam, EDM loss, EMA); target <= 1.05x the plain loop's time.
- ``sampling``: ``models.samplers.generate`` + ``heun`` against a bare Heun loop of the same
  NFE; target <= 1.05x.
- ``scoring``: scoring one inner trial's images (``objectives.fid.Scorer``) against generating
  them; target < 10% of the generation for digits.
- ``optuna_trial``: Optuna (the inner study's sampler) + storage per inner trial of a real inner
  study (``study.inner``), against the same schedules scored without Optuna; target <= 5% of a
  full-size trial.

The two sides of a ratio run in one process, interleaved round by round (A B, B A, ...), and the
ratio is the median of the per-round ratios (``benchmarks._common.interleaved``,
``paired_ratio``). Run all of them with ``python -m benchmarks.overhead`` (see ``--help``).
"""
