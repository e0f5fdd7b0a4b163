"""easel: diffusion image work as batch pipelines (Prefect flows, MLflow runs)."""

import os
import sys

if not sys.stderr.isatty():
    # A log file, not a terminal: no library progress bars (huggingface_hub, transformers and
    # diffusers read this when imported); easel writes its own progress lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
