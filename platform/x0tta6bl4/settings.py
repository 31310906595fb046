"""Options from a YAML file and command-line flags, validated by a pydantic model (one clear error)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from x0tta6bl4.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err.get("ctx", {}).get("error") is not None and isinstance(err["ctx"]["error"], ConfigError):
        msg = str(err["ctx"]["error"])
    return f"{where}: {msg}" if where else msg


def load_options(model: type[M], path: Path | None, overrides: dict[str, Any]) -> M:
    """YAML file (optional) + command-line overrides -> a validated ``model``, or ConfigError.

    Overrides that are None were not given and keep the file's or the default value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of options")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def add_field_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    names: Iterable[str],
    types: Mapping[str, Any] | None = None,
) -> None:
    """``--field-name VALUE`` flags for fields of ``model``, so flags, defaults and docs never drift.

    Each flag's help is the field's description plus its default (unless the description
    names one); an absent flag parses as None, so a config file's value stands.

    Args:
        parser: where the flags go.
        model: the pydantic model whose fields they set.
        names: the fields that get a flag.
        types: argparse ``type`` per field where the annotation's is not right (default: int and
            float fields parse as such, anything else as text).
    """
    for name in names:
        field = model.model_fields[name]
        kind: Any = (types or {}).get(name) or (field.annotation if field.annotation in (int, float) else str)
        description = field.description or ""
        if "default" not in description:
            description += f" (default: {field.get_default(call_default_factory=True)})"
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=description
        )


def add_switch(parser: argparse.ArgumentParser, flag: str, dest: str, value: bool, help: str) -> None:
    """A flag without a value that sets ``dest`` to ``value`` (None when absent: the file's value stands)."""
    parser.add_argument(flag, dest=dest, action="store_const", const=value, default=None, help=help)
