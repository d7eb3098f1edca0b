"""Self-describing model files: the EMA weights plus what rebuilds the denoiser.

A model file is a ``torch.save`` of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``; sigmatune never loads a file any other way, and a file
that needs more (a pickle of arbitrary objects, which could run code) is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from sigmatune.models.denoiser import Denoiser
from sigmatune.models.networks import make_network
from sigmatune.models.training import save_atomically

MODEL_FILE_SCHEMA = 1
REQUIRED_KEYS = (
    "network",
    "network_params",
    "shape",
    "parameterisation",
    "sigma_data",
    "state_dict",
)


class ModelFileError(ValueError):
    """A file that is not a loadable sigmatune model file."""


def save_model_file(
    path: Path,
    *,
    net: torch.nn.Module,
    network: str,
    network_params: dict[str, Any],
    shape: tuple[int, ...],
    parameterisation: str,
    sigma_data: float,
    dataset: str,
    nimg: int,
) -> None:
    """Write a model file atomically (a temporary file in the same folder, then a rename)."""
    payload = {
        "sigmatune:model_file": MODEL_FILE_SCHEMA,
        "network": network,
        "network_params": dict(network_params),
        "shape": list(shape),
        "parameterisation": parameterisation,
        "sigma_data": float(sigma_data),
        "dataset": dataset,
        "nimg": int(nimg),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    save_atomically(payload, path)


def refused_global(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused (e.g. "GLOBAL posix.system"), without
    torch's own advice, which is to load the file unsafely."""
    found = re.search(r"GLOBAL [\w.]+", str(exc))
    return f"it asks for {found.group(0)}" if found else "objects torch's safe loader refuses"


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The checked contents of a model file (cheap: no network is built). Raises
    ``FileNotFoundError`` or :class:`ModelFileError` with one clear paragraph."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"checkpoint {where!r} {what}; pass a model file written by `sigmatune run` "
            "(`sigmatune status` lists them) or a module:function denoiser"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"checkpoint {where!r} is not a model file written by sigmatune (not a torch.save "
            "archive); pass the model.pt of a trial or a module:function denoiser"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"checkpoint {where!r} holds Python objects beyond tensors and plain values "
            f"({refused_global(exc)}), so sigmatune refuses to load it: loading it could run "
            "code. Pass a model file written by `sigmatune run`, or wrap your model as a "
            "module:function denoiser"
        ) from None
    except Exception as exc:  # truncated or corrupt archives
        first = (str(exc).strip().splitlines() or [""])[0]
        if "weights_only" in first:  # torch's advice to load unsafely is never passed on
            first = refused_global(exc)
        raise ModelFileError(
            f"checkpoint {where!r} cannot be read ({type(exc).__name__}: {first})"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ModelFileError(
            f"checkpoint {where!r} is not a sigmatune model file (it lacks {', '.join(missing)}); "
            "pass the model.pt of a trial or a module:function denoiser"
        )
    return payload


def load_model_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild the denoiser a model file describes (see :func:`read_model_file`)."""
    payload = read_model_file(path)
    shape = tuple(int(s) for s in payload["shape"])
    try:
        net = make_network(payload["network"], payload["network_params"], shape)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(
            f"checkpoint {str(path)!r} does not rebuild its network "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    net.eval().to(device)
    denoiser = Denoiser(net, payload["parameterisation"], payload["sigma_data"])
    return denoiser, payload
