"""The repository is self-contained: its references resolve, its metadata agree, its API reference
builds, and its tests run from a checkout with either install mode."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT_DIRS = ("sbnn", "kernels", "docs", "benchmarks", "recipes", "tests")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".rst", ".cff", ".toml", ".txt"}


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CITATION.cff"]
    for d in TEXT_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            if path.suffix in TEXT_SUFFIXES and "_build" not in path.parts and "generated" not in path.parts:
                files.append(path)
    return files


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- references and metadata ------------------------------------------------------------------------

def _design_sections() -> set[str]:
    """Section numbers of docs/design.md, from its headings (``## 1. Model``, ``### 1.4 ...``)."""
    text = (ROOT / "docs" / "design.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))


def test_design_has_every_section():
    assert _design_sections() == {
        "1", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "2", "3", "4", "5", "6", "7"
    }


def test_every_design_reference_resolves():
    sections = _design_sections()
    cited = {}
    for path in _text_files():
        # "design.md §1.6, §7": every § number after a design.md mention on the same line
        for line in path.read_text(encoding="utf-8").splitlines():
            for tail in re.findall(r"design\.md (§[^)\n]*)", line):
                for number in re.findall(r"§(\d+(?:\.\d+)?)", tail):
                    cited.setdefault(number, path.relative_to(ROOT))
    assert cited, "no references found: the scan is broken"
    missing = {n: str(p) for n, p in cited.items() if n not in sections}
    assert not missing, f"docs/design.md has no section for these references: {missing}"


# Words about how the project was made. Built by concatenation so this file does not match itself.
PROCESS_WORDS = re.compile(
    "|".join([
        "DESIGN" + " §",
        r"\bissue" + r" [0-9]",
        "seed" + r" 00\d",
        "seeds" + "/",
        "proto" + "type",
        "cannot be" + " downloaded",
    ])
)


def test_no_process_words():
    found = []
    for path in _text_files():
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PROCESS_WORDS.search(line):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "text about how the project was made:\n" + "\n".join(found)


def test_license_and_citation_agree_with_pyproject():
    project = _pyproject()["project"]
    assert project["license"] == {"text": "MIT"}
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the sbnn developers" in license_text
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"message", "title", "authors"} <= cff.keys()
    assert cff["version"] == project["version"] and cff["license"] == "MIT"
    ids = {i["value"] for ref in cff["references"] for i in ref.get("identifiers", [])}
    assert {"arXiv:2505.17962", "arXiv:2002.10778"} <= ids


def test_changelog_has_unreleased_and_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert versions[0] == "Unreleased"
    assert _pyproject()["project"]["version"] in versions


# -- sbnn.kernels from a checkout ---------------------------------------------------------------------

_PROBE = (
    "import sys, sbnn, sbnn.kernels, sbnn.kernels.api, sbnn.export; "
    "from sbnn._checkout import CheckoutKernelsFinder; "
    "print(sbnn.__file__); print(sbnn.kernels.__file__); print(sbnn.kernels.api.__file__); "
    "print(any(isinstance(f, CheckoutKernelsFinder) for f in sys.meta_path))"
)


def _copy_sources(dst: Path, kernels_inside: bool) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "sbnn", dst / "sbnn", ignore=ignore)
    shutil.copytree(ROOT / "kernels", dst / ("sbnn/kernels" if kernels_inside else "kernels"), ignore=ignore)


def _probe(cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_checkout_layout_imports_its_own_kernels(tmp_path):
    """A checkout's sbnn (first on sys.path) takes sbnn.kernels from the checkout's kernels/,
    even with another sbnn installed: the situation of `python -m pytest` in a checkout."""
    _copy_sources(tmp_path, kernels_inside=False)
    sbnn_file, kernels_file, api_file, hooked = _probe(tmp_path)
    assert Path(sbnn_file) == tmp_path / "sbnn" / "__init__.py"
    assert Path(kernels_file) == tmp_path / "kernels" / "__init__.py"
    assert Path(api_file) == tmp_path / "kernels" / "api.py"
    assert hooked == "True"


def test_installed_layout_uses_the_plain_import_system(tmp_path):
    _copy_sources(tmp_path, kernels_inside=True)
    sbnn_file, kernels_file, api_file, hooked = _probe(tmp_path)
    assert Path(kernels_file) == tmp_path / "sbnn" / "kernels" / "__init__.py"
    assert Path(api_file) == tmp_path / "sbnn" / "kernels" / "api.py"
    assert hooked == "False"


@pytest.mark.slow
def test_tests_run_from_checkout_with_a_regular_install(tmp_path):
    """`pip install .` (not editable) into a fresh environment, then `python -m pytest` in the
    checkout: the suite collects and the kernels tests pass."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    # the dependencies come from this environment's site-packages, but not its .pth files (which
    # hold this checkout's editable install): a plain path line is not processed as a site dir
    import sysconfig

    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
        check=True,
    )
    installed = subprocess.run(
        [str(python), "-c", "import sbnn.kernels; print(sbnn.kernels.__file__)"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert Path(installed) == site / "sbnn" / "kernels" / "__init__.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    collect = subprocess.run(
        [str(python), "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    run = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-x", "-p", "no:randomly", "tests/kernels/test_api.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# -- API reference ------------------------------------------------------------------------------------

@pytest.mark.docs
def test_api_reference_builds_without_warnings(tmp_path):
    """The Sphinx API reference builds with warnings as errors (CI installs the docs extra)."""
    pytest.importorskip("sphinx")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "docs" / "api", src, ignore=shutil.ignore_patterns("_build", "generated"))
    out = tmp_path / "html"
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(out)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    # the package walk reached the subpackages, including the kernels and the functional layer
    pages = {p.name for p in (out / "generated").glob("*.html")}
    assert {"sbnn.html", "sbnn.functional.neurons.html", "sbnn.kernels.api.html", "sbnn.posterior.html"} <= pages
    assert "BernoulliSign" in (out / "generated" / "sbnn.posterior.html").read_text()
