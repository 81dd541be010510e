"""Data: the built-in procedural shapes dataset, real-video folder/manifest datasets, latent cache.

Imports no model code. Submodules: :mod:`~pyramidflow.data.vocab` (vocabularies, captions,
``parse_prompt``), :mod:`~pyramidflow.data.shapes`, :mod:`~pyramidflow.data.video`,
:mod:`~pyramidflow.data.manifest`, :mod:`~pyramidflow.data.latent_cache`.
"""
