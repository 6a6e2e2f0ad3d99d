"""Delivery: the wheel, the "vendor the folder" route, and the CI rule that nothing skips."""

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PACKAGE = os.path.join(REPO, "udpcap_ctypes")


def package_modules():
    """``udpcap_ctypes/*.py`` as archive names, from the source tree."""
    return sorted("udpcap_ctypes/" + os.path.basename(p)
                  for p in glob.glob(os.path.join(PACKAGE, "*.py")))


def source_version():
    import udpcap_ctypes
    return udpcap_ctypes.__version__


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    try:
        import setuptools
        import wheel  # noqa: F401  (setuptools < 70.1 needs it for bdist_wheel)
    except ImportError as exc:
        pytest.skip("building the wheel needs setuptools>=61 and wheel: "
                    "python3 -m pip install 'setuptools>=61' wheel (%s)" % exc)
    if int(setuptools.__version__.split(".")[0]) < 61:
        pytest.skip("setuptools %s is too old: python3 -m pip install 'setuptools>=61'"
                    % setuptools.__version__)
    # Build from a copy so the work tree gets no build/ or *.egg-info (tests/ comes along on
    # purpose: it must not end up in the wheel).
    src = tmp_path_factory.mktemp("src") / "udpcap_ctypes-src"
    shutil.copytree(REPO, str(src), ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, "pip wheel failed:\n" + proc.stdout
    wheels = glob.glob(str(out / "*.whl"))
    assert len(wheels) == 1, "expected one wheel, got %s" % wheels
    return wheels[0]


def test_wheel_is_pure_python_and_named_by_version(wheel_path):
    assert os.path.basename(wheel_path) == "udpcap_ctypes-%s-py3-none-any.whl" % source_version()


def test_wheel_contains_every_module_and_py_typed_but_no_tests(wheel_path):
    with zipfile.ZipFile(wheel_path) as whl:
        names = whl.namelist()
        metadata_name = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(metadata_name[0]).decode() if metadata_name else ""
    modules = package_modules()
    assert "udpcap_ctypes/__init__.py" in modules
    missing = [m for m in modules + ["udpcap_ctypes/py.typed"] if m not in names]
    assert not missing, "wheel lacks %s" % missing
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.startswith("tools/")]
    assert "Requires-Python: >=3.8" in metadata
    assert "License: MIT" in metadata or "License-Expression: MIT" in metadata


VENDOR_SCRIPT = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import udpcap_ctypes
    modules = sorted(m.name for m in pkgutil.iter_modules(udpcap_ctypes.__path__))
    for name in modules:                      # every module imports with relative imports only
        importlib.import_module("udpcap_ctypes." + name)
    exports = {name: type(getattr(udpcap_ctypes, name)).__name__
               for name in udpcap_ctypes.__all__}
    print(json.dumps({"file": udpcap_ctypes.__file__, "modules": modules, "exports": exports,
                      "path": sys.path}))
""")


def test_vendored_folder_works_without_install(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(PACKAGE, str(app / "udpcap_ctypes"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    (app / "main.py").write_text(VENDOR_SCRIPT)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-s", "main.py"], cwd=str(app), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert os.path.dirname(report["file"]) == str(app / "udpcap_ctypes"), \
        "imported %s, not the vendored copy" % report["file"]
    assert REPO not in report["path"]
    expected_modules = sorted(os.path.basename(m)[:-3] for m in package_modules()
                              if not m.endswith("/__init__.py"))
    assert report["modules"] == expected_modules
    assert report["exports"]["UdpcapSocket"] == "type"
    assert report["exports"]["CaptureUnavailableError"] == "type"
    assert report["exports"]["__version__"] == "str"


STRICT_PROBE = textwrap.dedent("""
    import pytest

    def test_runs():
        assert 1 + 1 == 2

    def test_skips():
        pytest.skip("needs something this machine lacks")
""")


@pytest.mark.parametrize("strict_env", [{"CI": "true"}, {"UDPCAP_STRICT": "1"}, {}])
def test_ci_switch_turns_skips_into_failures(tmp_path, strict_env):
    """The conftest rule that keeps CI honest, run on a throw-away test file."""
    for name in ("conftest.py", "netns.py"):
        shutil.copy(os.path.join(HERE, name), str(tmp_path / name))
    (tmp_path / "test_probe.py").write_text(STRICT_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "UDPCAP_STRICT")}
    env.update(strict_env)
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rA", str(tmp_path / "test_probe.py")], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120)
    if strict_env:
        assert proc.returncode == 1, proc.stdout
        assert "1 failed, 1 passed" in proc.stdout
        assert "not allowed with CI=true" in proc.stdout
        assert "needs something this machine lacks" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout
        assert "1 passed, 1 skipped" in proc.stdout
