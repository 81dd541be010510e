"""End-to-end generation: :class:`PyramidFlowPipeline` (text-to-video, text-to-image,
image-to-video), autoregressive unit generation and classifier-free guidance."""

from pyramidflow.pipelines.pyramid_flow import PipelineConfig, PyramidFlowOutput, PyramidFlowPipeline

__all__ = ["PipelineConfig", "PyramidFlowOutput", "PyramidFlowPipeline"]
