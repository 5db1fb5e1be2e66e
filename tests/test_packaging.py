"""The project as a user installs it: one top-level package `eagleeye`, the router and the client tool
without torch, the worker's dependencies behind the `detector` extra, `--version` on every program."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from eagleeye.api.detector.v1 import detector_pb2
from eagleeye.api.names import DETECTOR_SERVICE

ROOT = Path(__file__).resolve().parent.parent
WORKER_ONLY = ("torch", "nvidia-ml-py")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the files git knows or would add: setuptools keeps a build/ folder beside the sources, and a
    # file deleted from the checkout could still ship from there.
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "-w", str(out), str(source)], check=True, timeout=300)
    (found,) = out.glob("eagleeye-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed, its dependencies borrowed from this one.

    The borrowed site-packages is added as a plain path, so this checkout's editable install (an
    import hook set up by a .pth file there) does not reach into it: only the wheel provides `eagleeye`.
    """
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    yield venv


def run_in(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    # Not from the checkout: its top-level folders would be importable from the working directory.
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=venv, timeout=120)


def test_the_wheel_holds_only_the_eagleeye_package_and_its_typed_stubs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"eagleeye"}
    for stub in ("eagleeye/api/detector/v1/detector_pb2.pyi", "eagleeye/api/router/v1/router_pb2.pyi",
                 "eagleeye/api/detector/testing/v1/py.typed", "eagleeye/api/names.py",
                 "eagleeye/detector/defaultmodel/default.pt2"):
        assert stub in names
    assert not [n for n in names if n.startswith(("eagleeye/bench", "eagleeye/tests", "tests/", "bench/"))]


def test_torch_and_nvml_come_only_with_the_detector_extra(wheel: Path) -> None:
    metadata = zipfile.ZipFile(wheel).read(f"eagleeye-{VERSION}.dist-info/METADATA")
    requires = [line.split(":", 1)[1].strip() for line in metadata.decode().splitlines()
                if line.startswith("Requires-Dist:")]
    for name in WORKER_ONLY:
        lines = [r for r in requires if r.startswith(name)]
        assert lines and all('extra == "detector"' in r for r in lines), lines
    assert "Provides-Extra: detector" in metadata.decode()


def test_router_and_client_import_without_torch_and_top_level_folders_are_not_installed(installed: Path) -> None:
    done = run_in(installed, "import sys, eagleeye.router.__main__, eagleeye.client.__main__, eagleeye.client.load; "
                             "print(eagleeye.router.__main__.__file__); print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    where, torch_loaded = done.stdout.split()
    assert str(installed) in where and torch_loaded == "False"
    for name in ("api", "common", "client", "detector", "router", "harness", "scenes"):
        refused = run_in(installed, f"import {name}")
        assert refused.returncode != 0 and "ModuleNotFoundError" in refused.stderr, name


def test_every_program_answers_version_and_help(installed: Path) -> None:
    code = ("import sys; from importlib.metadata import entry_points; "
            "ep = {e.name: e for e in entry_points(group='console_scripts') if e.name.startswith('eagleeye')}; "
            "print(sorted(ep)); sys.argv = [sys.argv[1], *sys.argv[2:]]; ep[sys.argv[0]].load()(sys.argv[1:])")
    for program, args in (("eagleeye-router", ["--version"]), ("eagleeye-detector", ["--version"]),
                          ("eagleeye", ["--version"]), ("eagleeye", ["admin", "--help"])):
        done = subprocess.run([str(installed / "bin" / "python"), "-c", code, program, *args], capture_output=True,
                              text=True, cwd=installed, timeout=120)
        assert done.returncode == 0, (program, done.stderr)
        listed, _, rest = done.stdout.partition("\n")
        assert listed == str(["eagleeye", "eagleeye-detector", "eagleeye-router"])
        if args == ["--version"]:
            assert rest.strip() == f"{program} {VERSION}"
        else:
            assert "drain" in rest and "switch" in rest


def test_the_detector_service_name_is_the_generated_one() -> None:
    assert detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name == DETECTOR_SERVICE


def test_a_worker_without_torch_says_which_extra_it_needs(installed: Path) -> None:
    # This venv borrows torch from the development one: hide it, as a plain `pip install .` would lack it.
    done = run_in(installed, "import sys; sys.modules['torch'] = None; "
                             "from eagleeye.detector.__main__ import main; sys.exit(main(['--listen', '127.0.0.1:0']))")
    assert done.returncode == 2
    assert done.stderr.startswith("eagleeye-detector: torch is not installed: the worker needs the detector extra")
    assert "Traceback" not in done.stderr


def test_the_video_tool_without_pyav_says_which_extra_it_needs(installed: Path) -> None:
    done = run_in(installed, "import sys; sys.modules['av'] = None; from eagleeye.client.__main__ import main; "
                             "sys.exit(main(['video', 'clip.mp4', '--target', '127.0.0.1:1']))")
    assert done.returncode == 2 and "pip install 'eagleeye[video]'" in done.stderr and "Traceback" not in done.stderr
