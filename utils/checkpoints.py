"""Loading untrusted checkpoint files safely and strictly, and writing checkpoints atomically."""

import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED_MISMATCHES = 8


def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True`` unless ``trust`` is set.

    ``trust`` allows full unpickling, which can run arbitrary code from the file, so it logs a
    warning and must only be used for files from a trusted source.
    """
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; check the path")
    if trust:
        log.warning("loading %s with full unpickling (--trust-checkpoint): this can run code stored in the file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if not trust:
            raise UserError(
                f"checkpoint {path} holds objects that weights_only loading rejects ({_first_line(error)}); "
                "if you trust its source, pass --trust-checkpoint to unpickle it fully"
            ) from error
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch file: {_first_line(error)}") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, ModuleNotFoundError) as error:
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({_first_line(error)}); download or write it again") from error
    return obj


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Return the weights of a checkpoint: a bare state dict or the value of 'state_dict'/'model'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no state dict (expected tensors under 'state_dict', 'model' or at the top level)")
    return obj


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the key prefixes added by DataParallel/DistributedDataParallel and torch.compile."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        cleaned[key] = value
    return cleaned


def load_state_dict_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights into ``model`` or raise an error listing the first key and shape mismatches."""
    state_dict = strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        lines = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:MAX_LISTED_MISMATCHES])
                more = f" and {len(items) - MAX_LISTED_MISMATCHES} more" if len(items) > MAX_LISTED_MISMATCHES else ""
                lines.append(f"{len(items)} {title}: {shown}{more}")
        raise UserError(
            f"weights in {source} do not match the network {type(model).__name__}; " + "; ".join(lines)
            + ". Check that the architecture and the number of classes match the checkpoint"
        )
    model.load_state_dict(state_dict, strict=True)


def save_atomically(obj, path: Path) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A run killed mid-write leaves the previous file intact and at most a stray temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
