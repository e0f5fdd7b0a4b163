"""Models: the engine (families, loading, generation), DreamBooth, the embedded models."""

import sys

if not sys.stderr.isatty():  # a log file: no diffusers progress bars ("Loading pipeline
    # components..."); huggingface_hub's and transformers' follow easel/__init__.py
    from diffusers.utils import logging as _diffusers_logging

    _diffusers_logging.disable_progress_bar()
