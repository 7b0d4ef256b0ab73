"""Command line and configuration: --check-config, --version, --help, bad options, bad
config files (PATH:LINE: message, exit 78), one daemon per state directory."""

import re
import subprocess

import pytest

from coordlib import ACCEPTED, default_config, expect_ack, render_config

pytestmark = pytest.mark.local_only

EX_CONFIG = 78


def run(binary, *args, timeout=20):
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def good_config_lines(tmp_path):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return render_config(default_config(state, f"ipc://{tmp_path}/ingest.sock")).split("\n")


def insert_after(lines, anchor, new_lines):
    """Insert new_lines after the line equal to `anchor`; returns (lines, first new line
    number, 1-based)."""
    i = lines.index(anchor)
    return lines[:i + 1] + new_lines + lines[i + 1:], i + 2


def replace_line(lines, prefix, new_line):
    i = next(n for n, line in enumerate(lines) if line.startswith(prefix))
    return lines[:i] + [new_line] + lines[i + 1:], i + 1


# name -> function(lines) -> (lines, acceptable line numbers)
BAD = {
    "unknown_key": lambda L: _one(insert_after(L, "[ingest]", ["max_mesage_bytes = 4096"])),
    "unknown_section": lambda L: _two(insert_after(L, "", ["[ingest2]", "endpoint = x"])),
    "bad_integer": lambda L: _one(replace_line(L, "max_batch =", "max_batch = lots")),
    "out_of_range": lambda L: _one(replace_line(L, "max_message_bytes =",
                                                "max_message_bytes = 10")),
    "bad_size": lambda L: _one(replace_line(L, "map_size =", "map_size = 64 potatoes")),
    "bad_sync": lambda L: _one(replace_line(L, "sync =", "sync = sometimes")),
    "bad_log_level": lambda L: _one(replace_line(L, "log_level =", "log_level = loud")),
    "duplicate_key": lambda L: _one(insert_after(L, "hwm = 10000", ["hwm = 5000"])),
    "bad_council_id": lambda L: _any3(insert_after(
        L, "", ["[council.C99]", "name = Upper Case", "country = FR"])),
    "bad_council_country": lambda L: _one(_replace_in_section(L, "[council.c03]", "country =",
                                                              "country = XX")),
    "lower_case_council_country": lambda L: _one(_replace_in_section(
        L, "[council.c04]", "country =", "country = gb")),
    "duplicate_council": lambda L: _any3(
        (L + ["[council.c01]", "name = Again", "country = FR"], len(L) + 1)),
    "unknown_council_key": lambda L: _one(insert_after(L, "[council.c02]", ["colour = red"])),
    "line_without_equals": lambda L: _one(insert_after(L, "[store]", ["this is not a key"])),
    "key_before_any_section": lambda L: ([L[0], "orphan = 1"] + L[1:], {2}),
}


def _one(pair):
    lines, n = pair
    return lines, {n}


def _two(pair):
    lines, n = pair
    return lines, {n, n + 1}


def _any3(pair):
    lines, n = pair
    return lines, {n, n + 1, n + 2}


def _replace_in_section(lines, section, prefix, new_line):
    start = lines.index(section)
    i = next(n for n in range(start, len(lines)) if lines[n].startswith(prefix))
    return lines[:i] + [new_line] + lines[i + 1:], i + 1


def error_lines(stderr, path):
    """Line numbers of `PATH:LINE: message` records in stderr."""
    return {int(m.group(1)) for m in re.finditer(re.escape(str(path)) + r":(\d+): \S", stderr)}


def write_bad(tmp_path, name):
    lines, expected = BAD[name](good_config_lines(tmp_path))
    path = tmp_path / f"{name}.conf"
    path.write_text("\n".join(lines))
    return path, expected


def test_check_config_accepts_good_config(coordd_bin, tmp_path):
    path = tmp_path / "good.conf"
    path.write_text("\n".join(good_config_lines(tmp_path)))
    r = run(coordd_bin, "--check-config", str(path))
    assert r.returncode == 0, f"exit {r.returncode}; stderr:\n{r.stderr}"
    assert not error_lines(r.stderr, path), r.stderr


