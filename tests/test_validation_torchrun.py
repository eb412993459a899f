"""`torchrun --nproc_per_node 2 RescaleDataset.py` shards the validation pass and gathers it on rank 0."""

import socket

import numpy as np
import pytest

from tests.helpers import photo_crops, run_script, write_jpeg
from utils.class_names import imagenet_wnids
from utils.outcomes import load_outcomes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    wnids = imagenet_wnids()
    crops = photo_crops(11, size=96)
    for index, image in enumerate(crops):
        write_jpeg(root / "val" / wnids[index % 3 * 100] / f"img_{index:02d}.JPEG", image)
    (root / "train").mkdir()
    return root


def stage1(tree, results, *launcher):
    args = ["RescaleDataset.py", "--data", str(tree), "--model", "efficientnet_lite0", "--results", str(results),
            "--sizes", "2", "--no-materialize", "--workers", "0", "--batch-size", "4", "--device", "cpu"]
    return run_script(*launcher, *args, timeout=300)


def test_two_processes_match_one(tree, tmp_path):
    single = stage1(tree, tmp_path / "single")
    assert single.returncode == 0, single.stderr
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()))
    double = stage1(tree, tmp_path / "double", *launcher)
    assert double.returncode == 0, double.stderr
    assert "validation pass: 11 images on cpu in 2 processes" in double.stderr

    one = load_outcomes(tmp_path / "single" / "outcomes.npz")
    two = load_outcomes(tmp_path / "double" / "outcomes.npz")
    assert len(two) == 11
    assert len(set(two.paths.tolist())) == 11
    assert two.paths.tolist() == one.paths.tolist()
    assert np.array_equal(two.true, one.true)
    assert np.array_equal(two.topk[:, 0], one.topk[:, 0])
    assert np.allclose(two.probs, one.probs, atol=1e-4)
    assert two.meta["processes"] == 2
