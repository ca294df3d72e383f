"""``lstmkit bench`` at tiny sizes: its timings, ratios, targets and files are consistent, and
onnxruntime (when installed, as in CI) ran the same network as lstmkit."""

import json

import pytest
import torch

from lstmkit import bench, cli


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_grid_writes_consistent_results(tmp_path, capsys, restore_threads):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    code = cli.main(["bench", "--batch", "1", "3", "--hidden", "8", "--steps", "5", "--stacked", "2", "6",
                     "--repeats", "2", "--warmup", "0", "--json", str(out_json), "--markdown", str(out_md)])
    assert code == 0
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    assert [(r["batch"], r["layers"], r["variant"]) for r in rows] == [
        (b, layers, v) for b, layers in ((1, 1), (3, 1), (2, 2)) for v in bench.VARIANTS]
    for r in rows:
        for tag in ("fwd", "fwdbwd"):
            assert len(r[f"{tag}_runs_ms"]) == 2 and all(t >= 0 for t in r[f"{tag}_runs_ms"])
            assert r[f"{tag}_ratio"] == pytest.approx(r[f"{tag}_ms"] / r[f"nn_{tag}_ms"])
        has_ort = r["variant"] in bench.ONNX_VARIANTS
        assert ("ort_ratio" in r) == has_ort  # onnx and onnxruntime are in the dev extra
        if has_ort:  # the ONNX LSTM node built from lstmkit's weights computes lstmkit's output
            assert r["ort_max_abs_diff"] < 1e-5
    worst = {t["target"]: t["worst"] for t in result["targets"]}
    assert worst["every variant / nn.LSTM"] == pytest.approx(max(max(r["fwd_ratio"], r["fwdbwd_ratio"]) for r in rows))
    assert worst["vanilla / nn.LSTM at B=1"] == pytest.approx(
        max(max(r["fwd_ratio"], r["fwdbwd_ratio"]) for r in rows if r["variant"] == "vanilla" and r["batch"] == 1))
    page = out_md.read_text()
    assert result["machine"]["command"] in page and page.count("\n| 1 | 8 | 1 |") == len(bench.VARIANTS)
    assert "targets:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--variants", "vanilla", "lstm2"], "--variants: unknown ['lstm2']"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch", "0"], "--batch and --hidden must be >= 1"),
    (["--stacked", "0", "8"], "--stacked takes B H"),
    (["--min-time", "-1"], "--min-time must be a finite number of seconds >= 0"),
    (["--min-time", "nan"], "--min-time must be a finite number of seconds >= 0"),
    (["--min-time", "inf"], "--min-time must be a finite number of seconds >= 0"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys, restore_threads):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_min_time_adds_rounds(tmp_path, restore_threads):
    """--min-time keeps timing a size past --repeats: every contender gets the same, larger number
    of runs, and the command on the results page says so."""
    out_json = tmp_path / "r.json"
    argv = ["bench", "--batch", "1", "--hidden", "8", "--steps", "3", "--stacked", "0", "0", "--variants", "vanilla",
            "--repeats", "2", "--warmup", "0", "--min-time", "0.5", "--json", str(out_json)]
    assert cli.main(argv) == 0
    result = json.loads(out_json.read_text())
    (row,) = result["rows"]
    runs = len(row["fwd_runs_ms"])
    assert runs > 2 and len(row["fwdbwd_runs_ms"]) == runs
    assert "--min-time 0.5" in result["machine"]["command"]
