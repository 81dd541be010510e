"""bench/bench_variants.py: one table for a diffusers-sampled WanPipeline and our pipelines."""

import json
import sys
from pathlib import Path

import pytest
from wan_folder import save_wan_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_variants  # noqa: E402


def test_one_table_for_both_runners(tmp_path, capsys):
    wan = save_wan_pipeline(tmp_path / "wan")
    (wan / "generation.json").write_text(json.dumps({"height": 32, "width": 32, "num_frames": 9,
                                                     "num_inference_steps": 2, "guidance_scale": 3.0}))
    out = tmp_path / "out"
    assert bench_variants.main([
        "--variant", f"label=diffusers,path={wan},runner=diffusers",
        "--variant", f"label=ours,path={wan},guidance=1",
        "--variant", f"label=few,path={wan},steps=1,guidance=1,rule=x0_renoise",
        "--demo", "1", "--heldout", "1", "--reference", "2", "--out", str(out)]) == 0
    rows = {r["label"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert rows["diffusers"]["evaluations"] == 4 and rows["ours"]["evaluations"] == 2
    assert rows["few"]["evaluations"] == 1 and rows["few"]["rule"] == "x0_renoise"
    assert rows["diffusers"]["tflops"] == pytest.approx(2 * rows["ours"]["tflops"])  # guidance doubles it
    assert rows["ours"]["tflops"] == pytest.approx(2 * rows["few"]["tflops"])
    assert "| diffusers | 2 | 4 |" in capsys.readouterr().out
    assert (out / "few" / "metrics.json").is_file()
    with pytest.raises(SystemExit, match="needs label= and path="):
        bench_variants.parse_variant("path=x")
