"""Outcomes files: round trip, imports, damage and fingerprints."""

import json
import os

import numpy as np
import pytest

from utils.errors import UserError
from utils.layouts import Split
from utils.outcomes import Outcomes, fingerprint_split, import_outcomes, load_outcomes, save_outcomes


def sample_outcomes():
    return Outcomes(
        class_names=["n01", "n02", "n03"],
        true=np.array([0, 1, 2, 2]),
        topk=np.array([[0, 1], [2, 1], [2, 0], [1, 2]]),
        probs=np.array([[0.9, 0.1], [0.6, 0.3], [0.5, 0.4], [0.7, 0.2]]),
        paths=np.array(["val/n01/a.JPEG", "val/n02/b.JPEG", "val/n03/c.JPEG", "val/n03/d é.JPEG"]),
        meta={"network": {"model": "x"}, "fingerprint": "abc", "skipped": [{"path": "val/n01/bad.JPEG", "reason": "OSError"}]},
    )


def test_round_trip(tmp_path):
    path = tmp_path / "outcomes.npz"
    original = sample_outcomes()
    save_outcomes(original, path)
    loaded = load_outcomes(path)
    assert loaded.class_names == original.class_names
    assert np.array_equal(loaded.true, original.true)
    assert np.array_equal(loaded.topk, original.topk)
    assert np.allclose(loaded.probs, original.probs)
    assert loaded.paths.tolist() == original.paths.tolist()
    assert loaded.meta["network"] == {"model": "x"}
    assert loaded.skipped == [{"path": "val/n01/bad.JPEG", "reason": "OSError"}]
    assert loaded.meta["num_images"] == 4


def test_no_temporary_files_left(tmp_path):
    save_outcomes(sample_outcomes(), tmp_path / "outcomes.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outcomes.npz"]


