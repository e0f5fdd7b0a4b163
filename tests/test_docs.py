"""The docs stand alone: the configuration reference matches the code, the README is a landing
page that links every page of docs/, and every link in the README, docs/ and bench/README.md
points at a file (and a heading) of this repository."""

from __future__ import annotations

import re
from pathlib import Path

from easel.cli.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_MAX_BYTES = 12 * 1024  # a landing page; the manual lives in docs/


def test_the_configuration_reference_is_the_code_s():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == reference_markdown(), (
        "docs/configuration.md is stale: python -m easel.cli.reference > docs/configuration.md"
    )
    for key in ("train.lora_rank", "train.snr_gamma", "train.offset_noise",
                "train.lr_warmup_steps", "prior_preservation.class_data",
                "prior_preservation.class_priors_dir", "validation.every_n_steps", "shards",
                "images_per_task"):
        assert f"| `{key}` |" in written, key  # fmt: skip


def headings(page: Path) -> set[str]:
    """The anchors of `page`'s headings, as GitHub writes them: lower case, punctuation
    dropped, spaces as hyphens (`## Sweep (`easel sweep`)` -> `sweep-easel-sweep`)."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_link_stays_inside_the_repository():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            assert not re.match(r"[a-z]+:", target), f"{page.name} links outside the repo: {target}"
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.is_relative_to(ROOT), f"{page.name} links outside the repo: {target}"
            assert path.exists(), f"{page.name} links to a missing file: {target}"
            if anchor and path.suffix == ".md":
                assert anchor in headings(path), f"{page.name} links to a missing heading: {target}"
        assert "shared/" not in page.read_text(), page.name


def test_the_readme_is_a_landing_page_that_links_every_docs_page():
    assert README.stat().st_size <= README_MAX_BYTES, (
        f"README.md is {README.stat().st_size} bytes, over {README_MAX_BYTES}: move detail to docs/"
    )
    links = LINK.findall(README.read_text())
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links}
    unlinked = [page.name for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
