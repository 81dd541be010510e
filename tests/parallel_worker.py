"""Run by torchrun in test_parallel.py: the same transformer calls and generations on every process,
the transformer sharded over the processes (Ulysses) or the guided batch split (CFG). Every process
saves its results (``rank{r}.pt``); the test compares them with one process's."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from tiny_components import TINY_DIT, seeded_randn  # noqa: E402

from pyramidflow.errors import PyramidflowError  # noqa: E402
from pyramidflow.models import PPFDiT, PyramidDiT, TokenSegment  # noqa: E402
from pyramidflow.models.parallel import enable_ulysses  # noqa: E402
from pyramidflow.pipelines import PyramidFlowPipeline  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tiny"
PROMPT = "a red circle moving left on a black background"


def tiny_model() -> PyramidDiT:
    torch.manual_seed(0)
    return PyramidDiT(**TINY_DIT).eval()


@torch.no_grad()
def model_cases(model) -> dict[str, torch.Tensor]:
    """Calls that cover the sharded paths: even and padded lengths, per-token timesteps, history
    units at fractional positions under block-causal attention, with and without the caches."""
    text = seeded_randn(2, 5, 16, seed=1)
    out = {"forward": model(seeded_randn(2, 4, 3, 4, 6, seed=2), torch.tensor([500.0, 300.0]), text).sample}
    per_token = torch.linspace(0.0, 900.0, 9).expand(2, 9)  # 9 tokens: padded to 10 over 2 processes
    out["odd_per_token"] = model(seeded_randn(2, 4, 3, 2, 6, seed=3), per_token, text).sample
    h0 = TokenSegment.at_level(seeded_randn(2, 4, 1, 2, 2, seed=4), 0.0, 0, levels_coarser=2, frame_offset=0)
    h1 = TokenSegment.at_level(seeded_randn(2, 4, 1, 4, 4, seed=5), 0.0, 1, levels_coarser=1, frame_offset=1)
    cur = TokenSegment.at_level(seeded_randn(2, 4, 1, 8, 8, seed=6), 700.0, 2, frame_offset=2)
    out["history_tokens"] = model.forward_tokens([h0, h1, cur], text)[-1]  # 1 + 4 + 16 tokens
    text_cache = model.build_text_cache(text)
    cache = model.build_history_cache([h0, h1], text, text_cache=text_cache)  # 5 tokens: padded
    out["history_cache"] = model.forward_tokens([cur], None, cache=cache, text_cache=text_cache)[0]
    return out


def tiny_ppf() -> PPFDiT:
    """The tiny model with a 1x4x2 patch level (docs/maths.md section 9)."""
    return PPFDiT.from_transformer(tiny_model(), [[1, 4, 2], [1, 2, 2]])


@torch.no_grad()
def ppf_cases(model) -> dict[str, torch.Tensor]:
    """A coarse level (9 tokens: padded, gathered through its own output projection) and the finest."""
    text, x = seeded_randn(2, 5, 16, seed=1), seeded_randn(2, 4, 3, 4, 6, seed=7)
    t = torch.tensor([500.0, 300.0])
    return {"ppf_coarse": model(x, t, text, patch_level=0).sample, "ppf_fine": model(x, t, text).sample}


def generate(pipe) -> torch.Tensor:
    """Two autoregressive units under guidance (unit 1 with the history cache), latents."""
    return pipe(PROMPT, num_frames=2, num_inference_steps=[2, 1, 1], first_steps=[1, 1, 2], seed=1,
                output_type="pt", progress=False).latents


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    model = tiny_model()
    enable_ulysses(model)
    results.update(model_cases(model))
    ppf = tiny_ppf()
    enable_ulysses(ppf)
    results.update(ppf_cases(ppf))
    try:
        enable_ulysses(PyramidDiT(**{**TINY_DIT, "num_attention_heads": 3, "attention_head_dim": 8}))
    except PyramidflowError as err:
        results["heads_error"] = str(err)
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    results["pipe_cfg"] = generate(pipe.enable_parallel("cfg"))
    results["pipe_ulysses"] = generate(pipe.enable_parallel("ulysses"))
    torch.save(results, Path(out) / f"rank{dist.get_rank()}.pt")
    # last, the command as torchrun -m pyramidflow runs it (it joins this launch and leaves it)
    from pyramidflow.cli import main as cli

    assert cli(["sample", *CLI_ARGS, "--out", str(Path(out) / "cli" / "x.png"), "--parallel", "ulysses"]) == 0


CLI_ARGS = ["--checkpoint", str(SHIPPED), "--prompt", "a red circle moving left", "--frames", "1",
            "--steps", "1,1,1", "--quiet"]

if __name__ == "__main__":
    main(sys.argv[1])
