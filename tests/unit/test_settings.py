"""The option loader: YAML plus flags into a pydantic model, one readable ConfigError when invalid."""

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.settings import add_field_flags, add_switch, load_options


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=3, gt=0, description="how many")
    rate_s: float = Field(default=0.5, description="seconds between ticks")
    name: str = Field(default="x", description="a label (default: x)")
    verbose: bool = Field(default=False, description="talk more")


def test_flags_win_over_the_file_and_absent_flags_keep_its_values(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("size: 7\nname: from-file\n")
    options = load_options(Options, path, {"size": 9, "name": None})
    assert (options.size, options.name, options.rate_s) == (9, "from-file", 0.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size: [unclosed", "not valid YAML (line 1)"),
        ("- a\n- list\n", "must hold a mapping"),
        ("size: 0\n", "size: Input should be greater than 0"),
        ("sise: 4\n", "sise: Extra inputs are not permitted"),
    ],
)
def test_a_bad_file_is_one_readable_config_error(tmp_path, text, message):
    path = tmp_path / "options.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_options(Options, path, {})


def test_a_missing_file_is_named():
    with pytest.raises(ConfigError, match=re.escape("does-not-exist.yaml does not exist")):
        load_options(Options, Path("does-not-exist.yaml"), {})


def test_generated_flags_parse_with_the_fields_types_and_document_their_defaults():
    parser = argparse.ArgumentParser()
    add_field_flags(parser, Options, ("size", "rate_s", "name"))
    add_switch(parser, "--verbose", "verbose", True, "talk more")
    args = parser.parse_args(["--size", "4", "--rate-s", "0.25"])
    assert (args.size, args.rate_s, args.name, args.verbose) == (4, 0.25, None, None)
    assert parser.parse_args(["--verbose"]).verbose is True
    help_text = parser.format_help()
    assert "how many (default: 3)" in help_text
    assert "a label (default: x)" in help_text and "(default: x) (default" not in help_text
