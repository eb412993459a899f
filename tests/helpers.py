"""Shared test utilities: real photos, tiny dataset trees and tree fingerprints."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import skimage
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PYTHON = sys.executable

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MATPLOTLIB_DATA = Path(matplotlib.get_data_path()) / "sample_data"

# Real photos bundled with scikit-image and matplotlib, with the ImageNet-1k classes they show.
PHOTOS = {
    "chelsea": (SKIMAGE_DATA / "chelsea.png", {281, 282, 283, 284, 285}),  # tabby cat: the cat classes
    "coffee": (SKIMAGE_DATA / "coffee.png", {967}),  # espresso
    "rocket": (SKIMAGE_DATA / "rocket.jpg", {657, 744, 812}),  # missile, projectile, space shuttle
    "grace_hopper": (MATPLOTLIB_DATA / "grace_hopper.jpg", {652}),  # military uniform
}


def photo(name: str) -> Image.Image:
    """Return one of the real photos as an RGB image."""
    return Image.open(PHOTOS[name][0]).convert("RGB")


def photo_crops(count: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """Return ``count`` small real-image crops (distinct pixels) cut from the bundled photos."""
    rng = np.random.default_rng(seed)
    sources = [photo(name) for name in PHOTOS]
    crops = []
    for index in range(count):
        image = sources[index % len(sources)]
        left = int(rng.integers(0, image.width - size))
        top = int(rng.integers(0, image.height - size))
        crops.append(image.crop((left, top, left + size, top + size)))
    return crops


def write_jpeg(path: Path, image: Image.Image, quality: int = 90) -> Path:
    """Save ``image`` as a JPEG at ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Map every file, folder and link under ``root`` to a digest of its content, mode and link target."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            relative = path.relative_to(root).as_posix()
            stat = os.lstat(path)
            if path.is_symlink():
                digest[relative] = "link:" + os.readlink(path)
            elif path.is_dir():
                digest[relative] = f"dir:{stat.st_mode:o}"
            else:
                digest[relative] = f"{stat.st_mode:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def run_script(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a project script or module with the test interpreter and capture its output."""
    merged = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([PYTHON, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=merged)