def test_truncated_file_clear_error(tmp_path):
    path = tmp_path / "outcomes.npz"
    save_outcomes(sample_outcomes(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_outcomes(path)


@pytest.mark.parametrize("content", [b"", b"path,true,predicted\na.png,cat,cat\n"])
def test_npz_that_is_no_archive_rejected(tmp_path, content):
    path = tmp_path / "outcomes.npz"
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        import_outcomes(path)
    assert str(error.value) == (
        f"--outcomes: outcomes file {path} is truncated or corrupt: it is empty or not an .npz (zip) archive; "
        "give an outcomes .npz that RescaleDataset.py wrote, a .csv file or a folder with true_labels.npy"
    )


def test_foreign_npz_rejected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, meta=np.asarray(json.dumps({"format": "something-else"})))
    with pytest.raises(UserError, match="not an outcomes file"):
        load_outcomes(path)


def test_import_csv_with_header(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("path,true,predicted,probability\nval/x/1.jpg,cat,dog,0.7\nval/x/2.jpg,cat,cat,0.9\nval/y/3.jpg,dog,dog,0.8\n")
    outcomes = import_outcomes(path)
    assert outcomes.class_names == ["cat", "dog"]
    assert outcomes.true.tolist() == [0, 0, 1]
    assert outcomes.topk[:, 0].tolist() == [1, 0, 1]
    assert np.allclose(outcomes.probs[:, 0], [0.7, 0.9, 0.8])


def test_import_csv_without_probabilities(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("a.jpg,cat,dog\nb.jpg,dog,dog\n")
    outcomes = import_outcomes(path)
    assert outcomes.probs is None
    assert outcomes.paths.tolist() == ["a.jpg", "b.jpg"]


def test_import_csv_bad_row_names_line(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("a.jpg,cat,dog\nb.jpg,dog\n")
    with pytest.raises(UserError, match="line 2"):
        import_outcomes(path)


def test_import_numpy_folder_with_filepaths(tmp_path):
    np.save(tmp_path / "true_labels.npy", np.array([0, 0, 1], dtype=np.uint16))
    np.save(tmp_path / "predicted_labels.npy", np.array([0, 1, 1], dtype=np.uint16))
    (tmp_path / "index_to_filepath.json").write_text(json.dumps(["val/n02/a.JPEG", "val/n02/b.JPEG", "val/n05/c.JPEG"]))
    outcomes = import_outcomes(tmp_path)
    assert outcomes.class_names == ["n02", "n05"]
    assert outcomes.true.tolist() == [0, 0, 1]
    assert outcomes.paths.tolist()[2] == "val/n05/c.JPEG"


def test_import_numpy_folder_with_classes_txt(tmp_path):
    np.save(tmp_path / "true_labels.npy", np.array([2, 0]))
    np.save(tmp_path / "predicted_labels.npy", np.array([[2, 1], [1, 0]]))
    np.save(tmp_path / "probabilities.npy", np.array([[0.8, 0.1], [0.5, 0.4]]))
    (tmp_path / "classes.txt").write_text("alpha\nbeta\ngamma\n")
    outcomes = import_outcomes(tmp_path)
    assert outcomes.class_names == ["alpha", "beta", "gamma"]
    assert outcomes.k == 2
    assert outcomes.paths is None


def test_import_numpy_folder_without_names(tmp_path):
    np.save(tmp_path / "true_labels.npy", np.array([0]))
    np.save(tmp_path / "predicted_labels.npy", np.array([0]))
    with pytest.raises(UserError, match="classes.txt"):
        import_outcomes(tmp_path)


def test_import_label_out_of_range(tmp_path):
    np.save(tmp_path / "true_labels.npy", np.array([0, 3]))
    np.save(tmp_path / "predicted_labels.npy", np.array([0, 1]))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="class index 3"):
        import_outcomes(tmp_path)


def save_folder(folder, true, predicted, classes="a\nb\nc\n"):
    np.save(folder / "true_labels.npy", np.asarray(true))
    np.save(folder / "predicted_labels.npy", np.asarray(predicted))
    if classes is not None:
        (folder / "classes.txt").write_text(classes)


def import_error(path):
    with pytest.raises(UserError) as error:
        import_outcomes(path)
    return str(error.value)


def test_import_csv_not_utf8(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_bytes(b"\xff\xfe,,")
    assert import_error(path) == f"{path} is not UTF-8 text: byte 0xff at offset 0 is invalid; save the file with UTF-8 encoding"


def test_import_classes_txt_not_utf8(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 1], classes=None)
    (tmp_path / "classes.txt").write_bytes(b"cat\ncaf\xe9\n")
    path = tmp_path / "classes.txt"
    assert import_error(tmp_path) == f"{path} is not UTF-8 text: byte 0xe9 at offset 7 is invalid; save the file with UTF-8 encoding"


def test_import_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_bytes("path,true,predicted\r\na.jpg,cat,dog\r\n".encode("utf-8-sig"))
    assert import_outcomes(path).class_names == ["cat", "dog"]


def test_import_string_labels_rejected(tmp_path):
    save_folder(tmp_path, ["cat", "dog"], [0, 1])
    path = tmp_path / "true_labels.npy"
    assert import_error(tmp_path) == (
        f"{path} contains values of dtype <U3 such as 'cat', not class indices; save the class indices as integers"
    )


def test_import_scalar_predictions_rejected(tmp_path):
    save_folder(tmp_path, [0, 1], 1)
    assert import_error(tmp_path) == (
        f"--outcomes {tmp_path}: true_labels.npy has shape (2,) but predicted_labels.npy has shape (); "
        "save N true class indices and N predicted class indices (or N x k, best first) for N images"
    )


def test_import_3d_predictions_rejected(tmp_path):
    save_folder(tmp_path, [0, 1], np.zeros((2, 2, 2), dtype=int))
    assert "predicted_labels.npy has shape (2, 2, 2); save N true class indices" in import_error(tmp_path)


def test_import_fractional_labels_rejected(tmp_path):
    save_folder(tmp_path, [0.0, 1.0], [1.0, 0.7])
    path = tmp_path / "predicted_labels.npy"
    assert import_error(tmp_path) == (
        f"{path}: class index 0.7 at position 1 is not a whole number; save the class indices as integers"
    )


def test_import_nan_label_rejected(tmp_path):
    save_folder(tmp_path, [0.0, np.nan], [1, 0])
    assert "class index nan at position 1 is not a whole number" in import_error(tmp_path)


def test_import_whole_float_labels_accepted(tmp_path):
    save_folder(tmp_path, [0.0, 2.0], [[2.0, 1.0], [1.0, 0.0]])
    outcomes = import_outcomes(tmp_path)
    assert outcomes.true.tolist() == [0, 2]
    assert outcomes.topk.tolist() == [[2, 1], [1, 0]]


def test_import_text_saved_as_npy(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 1])
    path = tmp_path / "true_labels.npy"
    path.write_text("0\n1\n")
    assert import_error(tmp_path) == (
        f"{path} is not a .npy file because it does not start with the NumPy header; write it with numpy.save"
    )


def test_import_empty_true_labels(tmp_path):
    save_folder(tmp_path, np.array([], dtype=int), np.array([], dtype=int))
    path = tmp_path / "true_labels.npy"
    assert import_error(tmp_path) == f"{path} contains no images; save one true class index per validation image"


def test_import_filepaths_non_integer_keys(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 1], classes=None)
    path = tmp_path / "index_to_filepath.json"
    path.write_text(json.dumps({"first": "val/a/1.jpg", "second": "val/b/2.jpg"}))
    assert import_error(tmp_path) == f"{path}: key 'first' is not an image index; use the integers 0 to 1 as keys"


def test_import_filepaths_missing_index(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 1], classes=None)
    path = tmp_path / "index_to_filepath.json"
    path.write_text(json.dumps({"0": "val/a/1.jpg", "5": "val/b/2.jpg"}))
    assert import_error(tmp_path) == f"{path}: image index 1 is missing; use the integers 0 to 1 as keys"


