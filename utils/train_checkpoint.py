"""Checkpoints of the training runs, and loading a trained run as a ready-to-use network.

Each run folder ``<checkpoints>/<arch>_<subset>/`` contains ``last.pth`` (written after every epoch)
and ``best.pth`` (written when validation top-1 improves). Both store one dict, saved with
``torch.save``, that `utils.checkpoints.load_checkpoint` reads with ``weights_only=True``:

============== ==============================================================================
key            value
============== ==============================================================================
version        format version, currently 1
model          network state dict, without ``module.`` or ``_orig_mod.`` key prefixes
arch           architecture name, a key of `models.ARCHITECTURES`
num_classes    number of network outputs
class_names    class folder names in output order (output i is class_names[i])
image_size     side in pixels of the training and validation crop
resize_size    side in pixels of the shorter edge after the validation resize
mean, std      per-channel normalization of RGB inputs scaled to [0, 1]
optimizer      SGD state dict
lr_scheduler   StepLR state dict
scaler         GradScaler state dict (empty unless fp16 was used)
epoch          number of completed epochs
best_top1      best validation top-1 accuracy so far, in percent
history        one dict of metrics per completed epoch, the rows of log.csv
config         every command-line flag, paths as strings, ``seed`` the seed actually used,
               ``trained_channels_last`` the memory format the run trains in
rng            RNG states of process 0 when the file was written: ``torch`` (uint8 tensor),
               ``cuda`` (list of uint8 tensors), ``numpy`` and ``python`` (plain lists and
               numbers). They are restored on resume, but each epoch then reseeds from
               (seed, epoch, rank).
============== ==============================================================================

To use a trained network: ``build_model(arch, num_classes)``, load ``model`` strictly, and feed
images resized to ``resize_size``, center-cropped to ``image_size`` and normalized with ``mean``
and ``std``. `load_trained_network` does all three.
"""

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import build_model
from utils.checkpoints import load_checkpoint, load_state_dict_strictly, save_atomically, strip_wrapper_prefixes
from utils.errors import UserError
from utils.train_data import Preprocessing

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "last.pth"
REQUIRED_KEYS = ("model", "arch", "num_classes", "class_names", "image_size", "resize_size", "mean", "std")
TRAINING_KEYS = ("optimizer", "lr_scheduler", "scaler", "epoch", "best_top1", "history", "config", "rng")


def capture_rng_state() -> dict:
    """Return the torch, CUDA, NumPy and Python RNG states as values that ``weights_only`` loading accepts."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(python_state), gauss_next],
    }


def restore_rng_state(state: dict) -> None:
    """Restore RNG states captured by `capture_rng_state`; CUDA states only when CUDA is present."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))


def seed_everything(seed: int) -> None:
    """Seed the torch (CPU and CUDA), NumPy and Python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derive_seed(*keys: int) -> int:
    """Mix integers such as (seed, epoch, rank) into one 31-bit seed, so nearby keys give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] >> 1)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the network inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the weights of ``model`` without wrapper prefixes, on the CPU."""
    state = unwrap_model(model).state_dict()
    return {key: value.detach().cpu() for key, value in strip_wrapper_prefixes(state).items()}


def save_run_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write a run checkpoint atomically: a temporary file beside ``path``, then a rename."""
    save_atomically(checkpoint, path)


def load_run_checkpoint(path: Path, training: bool = True) -> dict:
    """Load a run checkpoint with ``weights_only=True`` and check that it has the keys of this format."""
    checkpoint = load_checkpoint(path, fix="delete it or pass --restart to train the run again")
    required = REQUIRED_KEYS + (TRAINING_KEYS if training else ())
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a checkpoint of the training scripts (missing {', '.join(missing)}); "
                        "delete it or pass --restart to train the run again")
    return checkpoint


@dataclass
class TrainedNetwork:
    """A network loaded from a run checkpoint, in evaluation mode on the CPU, with its class names and preprocessing."""

    model: nn.Module
    arch: str
    class_names: list[str]
    preprocessing: Preprocessing


def load_trained_network(path: Path) -> TrainedNetwork:
    """Build the network stored in the run checkpoint ``path`` and load its weights strictly."""
    return network_from_checkpoint(load_run_checkpoint(path, training=False), str(path))


def network_from_checkpoint(checkpoint: dict, source: str) -> TrainedNetwork:
    """Build the network a loaded run checkpoint describes and load its weights strictly."""
    model = build_model(checkpoint["arch"], checkpoint["num_classes"])
    load_state_dict_strictly(model, checkpoint["model"], source)
    model.eval()
    preprocessing = Preprocessing(
        image_size=int(checkpoint["image_size"]),
        resize_size=int(checkpoint["resize_size"]),
        mean=tuple(checkpoint["mean"]),
        std=tuple(checkpoint["std"]),
    )
    return TrainedNetwork(model, checkpoint["arch"], list(checkpoint["class_names"]), preprocessing)
