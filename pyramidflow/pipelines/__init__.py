"""End-to-end generation: :class:`PyramidFlowPipeline` (text-to-video, text-to-image,
image-to-video), :class:`PyramidalWanPipeline` (a diffusers Wan2.1 model through the pyramid),
autoregressive unit generation and classifier-free guidance."""

from pyramidflow.pipelines.pyramid_flow import PipelineConfig, PyramidFlowOutput, PyramidFlowPipeline
from pyramidflow.pipelines.wan import PyramidalWanPipeline

__all__ = ["PipelineConfig", "PyramidFlowOutput", "PyramidFlowPipeline", "PyramidalWanPipeline"]