def test_import_filepaths_integer_keys_ordered(tmp_path):
    save_folder(tmp_path, [1, 0], [1, 1], classes=None)
    (tmp_path / "index_to_filepath.json").write_text(json.dumps({"1": "val/a/1.jpg", "0": "val/b/2.jpg"}))
    outcomes = import_outcomes(tmp_path)
    assert outcomes.paths.tolist() == ["val/b/2.jpg", "val/a/1.jpg"]
    assert outcomes.class_names == ["a", "b"]


def test_import_filepaths_list_values(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 1], classes=None)
    path = tmp_path / "index_to_filepath.json"
    path.write_text(json.dumps({"0": "val/a/1.jpg", "1": ["val", "b", "2.jpg"]}))
    assert import_error(tmp_path) == (
        f"{path}: entry 1 is ['val', 'b', '2.jpg'], not a file path; give one path string per image"
    )


def test_import_duplicate_class_names(tmp_path):
    save_folder(tmp_path, [0, 1], [2, 1], classes="a\na\nc\n")
    assert import_error(tmp_path) == (
        f"--outcomes {tmp_path}: inconsistent outcomes (class name 'a' appears twice in the class list, at indices 0 and 1); "
        "recompute them or fix the imported files"
    )


def test_outcomes_duplicate_class_names():
    with pytest.raises(UserError, match="class name 'b' appears twice in the class list, at indices 1 and 2"):
        Outcomes(class_names=["a", "b", "b"], true=np.array([0]), topk=np.array([1]))


def test_load_duplicate_class_names(tmp_path):
    path = tmp_path / "outcomes.npz"
    save_outcomes(sample_outcomes(), path)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["class_names"] = np.array(["n01", "n02", "n01"])
    np.savez(path, **arrays)
    with pytest.raises(UserError) as error:
        import_outcomes(path)
    assert str(error.value).startswith(f"outcomes file {path}: inconsistent outcomes (class name 'n01' appears twice")


