"""``callback_on_step_end``: called once per network evaluation, in order, with the stage and unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyramidflow.demo import DEFAULT_CHECKPOINT
from pyramidflow.pipelines import PyramidFlowPipeline


@pytest.fixture(scope="module")
def pipe():
    return PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT)


def test_callback_counts_every_evaluation_and_changes_nothing(pipe):
    calls = []

    def record(p, step, total, info):
        assert p is pipe
        calls.append((step, total, info["stage"], info["unit"], info["sigma"].shape))

    prompt = "a red circle moving slowly left on a black background"
    kwargs = dict(num_frames=3, num_inference_steps=(2, 2, 1), first_steps=(3, 2, 2), seed=5, progress=False)
    frames = pipe(prompt, callback_on_step_end=record, **kwargs).frames
    assert np.array_equal(frames, pipe(prompt, **kwargs).frames)  # observing changes nothing
    total = 7 + 5 * 2  # the first unit with first_steps, two more with steps
    assert [c[0] for c in calls] == list(range(total)) and {c[1] for c in calls} == {total}
    assert [c[3] for c in calls] == [0] * 7 + [1] * 5 + [2] * 5
    assert [c[2] for c in calls[:7]] == [0, 0, 0, 1, 1, 2, 2]
    assert [c[2] for c in calls[7:12]] == [0, 0, 1, 1, 2]
    assert {c[4] for c in calls} == {torch.Size([1])}


def test_callback_with_a_given_first_frame_and_raising_stops(pipe):
    seen = []
    pipe("a blue square", num_frames=2, image=torch.zeros(3, 32, 32), num_inference_steps=(1, 1, 1),
         progress=False, callback_on_step_end=lambda p, i, n, info: seen.append((i, n, info["unit"])))
    assert seen == [(0, 3, 1), (1, 3, 1), (2, 3, 1)]  # the given image is unit 0: nothing to evaluate

    def stop(p, i, n, info):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe("a blue square", num_frames=2, progress=False, callback_on_step_end=stop)
