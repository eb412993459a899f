"""Loading pretrained networks: torchvision downloads, CSAIL-style checkpoints, bundled weights, unsafe files."""

import socket
import threading

import pytest
import torch
import torchvision

from utils.class_names import imagenet_wnids, places365_categories
from utils.errors import UserError
from utils.networks import load_network


class ClosingServer:
    """A local TCP server that closes every connection at once: the internet as seen offline."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.port = self.socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            connection.close()

    def close(self):
        self.socket.close()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    server = ClosingServer()
    proxy = f"http://127.0.0.1:{server.port}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tmp_path / "torch"
    server.close()


def test_torchvision_download_offline_clear_error(offline):
    with pytest.raises(UserError) as raised:
        load_network("resnet18", "IMAGENET1K_V1")
    message = str(raised.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(offline) in message
    assert "efficientnet_lite0" in message


def test_torchvision_unknown_weights_lists_valid():
    with pytest.raises(UserError, match="IMAGENET1K_V2"):
        load_network("resnet50", "IMAGENET2K")


def test_unknown_model_rejected():
    with pytest.raises(UserError, match="unknown model 'resnet51'"):
        load_network("resnet51", None)


def test_efficientnet_lite0_offline():
    network = load_network("efficientnet_lite0", None)
    assert network.class_names == imagenet_wnids()
    assert network.identity["kind"] == "bundled"
    assert network.preprocessing.crop == 224
    with torch.inference_mode():
        assert network.module(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def csail_checkpoint(path, arch="resnet18", rename=None):
    """Write a checkpoint shaped like CSAIL's Places365 releases: 'module.'-prefixed keys under 'state_dict'."""
    model = torchvision.models.get_model(arch, weights=None, num_classes=365)
    state = {f"module.{rename(k) if rename else k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "best_prec1": 54.0}, path)
    return model


def test_places365_checkpoint_loads(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    model = csail_checkpoint(path)
    network = load_network("resnet18", str(path))
    assert network.class_names == places365_categories()
    assert network.identity["kind"] == "checkpoint"
    assert len(network.identity["sha256"]) == 64
    for key, value in model.state_dict().items():
        assert torch.equal(network.module.state_dict()[key], value)


def test_legacy_densenet_keys_rejected_with_mismatches(tmp_path):
    path = tmp_path / "densenet121_places365.pth.tar"
    csail_checkpoint(path, "densenet121", rename=lambda key: key.replace("norm1", "norm.1").replace("conv1", "conv.1"))
    with pytest.raises(UserError) as raised:
        load_network("densenet121", str(path))
    message = str(raised.value)
    assert "missing keys" in message
    assert "norm.1" in message


class Exploit:
    """Unpickling this object runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_executing_checkpoint_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Exploit(marker)}, path)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_network("resnet18", str(path))
    assert not marker.exists()


def test_truncated_checkpoint_clear_error(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated, corrupt"):
        load_network("resnet18", str(path))


def test_class_names_file_overrides(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(path)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"scene{i}\n" for i in range(365)))
    network = load_network("resnet18", str(path), class_names_file=names)
    assert network.class_names[0] == "scene0"


def test_class_names_file_wrong_length(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(path)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(UserError, match="2 names"):
        load_network("resnet18", str(path), class_names_file=names)


def test_class_names_file_not_utf8(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(path)
    names = tmp_path / "names.txt"
    names.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError) as caught:
        load_network("resnet18", str(path), class_names_file=names)
    assert str(caught.value) == f"--class-names {names} is not UTF-8 text (byte 3); save it as UTF-8"


def test_class_names_count_in_singular(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(path)
    names = tmp_path / "names.txt"
    names.write_text("scene\n")
    with pytest.raises(UserError) as caught:
        load_network("resnet18", str(path), class_names_file=names)
    assert str(caught.value) == (f"--class-names {names} lists 1 name but the network has 365 outputs; "
                                 "give one name per output, in output order")
