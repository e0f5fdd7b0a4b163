"""The `easel` process pauses Python's garbage collector around first imports and freezes
what they made (easel/startup.py); anywhere else the module does nothing."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from easel import startup


@pytest.fixture
def process_state():
    """Undo what a test does to this process's collector."""
    yield
    startup._began = False
    gc.unfreeze()
    gc.enable()


def test_outside_the_easel_process_nothing_changes(process_state):
    frozen = gc.get_freeze_count()
    with startup.importing():
        assert gc.isenabled()
        import json  # noqa: F401
    startup.before_exit()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_in_the_easel_process_imports_run_paused_and_end_frozen(process_state):
    startup.begin()
    frozen = gc.get_freeze_count()
    with startup.importing():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]  # tracked objects the block creates
    assert gc.isenabled(), "the collector runs again after the imports"
    assert gc.get_freeze_count() >= frozen + len(made)


def test_the_collector_is_back_even_when_an_import_fails(process_state):
    startup.begin()
    with pytest.raises(ModuleNotFoundError), startup.importing():
        import easel_no_such_module  # noqa: F401
    assert gc.isenabled()


def test_the_easel_command_runs_its_work_with_the_collector_on(tmp_path):
    """The command itself (`cli.main()` without arguments): its command's module imported
    paused and frozen, its work run with the collector on."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import gc, sys\n"
        "from easel import cli\n"
        "def command_function(run):\n"
        "    assert not gc.isenabled()\n"
        "    return lambda args: print(gc.isenabled(), gc.get_freeze_count() > 0) or 0\n"
        "cli.command_function = command_function\n"
        "sys.argv = ['easel', 'sweep', 'm.parquet', '--out', 'out']\n"
        "sys.exit(cli.main())\n"
    )
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
