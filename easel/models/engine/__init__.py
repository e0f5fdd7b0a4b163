"""The generation engine: a model reference → its family and loaded pipeline → images.

`references` resolves what a user names; `families` (with one module per family) says what
each kind of model runs and how; `loading` gives facts and loaded pipelines; `generation` is
the one path images take; `sweep` runs a manifest's batches; `serving` answers the registry's
pyfunc. The engine knows nothing of DreamBooth or of the embedded shapes world.
"""
