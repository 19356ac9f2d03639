"""bench.py runs every measurement it promises, on real data, and its derived figures follow from its own."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import assert_clean_error, run_inline, run_script

SMALL = ["--dataset", "digits", "-models", "mobilenet", "shufflenet", "--image-size", "32", "-bs", "16",
         "--steps", "2", "--warmup", "1", "--workers", "0"]  # fmt: skip


@pytest.mark.slow
def test_bench_measures_limit_data_loop_and_the_original_side_by_side(tmp_path):
    out = tmp_path / "bench.csv"
    result = run_script("bench.py", *SMALL, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out)
    assert table["backbone"].tolist() == ["mobilenet_v3_large", "shufflenet_v2_x2_0"]
    assert table[["image_size", "batch_size", "precision", "device"]].drop_duplicates().to_dict("records") == [
        {"image_size": "32x32", "batch_size": 16, "precision": "fp32", "device": "cpu"}
    ]
    speeds = ["limit_img_s", "data_img_s", "loop_img_s", "original_data_img_s", "original_loop_img_s"]
    assert (table[speeds] > 0).all().all() and (table["peak_memory_mb"] > 0).all()
    assert (table["loop_over_limit"] - table["limit_img_s"] / table["loop_img_s"]).abs().max() < 1e-9
    assert (table["gain_over_original"] - table["loop_img_s"] / table["original_loop_img_s"]).abs().max() < 1e-9
    assert {"torch", "git_commit", "cache", "workers", "original_workers", "steps", "cpu_threads"} <= set(table)
    for name in ("mobilenet_v3_large", "shufflenet_v2_x2_0"):
        assert f"{name} 32x32 bs 16 fp32: limit " in result.stdout
    assert "Caching 1797 decoded images at 32x32" in result.stdout or "Reading 1797 decoded images" in result.stdout


def test_bench_refuses_what_it_cannot_measure(tmp_path):
    result = run_inline("bench.py", *SMALL[:-8], "-bs", "5000", "--out", tmp_path / "b.csv")
    assert_clean_error(result, "training images, fewer than a batch of 5000", "lower -bs")
    result = run_inline("bench.py", "--dataset", "digits", "-models", "wavemix", "--image-size", "48",
                        "--out", tmp_path / "b.csv")  # fmt: skip
    assert_clean_error(result, "wavemix needs an input height and width that are multiples of 32", "try 64")
    assert not (tmp_path / "b.csv").exists()
    (tmp_path / "b.csv").write_text("mine\n")
    result = run_inline("bench.py", *SMALL, "--out", tmp_path / "b.csv")
    assert_clean_error(result, "already exists; this tool never overwrites a file")
    assert (tmp_path / "b.csv").read_text() == "mine\n"
