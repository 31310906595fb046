"""The quality gates of `make lint` run as tests, so CI (`make test`) guards them too."""

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "platform", "jobs", "tests"],
        ["ruff", "format", "--check", "platform", "jobs", "tests"],
        ["mypy"],
    ],
    ids=["ruff", "ruff-format", "mypy-strict"],
)
def test_quality_gate_passes(command):
    proc = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_platform_is_a_source_root_not_a_package():
    # platform/__init__.py would shadow the standard library's `platform` module.
    assert not (REPO / "platform" / "__init__.py").exists()


# ------------------------------------------------------------------------------ the layer contract
PACKAGE = "x0tta6bl4"
SOURCE = REPO / "platform"
ARCHITECTURE = REPO / "docs" / "architecture.md"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One line of docs/architecture.md's ``layers`` block: its rank and its packages' groups."""

    rank: int
    name: str
    independent: bool
    members: tuple[str, ...]


def _layers() -> list[Layer]:
    """The ``layers`` block of docs/architecture.md, bottom first."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"```layers\n(.*?)```", text, re.DOTALL)
    assert match, "docs/architecture.md has no ```layers block"
    layers = []
    for rank, line in enumerate(filter(str.strip, match.group(1).splitlines())):
        name, _, spec = line.partition(":")
        independent = "|" in spec
        members = tuple(m for m in spec.replace("|", " ").split())
        layers.append(Layer(rank, name.strip(), independent, members))
    return layers


def _placement(module: str, layers: list[Layer]) -> tuple[Layer, str] | None:
    """The layer and the member (longest matching name) a module belongs to."""
    best: tuple[Layer, str] | None = None
    for layer in layers:
        for member in layer.members:
            covers = module == member or (member != PACKAGE and module.startswith(member + "."))
            if covers and (best is None or len(member) > len(best[1])):
                best = (layer, member)
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of the package in a file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - (node.level - (1 if is_package else 0))]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # `from pkg import name` may import a submodule; private names are checked as such.
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name.startswith("_")]
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def _private_owner(imported: str) -> str | None:
    """The package a private module (a ``_name`` part, not a dunder) belongs to, if it is one."""
    parts = imported.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_architecture_places_every_module_of_the_package():
    layers = _layers()
    assert layers[0].name == "foundation"
    unplaced = [m for m in _modules() if _placement(m, layers) is None]
    assert not unplaced, f"modules docs/architecture.md's layers block does not place: {unplaced}"


def test_imports_point_down_the_layers_and_never_into_another_packages_private_modules():
    layers = _layers()
    violations = []
    for module, path in _modules().items():
        here = _placement(module, layers)
        assert here is not None
        for line, imported in _imports(module, path):
            where = f"{path.relative_to(REPO)}:{line}: {module} imports {imported}"
            owner = _private_owner(imported)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                violations.append(f"{where} (private to {owner})")
            there = _placement(imported, layers)
            if there is None or there[1] == here[1]:
                continue
            if there[0].rank > here[0].rank:
                violations.append(f"{where} (upward: {here[0].name} -> {there[0].name})")
            elif there[0] is here[0] and here[0].independent:
                violations.append(f"{where} ({here[1]} and {there[1]} are independent)")
    assert not violations, "layer contract (docs/architecture.md) broken:\n" + "\n".join(violations)


def test_the_layer_check_catches_upward_sibling_and_private_imports():
    # The checker itself must be able to fail: a rank, an independence and a privacy violation.
    layers = _layers()
    mesh, serve, rag = (
        _placement(m, layers) for m in ("x0tta6bl4.mesh.shard", "x0tta6bl4.serve.app", "x0tta6bl4.rag")
    )
    telemetry = _placement("x0tta6bl4.telemetry.source", layers)
    frame = _placement("x0tta6bl4.telemetry.frame", layers)
    assert mesh and serve and rag and telemetry and frame
    assert serve[0].rank > mesh[0].rank > frame[0].rank  # mesh importing serve would be upward
    assert mesh[0] is telemetry[0] and mesh[0].independent  # mesh importing telemetry sources is refused
    assert frame[1] == "x0tta6bl4.telemetry.frame"  # the longest name wins
    assert _placement("x0tta6bl4.unknown", layers) is None  # the root entry does not cover the package
    assert _private_owner("x0tta6bl4.serve._private.batching") == "x0tta6bl4.serve"
    assert _private_owner("x0tta6bl4.telemetry._histogram") == "x0tta6bl4.telemetry"
    assert _private_owner("x0tta6bl4.serve.app") is None


def test_no_module_is_oversized_without_saying_why():
    # Over 600 lines a module must say in its docstring why it is one unit ("one unit").
    oversized = []
    for path in _modules().values():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > 600 and "one unit" not in doc:
            oversized.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not oversized, (
        f"split these modules by concern, or say in the docstring why each is one unit: {oversized}"
    )


def test_every_module_starts_with_a_one_line_summary():
    missing = []
    for module, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not doc.strip() or not doc.splitlines()[0].strip():
            missing.append(module)
    assert not missing, f"modules without a one-line docstring: {missing}"
