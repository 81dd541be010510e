"""The web app (``pyramidflow app``): text-to-video, image-to-video and text-to-image in a page.

Built on the pipelines only, in small modules: :mod:`~pyramidflow.app.registry` (which models there
are, loading them, one generation at a time per model), :mod:`~pyramidflow.app.handlers` (checking a
request, running it, writing the result; plain functions, no web framework),
:mod:`~pyramidflow.app.ui` (the Gradio page) and :mod:`~pyramidflow.app.server` (launching it).
Gradio is an optional dependency: ``pip install -e ".[app]"``. Nothing in the package imports this
one.
"""
