"""The validation loader's shared batch buffers: real JPEGs decoded by worker processes."""

import pytest
import torch

from tests.helpers import photo_crops, write_jpeg
from utils.image_decoding import EvalTransform, Preprocessing
from utils.layouts import split_from_class_folders
from utils.shared_batches import BatchPlan, SharedBatchBuffers, buffer_slots
from utils.validation_pass import make_validation_loader

CPU = torch.device("cpu")
PREPROCESSING = Preprocessing(40, 32, (0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """A class-folder tree of 23 real-photo JPEGs in two classes, with one unreadable file."""
    val = tmp_path_factory.mktemp("shared") / "val"
    for index, image in enumerate(photo_crops(22, size=56)):
        write_jpeg(val / ("cat" if index % 2 else "dog") / f"{index:02d}.jpg", image)
    (val / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    return split_from_class_folders(val.parent, val)


def test_batch_plan_covers_positions_once():
    plan = list(BatchPlan(10, 4))

    assert plan == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert len(BatchPlan(10, 4)) == 3


def test_buffer_slots_exceed_batches_in_flight():
    assert buffer_slots(0) == 1
    assert buffer_slots(3) == 7


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_match_single_decodes(photo_tree, workers):
    transform = EvalTransform(PREPROCESSING)
    indices = list(range(len(photo_tree)))
    seen = []

    for images, image_indices, ok, reasons in make_validation_loader(PREPROCESSING, photo_tree, indices, CPU, 4, workers):
        for pixels, index, good, reason in zip(images, image_indices.tolist(), ok.tolist(), reasons):
            path = photo_tree.root / photo_tree.files[index]
            if good:
                assert torch.equal(pixels, transform(path)), path
            else:
                assert path.name == "broken.jpg"
                assert reason and not pixels.any()
            seen.append(index)

    assert seen == indices


def test_batch_overwritten_too_early_is_detected():
    buffers = SharedBatchBuffers(slots=2, batch_size=3, sample_shape=(1,))
    buffers.slot_of(0).fill_(7)
    buffers.mark_written(0)
    assert buffers.batch(0, 3).tolist() == [[7]] * 3

    buffers.slot_of(2).fill_(9)  # batch 2 shares batch 0's buffer
    buffers.mark_written(2)

    with pytest.raises(RuntimeError, match="buffer of batch 0 contains batch 2"):
        buffers.batch(0, 3)


def test_buffers_sized_to_small_shard(photo_tree):
    loader = make_validation_loader(PREPROCESSING, photo_tree, list(range(5)), CPU, 1000, 2)

    assert tuple(loader.buffers.samples.shape) == (5, 5, 3, 32, 32)
    assert sum(len(indices) for _, indices, _, _ in loader) == 5
