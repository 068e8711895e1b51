"""The suite's own set-up: modules that share module fixtures really run on one worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("test_suite_grouping")


def test_loadgroup_keeps_marked_modules_on_one_worker(request: pytest.FixtureRequest) -> None:
    """Modules marked `xdist_group` share a module fixture (an infra stack, a Prefect server).

    pytest-xdist 3.8 groups them by appending `@group` to node IDs, which pytest 9.2 no
    longer reads (https://github.com/pytest-dev/pytest-xdist/issues/1386): the modules were
    split across workers and each started its own stack, silently. requirements-dev.txt pins
    a pytest that works; this test fails if an upgrade loses the grouping again.
    """
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup (e.g. -n 0)")
    assert request.node.nodeid.endswith("@test_suite_grouping"), (
        f"--dist loadgroup did not group {request.node.nodeid}: see pytest-dev/pytest-xdist#1386")
