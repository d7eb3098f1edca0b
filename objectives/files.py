"""Writing tensors to files so that a failed write says why.

``torch.save`` into an open file turns the file's ``OSError`` (a full disk, no permission)
into a ``RuntimeError`` that names neither the cause nor the file; :func:`torch_save` raises
the ``OSError`` itself, for the callers that write atomically and report the file
(``models.training`` checkpoints and model files, ``objectives.fid``'s scorer cache).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["torch_save"]


def torch_save(obj: Any, f: Any) -> None:
    """``torch.save`` into the open binary file ``f``; a write that fails raises its own
    ``OSError``."""
    failed: list[OSError] = []

    class _File:
        def write(self, data: Any) -> int:
            try:
                return f.write(data)
            except OSError as exc:
                failed.append(exc)
                raise

        def flush(self) -> None:
            f.flush()

    try:
        torch.save(obj, _File())
    except RuntimeError:
        if failed:
            raise failed[0] from None
        raise
