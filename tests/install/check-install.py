"""check-install BUILD_DIR SOURCE_DIR: `meson install --destdir` into a temporary directory
and check that every file an operator needs is where docs/OPERATIONS.md ("Install") says,
under the build's own prefix and directories, and that the man pages render.

Run by `meson test install` (suite install) with /usr/bin/python3. Exit 0 when all is in
place; otherwise every missing or wrong file is printed and the exit status is 1."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MAN_PAGES = [("coordd", "8"), ("coordctl", "1"), ("coord-push", "1"), ("coord-watch", "1"),
             ("coordd.conf", "5")]


def main():
    build, source = Path(sys.argv[1]), Path(sys.argv[2])
    opts = {o["name"]: o["value"] for o in json.loads(subprocess.run(
        ["meson", "introspect", "--buildoptions", str(build)], check=True,
        capture_output=True, text=True, timeout=60).stdout)}
    prefix = Path(opts["prefix"])

    def under(option):
        p = Path(opts[option])
        return p if p.is_absolute() else prefix / p

    problems = []
    with tempfile.TemporaryDirectory(prefix="coordd-install-") as tmp:
        dest = Path(tmp)
        p = subprocess.run(["meson", "install", "-C", str(build), "--no-rebuild", "--quiet",
                            "--destdir", str(dest)], capture_output=True, text=True,
                           timeout=300)
        if p.returncode != 0:
            print(f"meson install failed ({p.returncode}):\n{p.stdout}{p.stderr}")
            return 1

        def root(path):
            return dest / Path(path).relative_to("/")

        def need(path, executable=False):
            f = root(path)
            if not f.exists():
                problems.append(f"missing: {path}")
            elif executable and not os.access(f, os.X_OK):
                problems.append(f"not executable: {path}")
            return f

        coordd = need(under("sbindir") / "coordd", executable=True)
        for tool in ("coordctl", "coord-push", "coord-watch"):
            need(under("bindir") / tool, executable=True)
        libdir = under("libdir")
        need(libdir / "libcoord.so.0", executable=False)
        need(libdir / "libcoord.so")
        pc = need(libdir / "pkgconfig" / "libcoord.pc")
        need(under("includedir") / "coord.h")
        conf = need(under("sysconfdir") / "coordd" / "coordd.conf")
        # systemd's own search paths under this prefix (lib/systemd/system, lib/sysusers.d).
        unit = need(prefix / "lib" / "systemd" / "system" / "coordd.service")
        need(prefix / "lib" / "sysusers.d" / "coordd.conf")
        for name, section in MAN_PAGES:
            page = need(under("mandir") / f"man{section}" / f"{name}.{section}")
            if not page.exists():
                continue
            r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                               text=True, timeout=60,
                               env=dict(os.environ, MANWIDTH="80", MANPAGER="cat",
                                        LC_ALL="C.UTF-8"))
            if r.returncode != 0 or "NAME" not in r.stdout or len(r.stdout) < 500:
                problems.append(f"man page {page.name} does not render: {r.stderr!r}")
            elif r.stderr.strip():
                problems.append(f"man page {page.name}: warnings: {r.stderr.strip()}")

        if unit.exists():
            text = unit.read_text()
            if f"ExecStart={under('sbindir') / 'coordd'}" not in text:
                problems.append(f"coordd.service does not start {under('sbindir')}/coordd")
        if conf.exists() and conf.read_bytes() != (source / "config" / "coordd.conf").read_bytes():
            problems.append("the installed coordd.conf is not config/coordd.conf")
        if pc.exists() and f"prefix={prefix}" not in pc.read_text():
            problems.append(f"libcoord.pc does not name prefix {prefix}")
        if coordd.exists():
            r = subprocess.run([str(coordd), "--version"], capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0 or not r.stdout.startswith("coordd "):
                problems.append(f"installed coordd --version failed: {r.stdout}{r.stderr}")
            r = subprocess.run([str(coordd), "--check-config", str(conf)],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                problems.append(f"the installed default config does not check: {r.stderr}")

    for line in problems:
        print(line)
    if not problems:
        print(f"install under {prefix}: every file in place, man pages render")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
