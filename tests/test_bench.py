"""The benchmark harness: interleaved rounds, warm-up rounds, ratios and the subset benchmark on a small tree."""

import sys

from bench.common import Result, run_side_by_side
from bench.run import main
from bench.subsets import bench_subset_building


def test_side_by_side_leaves_out_warmup():
    calls = []

    def candidate(name):
        def measure():
            calls.append(name)
            return float(len(calls))
        return measure

    values = run_side_by_side({"a": candidate("a"), "b": candidate("b")}, repeats=2, warmup=1)

    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert values == {"a": [4.0, 5.0], "b": [3.0, 6.0]}


def test_ratio_for_durations_reads_as_speed():
    result = Result("k", "title", "s", project=[1.0, 2.0, 3.0], baseline=[4.0, 4.0, 4.0], higher_is_better=False)

    assert result.ratio == 2.0
    assert result.check_ratio(2.0).passed
    assert not result.check_ratio(2.5).passed


def test_subset_benchmark_runs_on_small_tree(tmp_path):
    results = bench_subset_building(tmp_path, classes=4, train_per_class=3, val_per_class=2, repeats=1, workers=1)

    assert [result.key for result in results] == ["subset_hardlink", "subset_copy"]
    assert all(result.project_median > 0 for result in results)
    assert all(result.baseline_median > 0 for result in results)
    assert results[0].details["files"] == 2 * (3 + 2)
    assert not (tmp_path / "hardlink").exists()


def test_missing_test_requirements_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)

    assert main(["--only", "statistics", "--work", str(tmp_path)]) == 2

    assert "scikit-image is not installed; install the test requirements with pip install -r requirements-test.txt" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
