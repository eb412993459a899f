"""Shared pieces of the reliability tests: a tiny network, odd image files, runs in and out of process.

RescaleDataset.py runs in-process through `run_main` wherever exit codes and stderr do not matter,
with a small untrained CNN for 28x28 images as its network. Its class names are the folder names
of the Fashion-MNIST trees of `tests.fashion_trees`, so labels are matched by name as with a
real network, and a pass over a few dozen images takes well under a second.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import build_model
from tests.fashion_trees import CLASS_NAMES
from tests.helpers import PYTHON, REPO, photo, tree_digest
from utils.checkpoints import save_atomically
from utils.cli import run_main

NETWORK_ARCH = "fashion_mnist_cnn"
# One thread per process: the test machine is small and shared.
THREADS_ENV = {"OMP_NUM_THREADS": "1"}
EXIF_ORIENTATION = 0x0112


def write_network(path: Path, class_names=CLASS_NAMES, seed: int = 0, favour: str | None = None) -> Path:
    """Write an untrained `fashion_mnist_cnn` checkpoint in the training scripts' format.

    ``favour`` names a class whose output bias is raised so far that every image is predicted as
    that class, which makes every image of the other classes a misclassified one.
    """
    torch.manual_seed(seed)
    model = build_model(NETWORK_ARCH, len(class_names))
    state = model.state_dict()
    if favour is not None:
        state["classifier.bias"][list(class_names).index(favour)] = 1000.0
    save_atomically({
        "model": state, "arch": NETWORK_ARCH, "num_classes": len(class_names), "class_names": list(class_names),
        "image_size": 28, "resize_size": 28, "mean": [0.286] * 3, "std": [0.353] * 3,
    }, path)
    return path


def rescale(*args) -> int:
    """Run RescaleDataset.py in this process and return its exit status."""
    return run_main(_rescale_main, [str(arg) for arg in args])


def _rescale_main(argv):
    from utils.rescale import main

    return main(argv)


def rescale_args(root: Path, results: Path, out: Path, network: Path, *extra) -> list[str]:
    """Return the flags of a small, fast RescaleDataset.py run on an ImageFolder tree."""
    return [
        "--dataset", "ImageFolder", "--data", str(root), "--model", str(network), "--results", str(results),
        "--out", str(out), "--prefix", "ReFM", "--workers", "0", "--device", "cpu", "--random-baselines", "5",
        *map(str, extra),
    ]


def without_lock(folder: Path) -> dict[str, str]:
    """Return the tree digest of ``folder`` without its lock files, which record process ids."""
    return {path: digest for path, digest in tree_digest(folder).items() if Path(path).name != ".lock"}


def odd_images(folder: Path) -> dict[str, str]:
    """Write one image file of each awkward kind into ``folder``; return file name -> expected outcome.

    The outcome is 'unreadable' or the kind of image it must decode to. Every image is a 40x60
    crop of a real photo, so a readable one can be compared with the original pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    original = reference_photo()
    original.save(folder / "plain.JPEG", quality=95)
    data = (folder / "plain.JPEG").read_bytes()
    (folder / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (folder / "empty.JPEG").write_bytes(b"")
    original.save(folder / "really_png.JPEG", format="PNG")
    original.convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG", quality=95)
    original.convert("L").save(folder / "gray.JPEG", format="JPEG", quality=95)
    sixteen = np.asarray(original.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(folder / "sixteen_bit.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 90 degrees counter-clockwise: viewers rotate it clockwise
    original.save(folder / "rotated.JPEG", quality=95, exif=exif.tobytes())
    return {
        "plain.JPEG": "rgb", "truncated.JPEG": "unreadable", "empty.JPEG": "unreadable", "really_png.JPEG": "rgb",
        "cmyk.JPEG": "rgb", "gray.JPEG": "gray", "sixteen_bit.png": "gray", "rotated.JPEG": "rotated",
    }


def reference_photo() -> Image.Image:
    """Return the 60x40 RGB crop of a real photo that `odd_images` writes in every format."""
    return photo("chelsea").crop((100, 60, 160, 100))


def expected_pixels(kind: str) -> np.ndarray:
    """Return the RGB pixels an odd image of ``kind`` ('rgb', 'gray', 'rotated') must decode to."""
    original = reference_photo()
    if kind == "gray":
        return np.asarray(original.convert("L").convert("RGB"))
    if kind == "rotated":
        return np.asarray(original.transpose(Image.Transpose.ROTATE_270))
    return np.asarray(original)


def start(code: str, *args, stderr=subprocess.DEVNULL, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``python -c code args...`` in the repository, with one thread per process."""
    merged = dict(os.environ, PYTHONUNBUFFERED="1", **THREADS_ENV, **(env or {}))
    return subprocess.Popen([PYTHON, "-c", code, *map(str, args)], cwd=REPO, env=merged,
                            stdout=subprocess.DEVNULL, stderr=stderr, **popen)


def wait_for(condition, child: subprocess.Popen, timeout: float = 120, what: str = "the condition") -> None:
    """Poll ``condition()`` until it holds; fail if ``child`` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"the child process ended with status {child.returncode} before {what}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(child: subprocess.Popen) -> None:
    """SIGKILL a child process and wait for it."""
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL


def count_files(folder: Path) -> int:
    """Count the files below ``folder`` (0 when it does not exist)."""
    return sum(len(files) for _, _, files in os.walk(folder))


def assert_clean_failure(result: subprocess.CompletedProcess, status: int = 1) -> None:
    """Check that a script failed with ``status`` and printed no traceback."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
