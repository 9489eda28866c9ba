"""Builds run nothing of the user's, or of a package's, on the host.

The package index here is a local folder (PIP_FIND_LINKS with PIP_NO_INDEX), so these tests
need no network: it holds a wheel, and an sdist whose setup.py would leave a marker if run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from taskorch.functions import BuildError, LocalRuntime
from tests.hostile.conftest import build, needs_root

pytestmark = needs_root


def make_wheel(folder: Path, name: str, version: str, module: str) -> None:
    files = {
        f"{name}/__init__.py": module,
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def make_sdist(folder: Path, name: str, version: str, marker: Path) -> None:
    setup = (
        f"open({str(marker)!r}, 'w').write('setup.py ran on the host')\n"
        f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n"
    )
    files = {
        f"{name}-{version}/setup.py": setup,
        f"{name}-{version}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    with tarfile.open(folder / f"{name}-{version}.tar.gz", "w:gz") as sdist:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))


@pytest.fixture
def index(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    folder = tmp_path_factory.mktemp("index")
    marker = folder / "MARKER"
    make_wheel(folder, "goodpkg", "1.0", "VALUE = 'from a wheel'\n")
    make_sdist(folder, "evilpkg", "1.0", marker)
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return marker


@pytest.mark.parametrize(
    "line",
    [
        "tmp/../../fn_victim/evil",
        "./fn_victim",
        "fn_victim/evil==1.0",
        "/etc/passwd",
        "-e .",
        "--index-url=http://127.0.0.1:6379/",
        "evil @ file:///tmp/evil",
        "evil==1.0 ; python_version > '3'",
        "goodpkg",  # a name without a version
    ],
)
async def test_requirements_beyond_name_and_version_are_refused(
    rt: LocalRuntime, base_dir: Path, index: Path, line: str
) -> None:
    # A victim whose folder the relative path of the original attack pointed at.
    await build(rt, "fn_victim", "python", "def handler(event, context):\n    return 'victim'\n")
    before = json.dumps(sorted(p.name for p in (base_dir / "fn_victim").iterdir()))

    with pytest.raises(BuildError, match="is not allowed"):
        await build(
            rt, "fn_attacker", "python", "def handler(e, c):\n    return 1\n", requirements=line
        )

    assert json.dumps(sorted(p.name for p in (base_dir / "fn_victim").iterdir())) == before
    assert await rt.invoke("fn_victim", None) == "victim"
    assert not index.exists()


async def test_a_requirement_without_a_wheel_fails_and_runs_nothing(
    rt: LocalRuntime, index: Path
) -> None:
    with pytest.raises(BuildError) as caught:
        await build(
            rt,
            "fn_sdist",
            "python",
            "def handler(e, c):\n    return 1\n",
            requirements="evilpkg==1.0",
        )

    assert "no wheel of evilpkg==1.0" in caught.value.message
    assert "nothing is built from source" in caught.value.message
    assert not index.exists(), "a package's setup.py ran on the host"


async def test_wheels_are_installed_in_the_sandbox(
    rt: LocalRuntime, base_dir: Path, index: Path
) -> None:
    code = "import goodpkg\ndef handler(event, context):\n    return goodpkg.VALUE\n"
    await build(rt, "fn_wheel", "python", code, requirements="goodpkg==1.0  # pinned\n")

    assert await rt.invoke("fn_wheel", None) == "from a wheel"
    assert (base_dir / "fn_wheel" / "deps" / "goodpkg" / "__init__.py").is_file()
    assert not (base_dir / "fn_wheel" / "wheels").exists()
