"""Options from a YAML file and command-line overrides, validated by a pydantic model (one clear error)."""

from __future__ import annotations

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
