"""The modules the build compiles (mypyc): which ones run compiled, and a compiled module older than its
source refused, so that an edited checkout never runs the code it had before the edit."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import gateway.native
from gateway.native import MODULES, compiled


def test_what_runs_compiled_is_what_the_process_imported_as_extension_modules() -> None:
    for module in MODULES:
        __import__(module)
        is_extension = sys.modules[module].__file__.endswith(tuple(EXTENSION_SUFFIXES))
        assert is_extension == (module in compiled()), module


def checkout(tmp_path: Path) -> tuple[dict, Path, Path]:
    """A copy of gateway/native.py in a package of its own, with one module's source and compiled file."""
    package = tmp_path / "gateway"
    (package / "limits").mkdir(parents=True)
    shutil.copy(gateway.native.__file__, package / "native.py")
    source = package / "limits" / "limiter.py"
    source.write_text("")
    so = package / "limits" / f"limiter{EXTENSION_SUFFIXES[0]}"
    so.write_bytes(b"")
    return runpy.run_path(str(package / "native.py")), source, so


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path: Path) -> None:
    native, source, so = checkout(tmp_path)
    os.utime(so, (1_000_000, 1_000_000))
    os.utime(source, (1_000_000 + native["STALE_AFTER_S"] + 1, 1_000_000 + native["STALE_AFTER_S"] + 1))
    with pytest.raises(ImportError, match=r"gateway/limits/limiter\.py changed after being compiled"):
        native["check_built"]()


def test_files_of_one_install_or_a_fresh_compile_pass(tmp_path: Path) -> None:
    native, source, so = checkout(tmp_path)
    os.utime(so, (1_000_000, 1_000_000))
    os.utime(source, (1_000_001, 1_000_001))  # written a second apart by one install: not an edit
    native["check_built"]()
    os.utime(so, (1_000_100, 1_000_100))  # compiled again after an edit
    native["check_built"]()
    so.unlink()  # a plain-Python install
    os.utime(source, (2_000_000, 2_000_000))
    native["check_built"]()


PLAIN_TESTS = [
    "tests/test_limits_hot_path.py",
    "tests/test_limits_units.py",
    "tests/test_logs_batching.py",
    "tests/test_logs_hardening.py",
    "tests/test_logs_record_values.py",
    "tests/test_logs_units.py",
    "tests/test_scrub_records.py",
]


def copy_checkout(dest: Path) -> None:
    """The checkout's files (as git lists them) without anything built: no compiled module, no virtualenv."""
    root = Path(gateway.native.ROOT)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    for name in filter(None, listed.split(b"\0")):
        relative = name.decode()
        if relative.startswith(("gateway/", "providers/", "tests/", "scripts/")) or "/" not in relative:
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, target)


def run_in(copy: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This Python run in a copy of the checkout, importing the copy's package (PYTHONPATH left out)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=copy,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def assert_plain(copy: Path) -> None:
    """The copy's package imports none of its modules compiled."""
    probe = run_in(copy, "-c", "import gateway.native as n; assert n.compiled() == [], n.compiled()")
    assert probe.returncode == 0, probe.stderr[-2000:]


@pytest.mark.parametrize("why", ["no C compiler", "OPEN_LLM_PROXY_PURE=1"])
def test_a_build_that_cannot_or_may_not_compile_leaves_all_modules_python(tmp_path: Path, why: str) -> None:
    copy_checkout(tmp_path)
    env = {"CC": "false"} if why == "no C compiler" else {"OPEN_LLM_PROXY_PURE": "1"}
    done = run_in(tmp_path, "setup.py", "build_ext", "--inplace", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [p for p in tmp_path.rglob("*.so") if "build" not in p.parts]  # none, not some
    if why == "no C compiler":
        assert "compiling failed" in done.stderr and "built as plain Python" in done.stderr
    assert_plain(tmp_path)


def test_the_plain_python_build_passes_the_tests_of_the_compiled_modules(tmp_path: Path) -> None:
    """Where no C compiler is at hand the install leaves the modules as Python: the tests of what they do pass
    on that build too (a copy of the checkout without its compiled files)."""
    copy_checkout(tmp_path)
    assert_plain(tmp_path)
    done = run_in(tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLAIN_TESTS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
