"""The image test's first run on a fresh machine makes a base image with debootstrap and builds
the image with pip inside it: it must be given the time those steps may take, not the suite's
per-test default (that ended in ERROR). Checked on every machine, podman or not."""

from __future__ import annotations

import tomllib

from tests.deploy import test_image
from tests.deploy.conftest import ROOT


def test_the_image_tests_first_run_is_given_the_time_its_steps_may_take() -> None:
    marks = {mark.name: mark for mark in test_image.pytestmark}
    given_s = marks["timeout"].args[0]
    steps_s = (
        test_image.DEBOOTSTRAP_TIMEOUT_S + test_image.IMPORT_TIMEOUT_S + test_image.BUILD_TIMEOUT_S
    )
    assert given_s > steps_s
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    assert steps_s > pytest_options["ini_options"]["timeout"]  # why the module needs its own
