"""A local diffusers model folder as a k-diffusion-style denoiser ``D(x, sigma) -> x0_hat``.

sigmatune works in the variance-exploding convention ``x_sigma = x0 + sigma*eps`` (Karras et
al. 2022, eq. 4 with s(t) = 1). A diffusers model was trained in its scheduler's convention;
:func:`load_diffusers_denoiser` reads that convention from the folder's scheduler config and
translates:

- **VP models** (DDPM-style tables of ``alphas_cumprod``, abar): ``x_vp = sqrt(abar) x0 +
  sqrt(1 - abar) eps = x_VE / sqrt(1 + sigma^2)`` with ``sigma = sqrt((1 - abar)/abar)``
  (Karras et al. 2022, Table 1, "VP"). The network's timestep for a sigma is found by linear
  interpolation of ln sigma over the table (diffusers' ``EulerDiscreteScheduler._sigma_to_t``;
  ``timestep_mode="nearest"`` rounds to the nearest table entry). Its output is turned into
  ``x0_hat`` by its ``prediction_type``: ``epsilon`` ``x - sigma eps_hat``; ``v_prediction``
  (Salimans & Ho 2022) ``x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v_hat``; ``sample``
  the output itself.
- **Flow-matching models** (``FlowMatchEulerDiscreteScheduler`` and kin; rectified flow,
  Liu et al. 2022; Esser et al. 2024): ``x_t = (1 - t) x0 + t eps``, so ``t = sigma / (1 +
  sigma)``, ``sigma = t / (1 - t)`` and ``x_t = x_VE / (1 + sigma)``. The network predicts the
  velocity ``v = eps - x0`` at timestep ``t * num_train_timesteps`` (diffusers' scheduler
  convention), and ``x0_hat = x_t - t v_hat``. A schedule shift changes which t's a scheduler
  visits, not this translation.

Only a local folder is read, never a hub id. ``diffusers`` is an optional dependency
(``pip install 'sigmatune[diffusers]'``), imported inside the functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sigmatune.models.schedules import per_example_sigma, validate

__all__ = [
    "FLOW_SCHEDULERS",
    "PREDICTION_TYPES",
    "TIMESTEP_MODES",
    "DiffusersDenoiser",
    "DiffusersModelError",
    "SigmaRangeError",
    "explicit_config",
    "load_diffusers_denoiser",
    "read_scheduler_config",
    "scheduler_table",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_MODES = ("interpolate", "nearest")
# Scheduler classes whose config describes a flow-matching model (sigma_flow = t).
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
# Denoising networks whose forward is net(sample, timestep[, class_labels=...]).sample.
NETWORKS = ("UNet2DModel", "Transformer2DModel", "DiTTransformer2DModel")
_SIGMA_RTOL = 1e-6  # a schedule may exceed the model's range by this fraction (rounding)
_ZERO_SNR_ABAR = 2.0**-24  # diffusers' stand-in for abar = 0 (EulerDiscreteScheduler)


class DiffusersModelError(ValueError):
    """A diffusers model folder that cannot be used: the message names the file or key, the
    value and what is allowed."""


class SigmaRangeError(DiffusersModelError):
    """A schedule outside the noise levels the model was trained on."""


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - the extra is installed in dev
        raise ImportError(
            f"a diffusers model needs the diffusers package: pip install 'sigmatune[diffusers]' "
            f"({exc})"
        ) from exc
    return diffusers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffusersModelError(
            f"{path} must be a JSON file of a diffusers config, but it could not be read "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(data, dict):
        raise DiffusersModelError(
            f"{path} must hold a JSON object (a diffusers config), but it holds "
            f"{type(data).__name__}"
        )
    return data


# -- the scheduler's noise levels --------------------------------------------------------------


def read_scheduler_config(folder: str | Path) -> tuple[dict[str, Any], Path]:
    """The scheduler config of a model or pipeline folder: ``scheduler_config.json`` in the
    folder itself or in its ``scheduler/`` subfolder. Returns (config, file)."""
    folder = Path(folder)
    for path in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return _read_json(path), path
    raise DiffusersModelError(
        f"the diffusers model folder {folder} has no scheduler config: it must hold "
        "scheduler_config.json (as a scheduler's save_pretrained writes it) beside the model's "
        "config.json or in a scheduler/ subfolder (as a pipeline's save_pretrained does), "
        "because the scheduler's config says which noise levels and prediction type the model "
        "was trained with"
    )


def explicit_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config with every key explicit: without diffusers' ``_use_default_values``,
    which makes ``OtherScheduler.from_config(config)`` replace the keys it lists by
    ``OtherScheduler``'s own defaults (e.g. another beta schedule)."""
    return {k: v for k, v in config.items() if k != "_use_default_values"}


