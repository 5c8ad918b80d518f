"""YAML files with `base:` inheritance + dotted command-line overrides -> one `VCellConfig`.

Resolution order (later wins): schema defaults < base files (outermost first) < the file <
`key.path=value` overrides. Every key remembers where it was set, so an error can say
"unknown key 'data.synth.cels' in configs/experiments/x.yaml (did you mean 'cells'?)".
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vcell.config.schema import VCellConfig
from vcell.config.tune import TuneSection
from vcell.errors import VCellError
from vcell.files import atomic_write, shipped_folder
from vcell.trees import merge_trees

COMMAND_LINE = "the command line"
PACKAGE_CONFIGS = shipped_folder("configs")
DEFAULT_CONFIG = PACKAGE_CONFIGS / "experiments" / "quickstart.yaml"
# pydantic reports a value no member of a union accepts once per member, the member's name
# appended to the key: ('model', 'batch_covariate', "literal['auto']")
UNION_MEMBER = re.compile(r"^(bool|int|float|str|none|[a-z-]+\[.*\])$")


def default_config_path() -> Path | None:
    """The main job's config when the source tree (or an editable install) is present."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse one YAML file (safe_load only) that must hold a mapping."""
    if not path.is_file():
        raise VCellError(f"config file not found: {path}", hint="check the path passed to --config")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise VCellError(f"{path}: not valid YAML: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise VCellError(f"{path}: a config file must be a mapping of keys, got {type(content).__name__}")
    return content


def load_file_tree(path: Path, provenance: dict[str, str], chain: tuple[Path, ...] = ()) -> dict:
    """Resolve `base:` (a path or list of paths, relative to the file) recursively."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise VCellError(f"config inheritance cycle: {cycle}")
    content = read_yaml_mapping(path)
    bases = content.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise VCellError(f"{path}: 'base' must be a file path or a list of file paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        # The base records its own keys' origins; only the child's keys are re-attributed below.
        merged = merge_trees(merged, load_file_tree(path.parent / base, provenance, (*chain, path)))
    return merge_trees(merged, content, lambda dotted: provenance.__setitem__(dotted, str(path)))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`data.synth.cells=5000` -> (['data', 'synth', 'cells'], 5000); the value is YAML."""
    key, separator, raw_value = text.partition("=")
    parts = key.strip().split(".")
    if not separator or not all(part.isidentifier() for part in parts):
        raise VCellError(
            f"cannot read override '{text}' from {COMMAND_LINE}",
            hint="write overrides as dotted.key=value, e.g. data.synth.cells=50000",
        )
    if parts[0] == "base":
        raise VCellError("'base' cannot be overridden on the command line; use --config")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return parts, value


def apply_overrides(tree: dict, overrides: list[str], provenance: dict[str, str]) -> None:
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise VCellError(f"override '{text}': '{where}' is a value, not a section")
            node = child
        node[parts[-1]] = value
        provenance[".".join(parts)] = COMMAND_LINE


def origin_of(dotted: str, provenance: dict[str, str]) -> str:
    """Where the value at `dotted` came from: itself or a key below it set explicitly (an override
    `a.b.c=1` creates section `a.b`), else its closest set parent."""
    below = [origin for key, origin in provenance.items() if key == dotted or key.startswith(dotted + ".")]
    if below:
        return COMMAND_LINE if COMMAND_LINE in below else below[0]
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        origin = provenance.get(".".join(parts[:end]))
        if origin:
            return origin
    return "the defaults"


def section_model(model: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The pydantic model class of the section at `parts` (None if not a section)."""
    for part in parts:
        annotation = allowed_keys(model).get(part)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def allowed_keys(model: type[BaseModel]) -> dict[str, Any]:
    """The keys a section accepts -> their types (registered enhancements' sections included)."""
    keys = getattr(model, "section_keys", None)
    return keys() if keys else {name: field.annotation for name, field in model.model_fields.items()}


def merge_union_members(errors: list[dict]) -> list[dict]:
    """One error per value: the errors of a union's members become one whose message lists what
    each member accepts ("Input should be a valid boolean or 'auto'"), at the value's own key."""
    merged: dict[tuple, dict] = {}
    for index, error in enumerate(errors):
        loc = tuple(error["loc"])
        if not (loc and isinstance(loc[-1], str) and UNION_MEMBER.match(loc[-1])):
            merged[(index,)] = error
            continue
        expected = error["msg"].removeprefix("Input should be ").split(", unable")[0]
        if loc[:-1] in merged:
            merged[loc[:-1]]["expected"].append(expected)
        else:
            merged[loc[:-1]] = {**error, "loc": loc[:-1], "expected": [expected]}
    return [{**error, "msg": "Input should be " + " or ".join(error["expected"])} if "expected" in error else error
            for error in merged.values()]


def describe_error(error: dict, provenance: dict[str, str]) -> str:
    """One line per problem: key, where it was set, what is wrong, what is allowed."""
    parts = [str(p) for p in error["loc"]]
    dotted = ".".join(parts) or "<root>"
    origin = origin_of(dotted, provenance)
    if error["type"] == "extra_forbidden":
        section = section_model(VCellConfig, parts[:-1])
        allowed = sorted(allowed_keys(section)) if section else []
        close = difflib.get_close_matches(parts[-1], allowed, n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{dotted}' in {origin}{suggestion}; allowed keys here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    got = f" (got {error['input']!r})" if error["type"] != "value_error" and "input" in error else ""
    return f"'{dotted}' in {origin}: {message}{got}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> VCellConfig:
    """Resolve a config file (default: the quickstart experiment) plus overrides, strictly."""
    provenance: dict[str, str] = {}
    path = Path(path) if path is not None else default_config_path()
    tree = load_file_tree(path, provenance) if path is not None else {}
    apply_overrides(tree, list(overrides), provenance)
    try:
        return VCellConfig.model_validate(tree)
    except ValidationError as error:
        errors = merge_union_members(error.errors())
        problems = "\n  ".join(describe_error(e, provenance) for e in errors)
        raise VCellError(f"invalid configuration ({len(errors)} problem(s)):\n  {problems}") from None


def dump_config(config: VCellConfig) -> str:
    """The resolved config as YAML that `load_config` reads back to an equal config (a `tune` section
    left at its defaults is left out: training configs stay free of campaign settings)."""
    tree = config.model_dump(mode="json")
    if tree["tune"] == TuneSection().model_dump(mode="json"):
        del tree["tune"]
    return yaml.safe_dump(tree, sort_keys=False)


def save_config(config: VCellConfig, path: str | Path) -> Path:
    """Write the resolved config atomically (temp file in the same folder, then rename)."""
    text = dump_config(config).encode()
    return atomic_write(path, lambda stream: stream.write(text))
