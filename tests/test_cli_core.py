"""The schedule and flops subcommands, and one-line errors."""

import json
import subprocess
import sys

import pytest

from pyramidflow.cli import main


def test_schedule_table(capsys):
    assert main(["schedule", "--stages", "3", "--steps", "20,20,20"]) == 0
    out = capsys.readouterr().out
    assert "1.0000 -> 0.6667" in out and "0.8000 -> 0.3333" in out and "0.5000 -> 0.0000" in out
    assert "0.8889" in out  # stage 0 ends at global 8/9


def test_schedule_json_and_plot(tmp_path, capsys):
    png = tmp_path / "s.png"
    args = ["schedule", "--stages", "2", "--steps", "4,3", "--shift", "2", "--plot", str(png), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [len(s["sigmas_natural"]) for s in result["stages"]] == [5, 4]
    assert result["stages"][1]["window_natural"][0] == pytest.approx(2 / 3)
    s0, s1 = result["stages"]
    # shift 2 at local position 3/4: r = 2(3/4)/(1 + 3/4) = 6/7, sigma = 1/2 + r/2 (window [1, 1/2])
    assert s0["sigmas_natural"][1] == pytest.approx(0.5 + 3 / 7)
    # global level continuous across the jump: stage 0 ends at natural 1/2 = global 2/3
    assert s0["sigmas_global"][-1] == pytest.approx(2 / 3) == pytest.approx(s1["sigmas_global"][0])
    assert s1["sigmas_global"] == pytest.approx(s1["sigmas_natural"])  # full resolution: the same
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_flops_json(capsys):
    args = ["flops", "--preset", "wan2.1-t2v-1.3b", "--frames", "81", "--height", "448", "--width", "832",
            "--steps", "20-20-10", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["total_tflops"] == pytest.approx(2821, rel=5e-3)
    assert [s["tokens"] for s in result["per_stage"]] == [546, 4004, 30576]
    assert all("tflops" in s for s in result["per_stage"])


def test_flops_table_from_a_config_file(tmp_path, capsys):
    cfg = {"num_layers": 30, "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960,
           "in_channels": 16, "out_channels": 16, "patch_size": [1, 2, 2], "text_dim": 4096}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["flops", "--config", str(tmp_path), "--frames", "81", "--height", "448", "--width",
                 "832", "--steps", "0-0-50"]) == 0
    assert "12591.8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["schedule", "--stages", "3", "--steps", "20,20"], "one step count per stage"),
        (["schedule", "--steps", "a,b,c"], "must be integers"),
        (["schedule", "--shift", "nan"], "finite"),
        (["flops", "--frames", "80"], "1 + k*4"),
        (["flops", "--height", "452"], "multiple"),
        (["flops", "--config", "/nonexistent/dir"], "not found"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "pyramidflow", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "schedule" in out.stdout and "flops" in out.stdout