def test_import_csv_empty_class(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("path,true,predicted\nb.png,Shirt,Shirt\na,,Shirt\n")
    assert import_error(path) == f"{path}, line 3: the true class column is empty; fill it in or delete the line"


@pytest.mark.parametrize("lines, bad", [(["a.png,cat,dog,0.4", "b.png,dog,dog"], (2, 3, 1, 4)),
                                        (["a.png,cat,dog", "b.png,dog,dog,0.9"], (2, 4, 1, 3))])
def test_import_csv_mixed_probability_columns(tmp_path, lines, bad):
    path = tmp_path / "outcomes.csv"
    path.write_text("\n".join(lines) + "\n")
    number, columns, first, first_columns = bad
    assert import_error(path) == (
        f"{path}, line {number}: {columns} columns, but line {first} has {first_columns}; "
        "give the probability column on every line or on none"
    )


@pytest.mark.parametrize("value", ["1.5", "-0.2", "nan", "inf"])
def test_import_csv_probability_out_of_range(tmp_path, value):
    path = tmp_path / "outcomes.csv"
    path.write_text(f"a.png,cat,dog,0.4\nb.png,dog,dog,{value}\n")
    assert import_error(path) == (
        f"{path}, line 2: probability {value} is not between 0 and 1; give the softmax probability of the predicted class"
    )


def test_import_csv_probability_rounding_accepted(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("a.png,cat,dog,1.00005\nb.png,dog,dog,-0.00005\n")
    assert import_outcomes(path).probs[:, 0].tolist() == pytest.approx([1.00005, -0.00005])


@pytest.mark.parametrize(("value", "text"), [(1.2, "1.2"), (-0.5, "-0.5"), (np.nan, "nan")])
def test_import_npy_probability_out_of_range(tmp_path, value, text):
    save_folder(tmp_path, [0, 1], [[1, 0], [1, 2]])
    np.save(tmp_path / "probabilities.npy", np.array([[0.6, 0.3], [value, 0.1]]))
    path = tmp_path / "probabilities.npy"
    assert import_error(tmp_path) == (
        f"{path}: probability {text} at [1, 0] is not between 0 and 1; save softmax probabilities, not logits"
    )


def test_import_npy_probability_text_rejected(tmp_path):
    save_folder(tmp_path, [0, 1], [1, 0])
    np.save(tmp_path / "probabilities.npy", np.array(["high", "low"]))
    path = tmp_path / "probabilities.npy"
    assert import_error(tmp_path) == (
        f"{path} contains values of dtype <U4, not probabilities; save the probabilities as floats"
    )


def test_import_csv_duplicate_paths(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("val/a.png,cat,dog\nval/b.png,dog,dog\nval/a.png,cat,cat\n")
    assert import_error(path) == f"{path}, line 3: image 'val/a.png' already appears on line 1; give each image one row"


def test_import_filepaths_duplicate_paths(tmp_path):
    save_folder(tmp_path, [0, 1, 1], [1, 1, 0])
    path = tmp_path / "index_to_filepath.json"
    path.write_text(json.dumps(["val/a/1.jpg", "val/b/2.jpg", "val/a/1.jpg"]))
    assert import_error(tmp_path) == (
        f"{path}: file path 'val/a/1.jpg' appears at indices 0 and 2; list each image once"
    )


def test_import_reference_outcomes(shared_dir):
    outcomes = import_outcomes(shared_dir / "reference" / "imagenet_val_outcomes")
    assert len(outcomes) == 50_000
    assert len(outcomes.class_names) == 1000
    assert outcomes.class_names == sorted(outcomes.class_names)
    accuracy = (outcomes.true == outcomes.topk[:, 0]).mean()
    assert accuracy == pytest.approx(0.7273, abs=1e-4)


def make_split(root):
    for name in ("a", "b"):
        (root / "val" / name).mkdir(parents=True)
        (root / "val" / name / "1.jpg").write_bytes(b"x" * 10)
    return Split(root, ["val/a/1.jpg", "val/b/1.jpg"], ["a", "b"])


def test_fingerprint_stable(tmp_path):
    split = make_split(tmp_path)
    assert fingerprint_split(split) == fingerprint_split(split)


def test_fingerprint_changes_with_content(tmp_path):
    split = make_split(tmp_path)
    before = fingerprint_split(split)
    (tmp_path / "val" / "a" / "1.jpg").write_bytes(b"y" * 11)
    assert fingerprint_split(split) != before


def test_fingerprint_changes_with_label(tmp_path):
    split = make_split(tmp_path)
    relabelled = Split(tmp_path, split.files, ["b", "a"])
    assert fingerprint_split(split) != fingerprint_split(relabelled)


def test_fingerprint_changes_with_mtime(tmp_path):
    split = make_split(tmp_path)
    before = fingerprint_split(split)
    path = tmp_path / "val" / "b" / "1.jpg"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint_split(split) != before
