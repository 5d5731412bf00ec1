"""scripts/progress.sh: a long quiet step (pip compiling llama.cpp for ~17 minutes) prints a
line a minute saying what it does, and its exit status is the step's own."""

from __future__ import annotations

import subprocess

from tests.support.processes import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"


def progress(*command: str, interval_s: str = "1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / "progress.sh"), "compiling llama.cpp", *command],
        env={"PATH": "/usr/bin:/bin", "FOOTPRINT_PROGRESS_INTERVAL_S": interval_s},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_long_step_says_what_it_does_about_once_an_interval() -> None:
    result = progress("bash", "-c", "sleep 3.5; echo built")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[-1] == "built"
    ticks = lines[:-1]
    assert ticks, lines  # one a second over 3.5 s: at least one, however loaded the machine
    assert all(t.startswith("setup: still compiling llama.cpp (0m0") for t in ticks)


def test_a_quick_step_prints_nothing_of_its_own_and_its_status_is_kept() -> None:
    result = progress("bash", "-c", "exit 3", interval_s="60")
    assert result.returncode == 3
    assert result.stdout == ""


def test_the_setup_script_installs_through_it_and_says_where_footprint_is() -> None:
    setup = (SCRIPTS / "setup.sh").read_text()
    install = next(line for line in setup.splitlines() if "pip install -q -e" in line)
    assert install.startswith('bash scripts/progress.sh "$what" ')
    assert "16–17.5 min" in setup  # the measured time, not the old "about 8 minutes"
    assert ".venv/bin/activate" in setup
