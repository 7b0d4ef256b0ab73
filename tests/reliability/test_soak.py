"""The short soak (about 60 s; 30 s in the ASan build): scripts/soak's run, as CI's proof
that the mixed run of crashes, reloads, pauses, client kills and imports ends with every
figure at 0 (docs/RELIABILITY.md has the figures of a long run)."""

import json
import os
import subprocess
import sys

import pytest

from relharness import HERE, scale

pytestmark = pytest.mark.local_only


def test_short_soak_loses_doubles_and_alters_nothing(tmp_path):
    seconds = max(20, int(60 * scale()))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, str(HERE / "soak.py"), "--seconds", str(seconds),
                        "--dir", str(tmp_path / "soak"), "--json"],
                       capture_output=True, text=True, timeout=seconds + 240, env=env)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert figures["ok"]
    chk = figures["checker"]
    assert (chk["lost"], chk["duplicated"], chk["altered"], chk["phantom"]) == (0, 0, 0, 0)
    assert chk["digests_equal"] == chk["digests"] > 0
    assert figures["records_acked"] > 0 and figures["broker_runs"] >= 2
    assert figures["exact_subscriber"]["equal_to_store"]
