"""Benchmarks 1 and 2: the validation pass's input pipeline and the whole pass, against the ImageNet example.

Both sides run the same DataLoader settings (batch size, worker processes) over the same
generated JPEG tree. The project side is the real code: `make_validation_loader` with
`EvalTransform`, `normalize_batch` per batch, and `run_validation_pass` for benchmark 2.
The outcome check compares the two preprocessings on real photos with EfficientNet-Lite0.
"""

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from bench import baselines
from bench.common import Result, run_side_by_side
from bench.inputs import PHOTO_FILES
from utils.distributed import DistributedContext
from utils.image_decoding import BatchNormalizer, EvalTransform, Preprocessing, normalize_batch
from utils.layouts import split_from_class_folders
from utils.networks import IMAGENET_MEAN, IMAGENET_STD, PretrainedNetwork, load_network
from utils.validation_pass import label_indices, make_validation_loader, run_validation_pass

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
PREPROCESSING = Preprocessing(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
OUTPUTS = 1000


def project_input_rate(folder: Path, batch_size: int, workers: int) -> float:
    """Return the images per second of one pass of the project's validation loader plus batch normalization."""
    split = split_from_class_folders(folder.parent, folder)
    start = time.perf_counter()
    loader = make_validation_loader(PREPROCESSING, split, list(range(len(split))), CPU, batch_size, workers)
    normalize = BatchNormalizer(PREPROCESSING.mean, PREPROCESSING.std, CPU, reuse_output=True)
    count = 0
    for images, _, ok, _ in loader:
        batch = normalize(images if ok.all() else images[ok])
        count += len(batch)
    return count / (time.perf_counter() - start)


def bench_input_pipeline(folder: Path, label: str, minimum: float, batch_size: int, workers: int, repeats: int) -> Result:
    """Benchmark 1: decode, resize, crop and normalize, in images per second."""
    rates = run_side_by_side({
        "baseline": lambda: baselines.input_pipeline_rate(folder, batch_size, workers),
        "project": lambda: project_input_rate(folder, batch_size, workers),
    }, repeats)
    images = sum(1 for _ in folder.rglob("*.jpg"))
    return Result(
        key=f"input_pipeline_{label}",
        title=f"1. Validation input pipeline, {label} JPEGs",
        unit="images/s",
        project=rates["project"],
        baseline=rates["baseline"],
        baseline_name="ImageNet example: PIL, Resize(256), CenterCrop(224), ToTensor, Normalize",
        details={"images": images, "batch_size": batch_size, "workers": workers},
    ).check_ratio(minimum)


def random_network(class_names: list[str], seed: int = 0) -> PretrainedNetwork:
    """Return mobilenet_v3_small with seeded random weights, 1,000 outputs, as a network of the validation pass."""
    torch.manual_seed(seed)
    module = torchvision.models.mobilenet_v3_small(num_classes=len(class_names)).eval()
    return PretrainedNetwork(module, class_names, PREPROCESSING, {"kind": "benchmark", "model": "mobilenet_v3_small"})


def output_names(folder: Path) -> list[str]:
    """Name 1,000 outputs so that the first ones are the class folders of ``folder``."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return classes + [f"unused{i:04d}" for i in range(len(classes), OUTPUTS)]


def project_validation_rate(network: PretrainedNetwork, folder: Path, batch_size: int, workers: int, device: torch.device = CPU) -> float:
    """Return the images per second of `run_validation_pass` over ``folder``."""
    split = split_from_class_folders(folder.parent, folder)
    labels, _ = label_indices(split, network.class_names, skip_unknown=False)
    start = time.perf_counter()
    outcomes = run_validation_pass(network, split, labels, device, DistributedContext(), batch_size, workers, topk=5)
    return len(outcomes) / (time.perf_counter() - start)


def bench_validation_pass(folder: Path, label: str, batch_size: int, workers: int, repeats: int) -> Result:
    """Benchmark 2: the whole validation pass with mobilenet_v3_small (random weights), images per second.

    The batch-norm statistics are measured on 64 of the images first (see
    `calibrated_random_network`), so the activations are scaled like a trained network's.
    """
    network = calibrated_random_network(sorted(folder.rglob("*.jpg"))[:64])
    network.class_names = output_names(folder)
    # The project's pass converts its network to channels-last memory; the baseline keeps its own copy as built.
    baseline_module = copy.deepcopy(network.module)
    rates = run_side_by_side({
        "baseline": lambda: baselines.validate_rate(baseline_module, folder, batch_size, workers),
        "project": lambda: project_validation_rate(network, folder, batch_size, workers),
    }, repeats)
    return Result(
        key="validation_pass",
        title=f"2. Validation pass, mobilenet_v3_small (random weights), {label} JPEGs",
        unit="images/s",
        project=rates["project"],
        baseline=rates["baseline"],
        baseline_name="ImageNet example's validate loop over the same loader as benchmark 1",
        details={"images": sum(1 for _ in folder.rglob("*.jpg")), "batch_size": batch_size, "workers": workers,
                 "torch_threads": torch.get_num_threads()},
    ).check_ratio(1.5)


def calibrated_random_network(paths: list[Path]) -> PretrainedNetwork:
    """Return the random-weights mobilenet_v3_small with batch-norm statistics measured on ``paths``.

    With the initial statistics (mean 0, variance 1) its outputs hardly depend on the input, so
    agreement between two preprocessings would be meaningless.
    """
    network = random_network([f"output{i}" for i in range(OUTPUTS)])
    transform = baselines.eval_transform(PREPROCESSING.mean, PREPROCESSING.std)
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    for module in network.module.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    network.module.train()
    with torch.no_grad():
        network.module(batch)
    network.module.eval()
    return network


def predict(network: PretrainedNetwork, paths: list[Path], project: bool) -> np.ndarray:
    """Return the softmax probabilities of ``network`` for each file, with the project's or the baseline's preprocessing."""
    preprocessing = network.preprocessing
    if project:
        transform = EvalTransform(preprocessing)
        batch = torch.stack([transform(path) for path in paths])
        inputs = normalize_batch(batch, preprocessing.mean, preprocessing.std, CPU, channels_last=False)
    else:
        transform = baselines.eval_transform(preprocessing.mean, preprocessing.std, preprocessing.resize, preprocessing.crop)
        inputs = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.inference_mode():
        chunks = [network.module(chunk).softmax(dim=1) for chunk in inputs.split(32)]
    return torch.cat(chunks).numpy()


def compare_predictions(network: PretrainedNetwork, paths: list[Path]) -> dict:
    """Compare the top-1, top-5 and probabilities of the two preprocessings on the same files."""
    ours, theirs = predict(network, paths, project=True), predict(network, paths, project=False)
    top5_ours = np.argsort(-ours, axis=1)[:, :5]
    top5_theirs = np.argsort(-theirs, axis=1)[:, :5]
    overlap = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top5_ours, top5_theirs)]
    return {
        "images": len(paths),
        "top1_agreement": float(np.mean(top5_ours[:, 0] == top5_theirs[:, 0])),
        "min_top5_overlap": int(min(overlap)),
        "max_probability_difference": float(np.abs(ours - theirs).max()),
        "top1_project": top5_ours[:, 0].tolist(),
        "top1_baseline": top5_theirs[:, 0].tolist(),
    }


def check_outcomes(jpeg_folders: dict[str, Path], images_per_size: int) -> Result:
    """Check that the fast preprocessing keeps outcomes: real photos and generated JPEGs.

    Target: on the four real photos, EfficientNet-Lite0's top-1 is identical and its top-5 shares
    at least 4 classes. The agreement on generated JPEGs, with EfficientNet-Lite0 and with a
    random-weights mobilenet_v3_small, is reported without a target.
    """
    lite = load_network("efficientnet_lite0", None)
    photos = compare_predictions(lite, list(PHOTO_FILES.values()))
    photos["photos"] = list(PHOTO_FILES)
    generated = {}
    for label, folder in jpeg_folders.items():
        paths = sorted(folder.rglob("*.jpg"))[:images_per_size]
        random_weights = calibrated_random_network(paths)
        lite_figures = compare_predictions(lite, paths)
        random_figures = compare_predictions(random_weights, paths)
        generated[label] = {
            "images": len(paths),
            "efficientnet_lite0_top1_agreement": lite_figures["top1_agreement"],
            "efficientnet_lite0_max_probability_difference": lite_figures["max_probability_difference"],
            "random_mobilenet_v3_small_top1_agreement": random_figures["top1_agreement"],
            "random_mobilenet_v3_small_max_probability_difference": random_figures["max_probability_difference"],
        }
    passed = photos["top1_agreement"] == 1.0 and photos["min_top5_overlap"] >= 4
    return Result(
        key="outcomes",
        title="1. Outcomes of the fast preprocessing, EfficientNet-Lite0 on 4 real photos",
        unit="max probability difference",
        project=[photos["max_probability_difference"]],
        target="identical top-1, top-5 overlap >= 4",
        passed=passed,
        details={"photos": photos, "generated": generated},
    )
