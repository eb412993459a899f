"""Loading untrusted checkpoint files safely and strictly, and writing checkpoints atomically."""

import logging
import pickle
import re
import tarfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from utils.atomic import atomic_output
from utils.errors import UserError

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED_MISMATCHES = 8
# Batch-norm step counters. Checkpoints of older PyTorch versions lack them, and batch norm's
# `_load_from_state_dict` sets them to 0 when the state dict has no version metadata, which the
# prefix-stripped copies loaded here never have. So their absence is no mismatch.
BATCH_COUNTER_SUFFIX = "num_batches_tracked"
# The old DenseNet key names, `denselayer1.norm.1.weight` where torchvision now has
# `denselayer1.norm1.weight`; torchvision's own DenseNet weight files still use them.
LEGACY_DENSENET_KEY = re.compile(r"\.(norm|relu|conv)\.([12])\.")
DAMAGED_FIX = "download or write it again"
# The message of weights_only loading for a global it does not allow. Every pickle that runs code
# must name a function through a GLOBAL, so every such file is rejected with this message.
REJECTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL|unsupported GLOBAL .* is blocked")


def load_checkpoint(path: Path, trust: bool = False, fix: str | None = None) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True`` unless ``trust`` is set.

    ``trust`` allows full unpickling, which can run arbitrary code from the file, so it logs a
    warning and must only be used for files from a trusted source. Raises UserError for a missing,
    damaged or rejected file; ``fix`` replaces the advice at the end of that message.
    """
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; check the path")
    check_format(path, fix)
    check_zip_records(path, fix)
    if trust:
        log.warning("loading %s with full unpickling (--trust-checkpoint): this can run code stored in the file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if not trust and REJECTED_GLOBAL.search(reason):
            raise UserError(
                f"checkpoint {path} contains objects that weights_only loading rejects ({reason}); "
                + (fix or "if you trust its source, pass --trust-checkpoint to unpickle it fully")
            ) from error
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({reason}); {fix or DAMAGED_FIX}") from error
    except Exception as error:  # damaged files make torch.load raise KeyError, IndexError, RuntimeError, EOFError, ValueError, ...
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({_first_line(error)}); {fix or DAMAGED_FIX}") from error
    return obj


def check_format(path: Path, fix: str | None = None) -> None:
    """Raise UserError unless ``path`` starts like a file `torch.save` writes: a zip archive, a pickle or a tar archive.

    For other files `torch.load` reports a bare number such as "(105)".
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(1)
    except OSError as error:
        raise UserError(f"checkpoint {path} cannot be read: {error.strerror or error}; check its permissions") from None
    if head == b"\x80" or zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        return
    state = "empty" if not head else "neither a zip archive nor a pickle"
    raise UserError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file (it is {state}); {fix or DAMAGED_FIX}")


def check_zip_records(path: Path, fix: str | None = None) -> None:
    """Raise UserError when a zip-format checkpoint has a record whose CRC-32 does not match its data.

    `torch.load` does not check the CRC-32 that `torch.save` stores for every record, so a flipped
    byte inside a tensor would load silently as a wrong weight. Records stored with a CRC-32 of
    zero (written with `torch.serialization.set_crc32_options(False)`) cannot be checked. Files in
    the legacy (non-zip) format of PyTorch before 1.6 are left to `torch.load`.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC == 0:
                    continue
                with archive.open(record) as stream:
                    while stream.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise UserError(f"checkpoint {path} is corrupt ({_first_line(error)}); {fix or DAMAGED_FIX}") from error


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """Return the unpickler's own message, which torch.load chains under a long text of advice.

    For example "Unsupported global: GLOBAL io.open was not an allowed global by default" for a
    file that would run code, or "Unsupported operand 0" for bytes that are no pickle at all.
    """
    inner = error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else error
    return _first_line(inner).split(". ")[0]


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
        raise UserError(f"checkpoint {path} contains no state dict (expected tensors under 'state_dict', 'model' or at the top level)")
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
    """Load weights into ``model`` or raise an error listing the first key and shape mismatches.

    Only the batch-norm counters `num_batches_tracked` may be missing, because `load_state_dict`
    sets them to 0 (see BATCH_COUNTER_SUFFIX).
    """
    state_dict = strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(BATCH_COUNTER_SUFFIX)]
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
        advice = "Check that the architecture and the number of classes match the checkpoint"
        if any(LEGACY_DENSENET_KEY.search(key) for key in unexpected):
            advice = (
                "The checkpoint uses the old DenseNet key names of torchvision; rename keys such as "
                "norm.1, relu.1 and conv.1 to norm1, relu1 and conv1 (likewise for .2), save it again and pass the new file"
            )
        raise UserError(f"weights in {source} do not match the network {type(model).__name__}; " + "; ".join(lines) + f". {advice}")
    model.load_state_dict(state_dict, strict=True)


def save_atomically(obj, path: Path) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A run killed mid-write leaves the previous file intact and at most a stray temporary file. A
    failed write, such as on a full disk, raises UserError and also leaves the previous file.
    """
    with atomic_output(path, "wb") as stream:
        torch.save(obj, stream)
