"""bench/gpu.py: the Wan2.1-1.3B config it benchmarks, its stage shapes, and a tiny CPU run."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu  # noqa: E402

from pyramidflow.models import PyramidDiT  # noqa: E402


def test_config_is_wan_1_3b_and_paper_stage_shapes():
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        ours, wan = PyramidDiT(**gpu.WAN_1_3B), WanTransformer3DModel(**gpu.WAN_1_3B)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(wan) == 1_418_996_800
    assert gpu.stage_shapes(81, 448, 832) == [(21, 14, 26), (21, 28, 52), (21, 56, 104)]
    coarse, *rest = gpu.stage_shapes(81, 480, 832)
    assert "not a whole number of 2x2 patches" in coarse and rest == [(21, 30, 52), (21, 60, 104)]


def test_tiny_smoke_run_on_cpu(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = gpu.main(["--tiny", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (shape,) = result["shapes"]
    assert [s["tokens"] for s in shape["stages"]] == [3, 12, 48]
    for stage in shape["stages"]:
        for name in ("pyramiddit", "wan"):
            assert stage[name]["ms"] > 0 and stage[name]["peak_gib"] is None  # no CUDA memory on a CPU
    single = shape["schedules"]["0-0-50"]["pyramiddit"]["per_stage_s"]
    full_ms = shape["stages"][2]["pyramiddit"]["ms"]
    assert single[:2] == [0.0, 0.0] and single[2] == pytest.approx(50 * full_ms / 1e3)
    assert "schedule 20-20-10" in capsys.readouterr().out


def test_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu.main([])
