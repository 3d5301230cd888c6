"""A fresh machine sets itself up: `make demo` and `make test` first make sure the sandbox can
run, installing bubblewrap when this user can, else stopping within seconds in one line.
The package managers, sudo and bwrap are stand-ins on a PATH of their own: nothing is
installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "ensure-sandbox"
FAKE_BWRAP = "#!/bin/sh\necho 'bubblewrap 0.8.0'\n"


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A PATH with the real tools the script uses, but no bwrap, sudo or package manager
    unless given as `scripts` (name: shell script)."""
    directory = tmp_path / "bin"
    directory.mkdir(parents=True)
    for tool in ("sh", "awk", "grep", "id", "env", "prlimit", "chmod", "true"):
        if real := shutil.which(tool):
            (directory / tool).symlink_to(real)
    for name, body in scripts.items():
        path = directory / name.replace("_", "-")
        path.unlink(missing_ok=True)
        path.write_text(body)
        path.chmod(0o755)
    return directory


def ensure(directory: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([str(directory / "sh"), str(SCRIPT)], capture_output=True, text=True,
                         env={"PATH": str(directory)}, timeout=60)
    return res, time.monotonic() - start


def test_make_demo_and_make_test_check_the_sandbox_before_anything_else():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for target in ("demo", "test"):  # as a user types it, not as a sub-make of `make test`
        res = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert res.stdout.splitlines()[0] == "sh .ci/ensure-sandbox", res.stdout
    assert subprocess.run(["sh", str(SCRIPT)], capture_output=True).returncode == 0 or \
        shutil.which("bwrap") is None


def test_without_bubblewrap_a_user_who_cannot_install_it_is_told_in_one_line(tmp_path):
    for scripts in ({"id": "#!/bin/sh\necho 1000\n"},  # no sudo
                    {"id": "#!/bin/sh\necho 1000\n", "sudo": "#!/bin/sh\nexit 1\n"},  # password
                    {}):  # root, without apt-get or dnf
        res, seconds = ensure(fake_bin(tmp_path / str(len(scripts)), **scripts))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert "needs bwrap" in lines[0] and "apt-get install bubblewrap" in lines[0]
        assert seconds < 5


@pytest.mark.parametrize("who", ["root", "passwordless sudo"])
def test_without_bubblewrap_root_or_sudo_installs_it(tmp_path, who):
    log = tmp_path / "apt.log"
    apt = (f"#!/bin/sh\necho \"$@\" >> {log}\n"
           f"case \"$*\" in *install*) printf \"{FAKE_BWRAP}\" > {tmp_path}/bin/bwrap; "
           f"chmod +x {tmp_path}/bin/bwrap;; esac\n")
    scripts = {"apt_get": apt}
    if who != "root":
        scripts |= {"id": "#!/bin/sh\necho 1000\n",
                    "sudo": "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n"}
    directory = fake_bin(tmp_path, **scripts)
    res, seconds = ensure(directory)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == ["update -q", "install -y -q bubblewrap libseccomp2 "
                                            "util-linux"]
    assert (directory / "bwrap").exists() and seconds < 5
    res, _ = ensure(directory)  # now present: nothing to do
    assert res.returncode == 0 and log.read_text().count("install") == 1


def test_a_bubblewrap_older_than_0_8_counts_as_missing(tmp_path):
    directory = fake_bin(tmp_path, bwrap="#!/bin/sh\necho 'bubblewrap 0.4.0'\n",
                         id="#!/bin/sh\necho 1000\n")
    res, _ = ensure(directory)
    assert res.returncode == 1 and "bwrap 0.4.0 (too old)" in res.stderr
    os.environ.get("PATH")  # the suite's own PATH is untouched
