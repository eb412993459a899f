"""Benchmark 6 (CUDA only): ResNet-50 validation pass with CPU against GPU JPEG decoding, and a ResNet18
training epoch at 224x224 in fp32 against bf16 autocast with channels-last memory.

The CPU-decoding side of the validation pass is the project's `run_validation_pass`. The GPU side
is written here: DataLoader workers only read the file bytes, `torchvision.io.decode_jpeg` decodes
each batch on the GPU, and torch resizes, crops and normalizes there with the same geometry and
antialiasing as `EvalTransform`. Training uses the project's `make_training_data` and
`train_one_epoch` with the two `Precision` settings that the training scripts choose between.

NOTE: this module has only been run on the CPU (``device="cpu"``) with a few images; its CUDA path
has not been run. Without a GPU, `bench_gpu` returns one result whose details record that.
"""

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset

from bench.common import Result, run_side_by_side
from bench.inputs import write_jpeg_tree
from bench.pipeline import output_names, PREPROCESSING, project_validation_rate
from bench.training import fresh_resnet18
from utils.distributed import DistributedContext
from utils.image_decoding import BatchNormalizer, center_crop_offset, resized_size
from utils.layouts import split_from_class_folders
from utils.networks import PretrainedNetwork
from utils.train_data import DatasetSource, Preprocessing, make_training_data
from utils.train_loop import Precision, train_one_epoch

log = logging.getLogger(__name__)


class JpegFiles(Dataset):
    """The bytes of each file of a split.

    Workers send them as bytearrays, pickled by value: as hundreds of small tensors per batch they
    would each travel as a shared-memory file descriptor, and run out of descriptors.
    """

    def __init__(self, root: Path, files: list[str]):
        self.paths = [str(root / name) for name in files]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> bytearray:
        with open(self.paths[index], "rb") as stream:
            return bytearray(stream.read())


def keep_list(batch: list[bytearray]) -> list[bytearray]:
    """Collate the encoded files of a batch as a list, since they differ in length."""
    return batch


def resize_and_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize a uint8 CHW image (shorter side to ``resize``, antialiased bilinear) and center-crop it."""
    new_width, new_height = resized_size(image.shape[2], image.shape[1], resize)
    resized = F.interpolate(image.unsqueeze(0), size=(new_height, new_width), mode="bilinear", antialias=True)[0]
    top, left = center_crop_offset(new_height, crop), center_crop_offset(new_width, crop)
    return resized[:, top:top + crop, left:left + crop]


def gpu_decode_validation_rate(network: PretrainedNetwork, folder: Path, device: torch.device, batch_size: int, workers: int) -> float:
    """Return the images per second of a validation pass whose JPEGs are decoded on ``device``."""
    split = split_from_class_folders(folder.parent, folder)
    model = network.module.to(device).eval().to(memory_format=torch.channels_last)
    normalize = BatchNormalizer(PREPROCESSING.mean, PREPROCESSING.std, device, channels_last=True)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    loader = DataLoader(JpegFiles(split.root, split.files), batch_size=batch_size, num_workers=workers, collate_fn=keep_list,
                        pin_memory=device.type == "cuda")
    start = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for encoded in loader:
            data = [torch.frombuffer(buffer, dtype=torch.uint8) for buffer in encoded]
            decoded = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device)
            batch = torch.stack([resize_and_crop(image, PREPROCESSING.resize, PREPROCESSING.crop) for image in decoded])
            with autocast:
                logits = model(normalize(batch))
            logits.float().softmax(dim=1).topk(5, dim=1)
            count += len(encoded)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def train_epoch_rate(root: Path, precision: Precision, device: torch.device, batch_size: int, workers: int) -> float:
    """Return the images per second of one project training epoch of ResNet18 at 224x224."""
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    model = fresh_resnet18(classes).to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)
    context = DistributedContext()
    data = make_training_data(DatasetSource(root.name, root), Preprocessing(224, 256), batch_size, workers, context, device, seed=0)
    data.set_epoch(1)
    start = time.perf_counter()
    metrics = train_one_epoch(model, data.train_loader, optimizer, scaler, precision, device, 1, context)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return metrics.images / (time.perf_counter() - start)


def no_gpu_result() -> Result:
    """Return the record of a run without a CUDA GPU."""
    return Result("gpu", "6. GPU: validation pass and training with a CUDA GPU", "images/s", [],
                  target="training: bf16 autocast + channels-last >= 2x fp32", passed=None,
                  details={"gpu": None, "note": "no CUDA GPU on this machine; run `python -m bench --only gpu --out DIR` on one"})


def bench_gpu(work: Path, images: int, train_images: int, batch_size: int, workers: int, repeats: int,
              device: torch.device | None = None) -> list[Result]:
    """Benchmark 6 on ``device`` (the first CUDA GPU by default); without one, a single 'no GPU' result."""
    if device is None:
        if not torch.cuda.is_available():
            return [no_gpu_result()]
        device = torch.device("cuda", 0)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    per_class = max(1, images // 10)
    val = write_jpeg_tree(work / "gpu-val" / "val", [(500, 375), (375, 500), (1024, 768)], per_class, 10, parallel=True)
    train_root = work / "gpu-train"
    write_jpeg_tree(train_root / "train", [(500, 375), (375, 500)], max(1, train_images // 10), 10, parallel=True)
    write_jpeg_tree(train_root / "val", [(500, 375)], 2, 10, parallel=True)

    torch.manual_seed(0)
    module = torchvision.models.resnet50(num_classes=1000)
    network = PretrainedNetwork(module, output_names(val), PREPROCESSING, {"kind": "benchmark", "model": "resnet50"})
    validation = run_side_by_side({
        "cpu_decode": lambda: project_validation_rate(network, val, batch_size, workers, device),
        "gpu_decode": lambda: gpu_decode_validation_rate(network, val, device, batch_size, workers),
    }, repeats)
    training = run_side_by_side({
        "fp32": lambda: train_epoch_rate(train_root, Precision(device.type), device, batch_size, workers),
        "bf16_channels_last": lambda: train_epoch_rate(train_root, Precision(device.type, torch.bfloat16, True), device, batch_size, workers),
    }, repeats)
    details = {"gpu": card, "batch_size": batch_size, "workers": workers}
    return [
        Result("gpu_validation_decode", f"6. ResNet-50 validation pass on {card}: GPU against CPU JPEG decoding", "images/s",
               validation["gpu_decode"], validation["cpu_decode"], "the project's validation pass, JPEGs decoded by CPU workers",
               details=dict(details, images=per_class * 10)),
        Result("gpu_training_amp", f"6. ResNet18 training epoch at 224 on {card}: bf16 autocast + channels-last against fp32", "images/s",
               training["bf16_channels_last"], training["fp32"], "the project's training loop in fp32, contiguous memory",
               details=dict(details, images=max(1, train_images // 10) * 10)).check_ratio(2.0),
    ]