def _is_flow(config: Mapping[str, Any], name: str) -> bool:
    return name in FLOW_SCHEDULERS or bool(config.get("use_flow_sigmas"))


def scheduler_table(config: Mapping[str, Any], *, source: str = "scheduler config") -> dict:
    """The training noise levels a scheduler config describes, as a dict:

    - ``kind``: ``"vp"`` or ``"flow"``;
    - ``sigmas``: float64 [N], the VE sigma of each training timestep, increasing with the
      timestep (VP: ``sqrt((1 - abar)/abar)``; flow: ``t/(1 - t)``, the t = 1 entry left out);
    - ``timesteps``: float64 [N], the network's timestep for each of them;
    - ``num_train_timesteps``, ``prediction_type`` and ``timestep_type``.

    ``source`` names the file in error messages. DiffusersModelError for an unknown scheduler
    class, a scheduler without a table of noise levels, or an unknown prediction type."""
    diffusers = _import_diffusers()
    config = explicit_config(config)
    name = config.get("_class_name")
    if name is None and "beta_start" in config:  # a scheduler's .config has no _class_name
        name = "DDPMScheduler"  # (every VP scheduler builds the same table from the betas)
    elif name is None and "shift" in config:
        name = FLOW_SCHEDULERS[0]
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise DiffusersModelError(
            f"{source}: _class_name={name!r} is not a diffusers scheduler class in diffusers "
            f"{diffusers.__version__}; allowed are the DDPM-style (VP) schedulers with a beta "
            "table (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, "
            "DPMSolverMultistepScheduler, ...) and the flow-matching ones "
            f"({', '.join(FLOW_SCHEDULERS)})"
        )
    n = int(config.get("num_train_timesteps", 1000))
    if _is_flow(config, name):
        t = torch.arange(1, n + 1, dtype=torch.float64) / n  # the training t's, increasing
        shift = float(config.get("shift", config.get("flow_shift", 1.0)) or 1.0)
        if not config.get("use_dynamic_shifting"):  # (dynamic: shifted per image size)
            t = shift * t / (1 + (shift - 1) * t)
        t = t[t < 1]  # t = 1 is sigma = inf
        return {
            "kind": "flow",
            "sigmas": t / (1 - t),
            "timesteps": t * n,
            "num_train_timesteps": n,
            "prediction_type": "flow",
            "timestep_type": "discrete",
        }
    try:
        scheduler = cls.from_config(dict(config))
    except Exception as exc:
        raise DiffusersModelError(
            f"{source}: the {name} config could not be built by diffusers "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(abar, Tensor):
        raise DiffusersModelError(
            f"{source}: _class_name={name!r} has no table of noise levels (alphas_cumprod); "
            "allowed are the DDPM-style (VP) schedulers with a beta table (DDPMScheduler, "
            "DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, ...) and the "
            f"flow-matching ones ({', '.join(FLOW_SCHEDULERS)})"
        )
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise DiffusersModelError(
            f"{source}: prediction_type={prediction_type!r} is not supported; allowed are "
            f"{', '.join(PREDICTION_TYPES)} (for a VP scheduler like {name})"
        )
    abar = abar.to(torch.float64).clone()
    if abar[-1] <= 0:  # a zero-terminal-SNR table: diffusers' Euler uses 2**-24 for it
        abar[-1] = _ZERO_SNR_ABAR
    sigmas = ((1 - abar) / abar).sqrt()
    return {
        "kind": "vp",
        "sigmas": sigmas,
        "timesteps": torch.arange(len(sigmas), dtype=torch.float64),
        "num_train_timesteps": n,
        "prediction_type": prediction_type,
        "timestep_type": config.get("timestep_type", "discrete"),
    }


def sigma_to_timestep(sigma: Tensor, table: Mapping[str, Any], mode: str = "interpolate") -> Tensor:
    """The network's timestep for VE noise levels ``sigma`` [B] (float64).

    VP, ``interpolate``: linear interpolation of ln sigma over the table, clipped to its ends
    (diffusers' ``EulerDiscreteScheduler._sigma_to_t``); ``nearest``: the table index nearest
    in ln sigma. ``timestep_type="continuous"`` (EDM-style v-prediction configs): 0.25 ln sigma.
    Flow: ``t * num_train_timesteps`` with ``t = sigma/(1 + sigma)`` (``nearest``: rounded to
    the table's timesteps)."""
    sigma = sigma.to(torch.float64)
    if table["kind"] == "flow":
        t = sigma / (1 + sigma) * table["num_train_timesteps"]
        if mode == "nearest":
            grid = table["timesteps"].to(sigma.device)
            t = grid[(t[:, None] - grid[None, :]).abs().argmin(dim=1)]
        return t
    if table["timestep_type"] == "continuous":
        return 0.25 * sigma.log()
    log_table = table["sigmas"].to(sigma.device).log()  # [N], increasing
    log_sigma = sigma.clamp_min(1e-10).log()
    if mode == "nearest":
        return (log_sigma[:, None] - log_table[None, :]).abs().argmin(dim=1).to(torch.float64)
    n = log_table.shape[0]
    low = torch.searchsorted(log_table, log_sigma, right=True).sub(1).clamp(0, n - 2)
    lo, hi = log_table[low], log_table[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return low.to(torch.float64) + w


# -- the denoiser ------------------------------------------------------------------------------


class DiffusersDenoiser(nn.Module):
    """``D(x, sigma) -> x0_hat`` around a diffusers network (see the module docstring).

    Attributes:
        net: the diffusers network (``UNet2DModel``, ``Transformer2DModel``, ...).
        vae: the pipeline's ``AutoencoderKL`` (latent pipelines) or None.
        kind: ``"vp"`` or ``"flow"``; prediction_type: ``epsilon``, ``v_prediction``,
            ``sample`` or ``flow``.
        sigma_min, sigma_max: the model's own range of VE noise levels (its training table).
        shape: (channels, height, width) of the samples the sampler generates (latents for
            latent pipelines); image_shape: of the images :meth:`decode` returns (= shape
            without a VAE).
        scheduler_config: the model's scheduler config (for the export of schedules).
        labels, guidance_scale, null_label: class conditioning; row j of every batch gets
            ``labels[j % len(labels)]``, with classifier-free guidance ``uncond + w (cond -
            uncond)`` when ``guidance_scale`` is set.
    """

    def __init__(
        self,
        net: nn.Module,
        scheduler_config: Mapping[str, Any],
        *,
        shape: tuple[int, int, int],
        vae: nn.Module | None = None,
        labels: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        null_label: int | None = None,
        timestep_mode: str = "interpolate",
        source: str = "scheduler config",
    ) -> None:
        super().__init__()
        if timestep_mode not in TIMESTEP_MODES:
            raise DiffusersModelError(
                f"timestep_mode must be one of {', '.join(TIMESTEP_MODES)}, but got "
                f"timestep_mode={timestep_mode!r}"
            )
        self.net, self.vae = net.eval(), None if vae is None else vae.eval()
        self.scheduler_config = explicit_config(scheduler_config)
        self.table = scheduler_table(self.scheduler_config, source=source)
        self.kind = self.table["kind"]
        self.prediction_type = self.table["prediction_type"]
        self.timestep_mode = timestep_mode
        self.sigma_min = float(self.table["sigmas"][0])
        self.sigma_max = float(self.table["sigmas"][-1])
        self.shape = tuple(int(v) for v in shape)
        self.image_shape = self.shape if vae is None else _decoded_shape(vae, self.shape)
        self.labels = None if labels is None else tuple(int(v) for v in labels)
        self.guidance_scale = None if guidance_scale is None else float(guidance_scale)
        self.null_label = None if null_label is None else int(null_label)

    def _dtype(self) -> torch.dtype:
        param = next(self.net.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def timestep(self, sigma: Tensor) -> Tensor:
        """The network's timestep for VE noise levels ``sigma`` [B], float64."""
        return sigma_to_timestep(sigma, self.table, self.timestep_mode)

    def _net(self, x_in: Tensor, t: Tensor) -> Tensor:
        """The network's raw output for input ``x_in`` [B, C, H, W] at timesteps ``t`` [B],
        with class labels and classifier-free guidance; float64."""
        dtype, b = self._dtype(), x_in.shape[0]
        x_in, t = x_in.to(dtype), t.to(device=x_in.device, dtype=torch.float32)
        if self.labels is None:
            out = self.net(x_in, t).sample
        else:
            index = torch.arange(b, device=x_in.device) % len(self.labels)
            cond = torch.tensor(self.labels, device=x_in.device)[index]
            if self.guidance_scale is None:
                out = self.net(x_in, t, class_labels=cond).sample
            else:
                null = torch.full_like(cond, self.null_label)
                both = self.net(
                    torch.cat([x_in, x_in]), torch.cat([t, t]), class_labels=torch.cat([cond, null])
                ).sample
                both = both[:, : x_in.shape[1]].double()
                out_c, out_u = both[:b], both[b:]
                return out_u + self.guidance_scale * (out_c - out_u)
        return out[:, : x_in.shape[1]].double()  # a learned-variance output keeps its mean part

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """x0_hat for ``x`` [B, C, H, W] at VE noise levels ``sigma`` (scalar or [B]), in x's
        dtype; the conversion in float64, the network in its own dtype."""
        s = per_example_sigma(sigma, x, torch.float64)  # [B]
        view = (-1,) + (1,) * (x.ndim - 1)
        s_ = s.reshape(view)
        x64 = x.to(torch.float64)
        t = self.timestep(s)
        if self.kind == "flow":
            t_flow = s_ / (1 + s_)  # sigma_flow
            x_t = x64 / (1 + s_)  # (1 - t) x_VE
            out = self._net(x_t, t)  # velocity eps - x0
            return (x_t - t_flow * out).to(x.dtype)
        c_in = 1 / (1 + s_**2).sqrt()  # sqrt(abar)
        out = self._net(x64 * c_in, t)
        if self.prediction_type == "epsilon":
            denoised = x64 - s_ * out
        elif self.prediction_type == "v_prediction":
            denoised = x64 / (1 + s_**2) - s_ * c_in * out
        else:  # sample
            denoised = out
        return denoised.to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, *image_shape] from samples: the VAE's decoder on ``latents /
        scaling_factor + shift_factor`` for latent pipelines; the samples themselves
        otherwise. In the VAE's [-1, 1] range (not clamped), in latents' dtype."""
        if self.vae is None:
            return latents
        config = self.vae.config
        scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
        param = next(self.vae.parameters())
        z = (latents / scale + shift).to(device=param.device, dtype=param.dtype)
        return self.vae.decode(z).sample.to(latents.dtype)

    def check_sigma_range(self, sigmas: Tensor | Sequence[float], *, key: str = "sigmas") -> None:
        """Refuse a schedule (decreasing, last 0) whose positive sigmas leave the model's
        range [sigma_min, sigma_max] by more than a relative 1e-6: a scheduler would clamp
        them silently. SigmaRangeError (one paragraph) naming ``key``."""
        s = validate(sigmas)
        hi, lo = float(s[0]), float(s[-2])
        if hi > self.sigma_max * (1 + _SIGMA_RTOL) or lo < self.sigma_min * (1 - _SIGMA_RTOL):
            raise SigmaRangeError(
                f"{key} must lie within the model's own noise levels, sigma in "
                f"[{self.sigma_min:.6g}, {self.sigma_max:.6g}] (VE sigma of its "
                f"{self.table['num_train_timesteps']}-step {self.kind.upper()} training table), "
                f"but the schedule spans [{lo:.6g}, {hi:.6g}]; a sampler would clamp the "
                f"noise levels outside it and the schedule would not be the one tuned. Use "
                f"sigma_min >= {self.sigma_min:.6g} and sigma_max <= {self.sigma_max:.6g}"
            )

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, prediction_type={self.prediction_type!r}, "
            f"sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}, shape={self.shape}, "
            f"image_shape={self.image_shape}, timestep_mode={self.timestep_mode!r}"
        )


def _decoded_shape(vae: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    config = vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    return (int(config.out_channels), shape[1] * factor, shape[2] * factor)


# -- loading -----------------------------------------------------------------------------------


def _load_network(folder: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    diffusers = _import_diffusers()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DiffusersModelError(
            f"the diffusers model folder {folder} has no config.json: a model folder must "
            "hold the network's config.json and weights (as UNet2DModel.save_pretrained writes "
            "them), or be a pipeline folder with model_index.json and a unet/ or transformer/ "
            "subfolder"
        )
    name = _read_json(config_path).get("_class_name")
    if name not in NETWORKS:
        raise DiffusersModelError(
            f"{config_path}: _class_name={name!r} is not a supported network; allowed are "
            f"{', '.join(NETWORKS)} (unconditional or class-conditional; text-conditioned "
            "networks need their pipeline's encoders)"
        )
    cls = getattr(diffusers, name)
    try:
        net = cls.from_pretrained(
            folder, local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype
        )
    except Exception as exc:
        raise DiffusersModelError(
            f"{folder}: diffusers could not load the {name} weights beside {config_path.name} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return net.to(device).eval().requires_grad_(False)  # (torch_dtype: already in dtype)


def _sample_shape(net: nn.Module, source: Path) -> tuple[int, int, int]:
    config = net.config
    size = getattr(config, "sample_size", None)
    channels = getattr(config, "in_channels", None)
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2):
        raise DiffusersModelError(
            f"{source}: the network's config must give in_channels (an integer) and "
            f"sample_size (an integer or [height, width]), but got in_channels={channels!r}, "
            f"sample_size={size!r}"
        )
    return (channels, int(size[0]), int(size[1]))


def _class_conditioning(
    net: nn.Module,
    labels: Sequence[int] | None,
    guidance_scale: float | None,
    null_label: int | None,
    source: Path,
) -> tuple[Sequence[int] | None, float | None, int | None]:
    config = net.config
    num_classes = getattr(config, "num_class_embeds", None) or getattr(
        config, "num_embeds_ada_norm", None
    )
    if labels is None:
        if num_classes:
            raise DiffusersModelError(
                f"{source}: the network is class-conditional ({num_classes} classes), so it "
                f"needs labels (a list of class indices in [0, {num_classes})), but got "
                "labels=None"
            )
        if guidance_scale is not None:
            raise DiffusersModelError(
                f"guidance_scale={guidance_scale!r} needs a class-conditional network and "
                f"labels, but {source} is unconditional"
            )
        return None, None, None
    labels = [int(v) for v in labels]
    if not num_classes:
        raise DiffusersModelError(
            f"{source}: the network is unconditional (no num_class_embeds), so labels must be "
            f"None, but got labels={labels!r}"
        )
    if not labels or any(not 0 <= v < num_classes for v in labels):
        raise DiffusersModelError(
            f"labels must be a non-empty list of class indices in [0, {num_classes}) for "
            f"{source}, but got labels={labels!r}"
        )
    if guidance_scale is None or float(guidance_scale) == 1.0:
        return labels, None, None
    if not math.isfinite(float(guidance_scale)):
        raise DiffusersModelError(
            f"guidance_scale must be a finite number, but got guidance_scale={guidance_scale!r}"
        )
    if null_label is None and getattr(config, "num_embeds_ada_norm", None):
        null_label = int(config.num_embeds_ada_norm)  # DiT: the extra "no class" embedding
    table_size = num_classes + (1 if getattr(config, "num_embeds_ada_norm", None) else 0)
    if null_label is None or not 0 <= int(null_label) < table_size:
        raise DiffusersModelError(
            f"guidance_scale={guidance_scale} needs the unconditional class, null_label, an "
            f"index in [0, {table_size}) of the network's class embedding, but got "
            f"null_label={null_label!r} (a UNet2DModel has no convention for it: name the "
            "class it was trained to drop labels to)"
        )
    return labels, float(guidance_scale), int(null_label)


def load_diffusers_denoiser(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    labels: Sequence[int] | None = None,
    guidance_scale: float | None = None,
    null_label: int | None = None,
    timestep_mode: str = "interpolate",
) -> DiffusersDenoiser:
    """A local diffusers model folder as ``D(x, sigma) -> x0_hat`` (a :class:`DiffusersDenoiser`).

    ``path`` is an existing directory (never a hub id), either

    - a model folder: the network's ``config.json`` and weights (``UNet2DModel`` or a
      class-conditional ``Transformer2DModel``), with ``scheduler_config.json`` beside them or
      in a ``scheduler/`` subfolder; or
    - a saved pipeline folder: ``model_index.json``, ``unet/`` (or ``transformer/``),
      ``scheduler/``, and ``vae/`` for latent pipelines (an ``AutoencoderKL``, whose
      :meth:`~DiffusersDenoiser.decode` turns samples into images).

    Class-conditional networks take ``labels`` (row j of a batch gets ``labels[j %
    len(labels)]``) and optionally ``guidance_scale`` with ``null_label``. The network runs
    on ``device`` in ``dtype``. DiffusersModelError (a ValueError; one paragraph naming the
    file or key) for anything else."""
    diffusers = _import_diffusers()
    folder = Path(path)
    if not folder.is_dir():
        raise DiffusersModelError(
            f"a diffusers model must be a local folder (a model's or pipeline's "
            f"save_pretrained output), but {str(path)!r} is not an existing directory; "
            "sigmatune reads nothing from a hub: download it first (e.g. "
            "DiffusionPipeline.from_pretrained(ID).save_pretrained(FOLDER)) and give the folder"
        )
    device = torch.device(device)
    index_path = folder / "model_index.json"
    vae = None
    if index_path.is_file():
        index = _read_json(index_path)
        parts = [p for p in ("unet", "transformer") if p in index and (folder / p).is_dir()]
        if not parts:
            raise DiffusersModelError(
                f"{index_path}: a pipeline folder must have a unet/ or transformer/ component "
                f"listed and present, but model_index.json lists {sorted(index)} and the folder "
                f"holds {sorted(p.name for p in folder.iterdir() if p.is_dir())}"
            )
        net_folder = folder / parts[0]
        if "scheduler" not in index or not (folder / "scheduler").is_dir():
            raise DiffusersModelError(
                f"{index_path}: a pipeline folder must have a scheduler/ component (its "
                "scheduler_config.json says which noise levels the model was trained with), "
                f"but model_index.json lists {sorted(index)}"
            )
        if index.get("vae") and (folder / "vae").is_dir():
            try:
                vae = diffusers.AutoencoderKL.from_pretrained(
                    folder / "vae",
                    local_files_only=True,
                    low_cpu_mem_usage=False,
                    torch_dtype=dtype,
                )
            except Exception as exc:
                raise DiffusersModelError(
                    f"{folder / 'vae'}: diffusers could not load the VAE as an AutoencoderKL "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            vae = vae.to(device).eval().requires_grad_(False)
    else:
        net_folder = folder
    config, config_file = read_scheduler_config(folder)
    net = _load_network(net_folder, device, dtype)
    shape = _sample_shape(net, net_folder / "config.json")
    labels, guidance_scale, null_label = _class_conditioning(
        net, labels, guidance_scale, null_label, net_folder / "config.json"
    )
    return DiffusersDenoiser(
        net,
        config,
        shape=shape,
        vae=vae,
        labels=labels,
        guidance_scale=guidance_scale,
        null_label=null_label,
        timestep_mode=timestep_mode,
        source=str(config_file),
    )
