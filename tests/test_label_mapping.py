"""Dataset classes map to network outputs by name, whatever the folders present."""

import numpy as np
import pytest

from utils.errors import UserError
from utils.layouts import ImageFolderLayout
from utils.validation_pass import label_indices

NETWORK_CLASSES = ["n01", "n02", "n03", "n04", "n05"]


def build_val(root, classes, per_class=2):
    for name in classes:
        for index in range(per_class):
            path = root / "val" / name / f"{name}_{index}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    return ImageFolderLayout(root).split("val")


def test_missing_classes_do_not_shift_labels(tmp_path):
    split = build_val(tmp_path, ["n02", "n05"])
    labels, unknown = label_indices(split, NETWORK_CLASSES, skip_unknown=False)
    assert unknown == []
    for path, label in zip(split.files, labels.tolist()):
        assert NETWORK_CLASSES[label] == path.split("/")[1]
    assert labels.tolist() == [1, 1, 4, 4]


def test_unknown_class_is_an_error_naming_it(tmp_path):
    split = build_val(tmp_path, ["n02", "extra_class"])
    with pytest.raises(UserError, match="extra_class"):
        label_indices(split, NETWORK_CLASSES, skip_unknown=False)


def test_unknown_class_skipped_on_request(tmp_path):
    split = build_val(tmp_path, ["n01", "aaa_unknown", "n03"])
    labels, unknown = label_indices(split, NETWORK_CLASSES, skip_unknown=True)
    assert unknown == ["aaa_unknown"]
    for path, label in zip(split.files, labels.tolist()):
        folder = path.split("/")[1]
        if folder == "aaa_unknown":
            assert label == -1
        else:
            assert NETWORK_CLASSES[label] == folder


def test_network_order_is_not_folder_order(tmp_path):
    split = build_val(tmp_path, ["b", "a"])
    labels, _ = label_indices(split, ["b", "a"], skip_unknown=False)
    assert np.array_equal(labels, [1, 1, 0, 0])
