"""What `easel --help` and `easel --version` tell a user, without running anything."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from easel.cli import main


def test_version_names_the_installed_package(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"easel {version('easel')}"


def test_help_says_what_easel_is_and_what_its_exit_codes_mean(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Prefect" in out and "MLflow" in out
    assert all(f"{code} " in out for code in ("0", "1", "2", "130"))
