"""Fixtures for the reliability tests (docs/RELIABILITY.md).

They reuse the integration tests' Daemon (tests/integration/conftest.py: a real coordd on
ipc:// endpoints in tmp_path, READY=1 over sd_notify, SIGTERM at teardown must exit 0 and
no run's stderr may hold a sanitizer report), loaded under another module name so the two
conftest files do not clash. `rel` adds client processes (relharness.Cluster).

Environment: COORDD_BIN, COORD_PB2_DIR, COORD_PUSH_BIN (meson sets them), COORDD_WRAPPER
(run the daemon under valgrind, see docs/RELIABILITY.md), COORD_REL_SCALE (scenario size
factor; the ASan build runs with 0.5).
"""

import resource
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import relharness  # noqa: E402,F401  (import paths first)
import cluster  # noqa: E402

it_conftest = cluster.it_conftest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "local_only: needs a local coordd binary and its state directory")
    # Hundreds of connections: the daemon and the worker processes inherit this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture
def rel(tmp_path):
    """make(overrides=None, **kw) -> cluster.Cluster with a running daemon. Teardown stops
    the client processes, then the daemons (each must exit 0, no sanitizer report)."""
    binary = it_conftest.coordd_binary()
    made = []

    def make(name="d", overrides=None, **kw):
        d = it_conftest.Daemon(binary, tmp_path / name, overrides=overrides)
        c = cluster.Cluster(d, tmp_path / (name + "-clients"), **kw)
        made.append(c)
        d.start()
        return c

    yield make
    problems = []
    for c in made:
        problems.extend(c.cleanup())
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
