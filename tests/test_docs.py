"""The docs stand alone: the configuration reference matches the code, and every link in the
README and docs/ points at a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

from easel.cli.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_configuration_reference_is_the_code_s():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == reference_markdown(), (
        "docs/configuration.md is stale: python -m easel.cli.reference > docs/configuration.md"
    )
    for key in ("lora_rank", "snr_gamma", "offset_noise", "lr_warmup_steps", "class_data",
                "class_priors_dir", "validation_every_n_steps", "shards", "images_per_task"):
        assert f"| `{key}` |" in written, key  # fmt: skip


def test_every_link_stays_inside_the_repository():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), f"{page.name} links outside the repo: {target}"
            assert path.exists(), f"{page.name} links to a missing file: {target}"
        assert "shared/" not in page.read_text(), page.name