def test_check_config_accepts_comments_and_sizes(coordd_bin, tmp_path):
    lines = good_config_lines(tmp_path)
    lines, _ = replace_line(lines, "map_size =", "map_size = 128M   ; inline comment")
    lines, _ = replace_line(lines, "max_message_bytes =", "max_message_bytes = 64KiB")
    lines = ["; a comment", "# another comment", ""] + lines
    path = tmp_path / "comments.conf"
    path.write_text("\n".join(lines))
    r = run(coordd_bin, "--check-config", str(path))
    assert r.returncode == 0, f"exit {r.returncode}; stderr:\n{r.stderr}"


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_config_names_the_bad_line(coordd_bin, tmp_path, name):
    path, expected = write_bad(tmp_path, name)
    r = run(coordd_bin, "--check-config", str(path))
    assert r.returncode == EX_CONFIG, f"exit {r.returncode}; stderr:\n{r.stderr}"
    found = error_lines(r.stderr, path)
    assert found & expected, (f"expected '{path}:LINE: message' with LINE in {sorted(expected)};"
                              f" stderr:\n{r.stderr}")


@pytest.mark.parametrize("name", ["unknown_key", "bad_council_country", "duplicate_council"])
def test_bad_config_at_startup_exits_78(coordd_factory, tmp_path, name):
    path, expected = write_bad(tmp_path, name)
    d = coordd_factory(name, config_text=path.read_text(), start=False)
    d.start(wait_ready=False)
    status = d.wait_exit(20)
    assert status == EX_CONFIG, f"exit {status}; stderr:\n{d.stderr()}"
    assert not d.ready_seen(), "READY=1 sent with a bad config"
    assert error_lines(d.stderr(), d.config_path) & expected, d.stderr()


def test_check_config_missing_file(coordd_bin, tmp_path):
    path = tmp_path / "does-not-exist.conf"
    r = run(coordd_bin, "--check-config", str(path))
    assert r.returncode != 0
    assert str(path) in r.stderr, r.stderr


def test_check_config_while_daemon_runs(coordd):
    """Validating the running daemon's file (before a reload) touches neither its socket
    nor its store."""
    r = run(coordd.binary, "--check-config", str(coordd.config_path))
    assert r.returncode == 0, f"exit {r.returncode}; stderr:\n{r.stderr}"
    with coordd.council("c01") as c:
        expect_ack(c.request(c.env("event")), ACCEPTED)


def test_version(coordd_bin):
    r = run(coordd_bin, "--version")
    assert r.returncode == 0, r.stderr
    assert "coordd 0.1.0" in r.stdout.splitlines(), f"stdout: {r.stdout!r}"


def test_help(coordd_bin):
    r = run(coordd_bin, "--help")
    assert r.returncode == 0, r.stderr
    for option in ("--config", "--check-config", "--version", "--help"):
        assert option in r.stdout, f"--help does not mention {option}: {r.stdout!r}"


@pytest.mark.parametrize("args", [["--no-such-option"], ["--config"], ["-Z"]],
                         ids=["unknown_long", "missing_argument", "unknown_short"])
def test_usage_error(coordd_bin, args):
    r = run(coordd_bin, *args)
    assert r.returncode in (2, 64), f"exit {r.returncode} for {args}; stderr:\n{r.stderr}"
    assert r.stderr.strip(), "a usage error says something on stderr"


def test_second_daemon_on_same_state_dir_is_refused(coordd_factory):
    first = coordd_factory("first")
    second = coordd_factory("second", state_dir=first.state_dir, start=False)
    assert second.endpoint != first.endpoint
    second.start(wait_ready=False)
    status = second.wait_exit(20)
    assert status not in (0, None) and status > 0, (
        f"second daemon exit status {status}; stderr:\n{second.stderr()}")
    assert not second.ready_seen(), "the second daemon reported READY=1"
    assert re.search(r"another coordd|already|lock|in use|held", second.stderr(), re.I), (
        f"no word about the other daemon in stderr:\n{second.stderr()}")
    with first.council("c01") as c:
        expect_ack(c.request(c.env("event")), ACCEPTED, seq=1)
    with first.store() as store:
        assert store.item_count() == 1
