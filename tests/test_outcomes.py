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
