"""scripts/setup.sh's .pth puts Debian's ``bcc`` on the venv's path, and nothing else of Debian's dist-packages."""

import importlib.util
import sys
import sysconfig
from pathlib import Path

import pytest

DEBIAN = Path("/usr/lib/python3/dist-packages")
PTH = Path(sysconfig.get_paths()["purelib"]) / "zz_debian_bcc.pth"

pytestmark = [
    pytest.mark.skipif(
        not (DEBIAN / "bcc").is_dir(),
        reason="python3-bpfcc is not installed (no /usr/lib/python3/dist-packages/bcc): nothing to expose",
    ),
    pytest.mark.skipif(
        sys.prefix == sys.base_prefix, reason="not in a virtualenv (scripts/setup.sh makes .venv)"
    ),
]


def _pth_dirs() -> list[Path]:
    assert PTH.is_file(), f"{PTH} is missing: run scripts/setup.sh"
    lines = [line.strip() for line in PTH.read_text().splitlines()]
    return [Path(line) for line in lines if line and not line.startswith("#")]


def _debian_modules() -> set[str]:
    """Top-level module names Debian's dist-packages would provide, bcc excepted."""
    names = set()
    for entry in DEBIAN.iterdir():
        if entry.name == "__pycache__" or entry.name.endswith((".pth", "-info", "-stubs")):
            continue
        name = entry.name.split(".")[0]
        if name.isidentifier():
            names.add(name)
    return names - {"bcc"}


def test_the_pth_lists_one_directory_that_holds_only_the_bcc_link():
    dirs = _pth_dirs()
    assert len(dirs) == 1, dirs
    (linkdir,) = dirs
    assert not PTH.read_text().lstrip().startswith("import"), "the .pth must not run code"
    assert sorted(p.name for p in linkdir.iterdir()) == ["bcc"]
    assert (linkdir / "bcc").resolve() == (DEBIAN / "bcc").resolve()


def test_debian_dist_packages_is_not_on_the_path():
    assert all(Path(p).resolve() != DEBIAN.resolve() for p in sys.path if p), sys.path


def test_bcc_resolves_through_the_link():
    spec = importlib.util.find_spec("bcc")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent.parent == _pth_dirs()[0]


def test_no_other_debian_module_is_importable_from_debian():
    if (DEBIAN / "apt").is_dir():
        assert importlib.util.find_spec("apt") is None  # python3-apt: in Debian only
    leaked = {}
    for name in sorted(_debian_modules()):
        spec = importlib.util.find_spec(name)
        where = [] if spec is None else [spec.origin or "", *(spec.submodule_search_locations or [])]
        if any(str(w).startswith(str(DEBIAN)) for w in where):
            leaked[name] = where
    assert not leaked, f"imported from {DEBIAN}: {leaked}"
