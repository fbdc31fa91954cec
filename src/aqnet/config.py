"""Pipeline configuration: load, validate against the JSON schema, fill defaults, resolve variants.

The schema (``config.schema.yaml`` beside this module, also used by the Snakefile) is the single
source of truth: every key has a description and a default, and ``additionalProperties: false`` at
every level turns a misspelt key into an error naming it.

Usage::

    cfg = load_config("config.yaml")            # validated, defaults filled
    vcfg = variant_config(cfg, "h500")          # the same with the variant's overrides merged
    typed = coerce_overrides({"finetune": {"steps": "5"}})   # --config strings -> schema types
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

INPUT_VARIABLES: tuple[str, ...] = (
    "u", "v", "temp", "rh", "psfc",
    "pm25", "pm10", "so2", "no2", "co", "o3",
    "elevation", "population",
)  # fmt: skip
"""Data variables every input file must hold (elevation and population may be static)."""

POLLUTANTS: tuple[str, ...] = ("pm25", "pm10", "so2", "no2", "co", "o3")
"""The six forecast targets, in output-channel order."""

MODEL_VARIABLES: tuple[str, ...] = (*INPUT_VARIABLES, "lat", "lon")
"""The 15 model input channels: the data variables plus normalised latitude and longitude."""


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key."""


def _schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as fh:
        return yaml.safe_load(fh)


def _extend_with_default(validator_class: type) -> type:
    """A validator that fills ``default`` values into the instance while validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


# Snakemake validates with the 2020-12 draft too; the schema's $schema says so.
_DefaultFillingValidator = _extend_with_default(jsonschema.Draft202012Validator)


_VARIANT_SECTIONS = {"model": "model", "finetune": "train"}
"""The sections a variant overrides and the schema definition each is validated against."""


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with a local ``$ref`` (``#/definitions/<name>``) followed."""
    while "$ref" in schema:
        ref = str(schema["$ref"])
        if not ref.startswith("#/definitions/"):
            raise ValueError(f"config schema: cannot follow the reference {ref!r}")
        schema = root["definitions"][ref.removeprefix("#/definitions/")]
    return schema


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _coerce_scalar(text: str, types: list[str]) -> Any:
    """A string as the schema type it spells (YAML's reading of it), else the string itself.

    ``"5"`` -> 5 for an integer, ``"1e-4"`` -> 0.0001 for a number, ``"true"`` -> True for a
    boolean, ``"null"`` -> None where null is allowed; a string that spells no allowed type is
    returned unchanged, so validation names the key with its wrong value.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None:
        return None if "null" in types and text.strip() in ("null", "~", "Null", "NULL") else text
    if isinstance(value, bool):
        return value if "boolean" in types else text
    if isinstance(value, int):
        if "integer" in types:
            return value
        return float(value) if "number" in types else text
    if isinstance(value, float):
        return value if "number" in types else text
    if "number" in types:
        try:
            return float(text)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            return text
    return text


def _coerce(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    schema = _resolve(schema, root)
    types = _types(schema)
    if isinstance(value, str):
        return value if "string" in types and not types[1:] else _coerce_scalar(value, types)
    if isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, Mapping):
            return list(value)
        return [_coerce(v, items, root) for v in value]
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            out[key] = item if sub is None else _coerce(item, sub, root)
        return out
    return value


def coerce_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``--config`` overrides with each string converted to the type the schema gives its key.

    Snakemake reads a ``--config`` value as YAML with every scalar a string
    (``finetune='{steps: 5}'`` arrives as ``{"finetune": {"steps": "5"}}``); only the top level
    ``key=5`` is converted by Snakemake itself. This reads each string as YAML would when the
    schema's type for that key is a number, boolean or null (lists and nested maps are walked,
    a variant's ``model``/``finetune`` overrides use those sections' types), and leaves every
    other value as it is: a value that is not of its key's type still fails validation, naming
    the key.
    """
    root = _schema()
    out = _coerce(dict(overrides), root, root)
    for name, override in (out.get("variants") or {}).items():
        if not isinstance(override, Mapping):
            continue
        for section, definition in _VARIANT_SECTIONS.items():
            if isinstance(override.get(section), Mapping):
                sub = root["definitions"][definition]
                out["variants"][name] = {
                    **out["variants"][name],
                    section: _coerce(override[section], sub, root),
                }
    return out


def _format_error(err: jsonschema.ValidationError, source: str, prefix: str = "") -> str:
    where = ".".join([prefix] * bool(prefix) + [str(p) for p in err.absolute_path]) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unexpected = sorted(set(err.instance) - set(allowed))
        hint = f" (allowed keys: {', '.join(allowed)})" if allowed else ""
        return f"{source}: unknown key {', '.join(map(repr, unexpected))} in {where}{hint}"
    return f"{source}: invalid value at {where}: {err.message}"


def validate_config(
    config: Mapping[str, Any], *, source: str = "config", fine_tunes: bool = True
) -> dict[str, Any]:
    """Validate ``config`` and return a deep copy with every default filled in.

    ``fine_tunes``: its variants are fine-tuned, so each must have something to train
    (:func:`_check_something_trains`); false for the config of the shared stages, whose one
    pseudo-variant only carries the top-level sections.

    Raises:
        ConfigError: naming the first offending key and the file/source it came from.
    """
    instance = copy.deepcopy(dict(config))
    validator = _DefaultFillingValidator(_schema())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_format_error(errors[0], source))
    # Validate the variants' overrides against the sections they override.
    for name in instance["variants"]:
        merged = variant_config(instance, name)
        if fine_tunes:
            _check_something_trains(merged, name)
    return instance


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open() as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return validate_config(raw, source=str(path))


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config of one ablation variant: its ``model``/``finetune`` overrides merged in.

    Raises:
        ConfigError: for an unknown variant or an override key the schema does not know.
    """
    variants = config.get("variants", {})
    if name not in variants:
        raise ConfigError(f"unknown variant {name!r}; the config defines: {', '.join(variants)}")
    merged = _deep_merge(dict(config), variants[name])
    schema = _schema()
    for section, definition in _VARIANT_SECTIONS.items():
        sub = {**schema["definitions"][definition], "definitions": schema["definitions"]}
        errors = list(_DefaultFillingValidator(sub).iter_errors(merged[section]))
        if errors:
            prefix = f"variants.{name}.{section}"
            raise ConfigError(_format_error(errors[0], f"variant {name!r}", prefix))
    merged["variant"] = name
    return merged


def _check_something_trains(merged: Mapping[str, Any], name: str) -> None:
    """Refuse a variant whose fine-tune would have no parameter that reaches the loss.

    Run on the variants a run fine-tunes (:func:`validate_config`, :func:`with_control_arm`),
    not on the shared stages' config, where ``model.topoflow_blocks`` may be empty because each
    variant sets its own.

    With ``finetune.param_groups: new`` only the new TopoFlow parameters train. A variant with the
    elevation bias off and no relative-position bias (the control arm, by default) still holds
    ``elevation_alpha``, but the loss does not depend on it: its first backward pass would fail
    (torch: "element 0 of tensors does not require grad"), in validate_short at the earliest.
    """
    model, finetune = merged["model"], merged["finetune"]
    if finetune.get("param_groups") != "new":
        return
    if not model.get("topoflow_blocks"):
        why = "model.topoflow_blocks is empty"
    elif not model.get("elevation_bias", True) and not model.get("rel_pos_bias", False):
        why = "model.elevation_bias is false and model.rel_pos_bias is false"
    else:
        return
    raise ConfigError(
        f"variant {name!r}: finetune.param_groups is 'new' (only the new TopoFlow parameters "
        f"train), but {why}, so no trained parameter reaches the loss and the fine-tune would "
        "train nothing; use param_groups 'new_and_blocks' (the TopoFlow blocks train too, in "
        "every arm alike) or 'all'"
    )


CONTROL_OVERRIDES: dict[str, Any] = {"model": {"elevation_bias": False}}
"""The control arm's overrides when ``variants`` does not define ``report.control`` itself."""

REVERSED_ARM = "downhill"
REVERSED_OVERRIDES: dict[str, Any] = {"model": {"elevation_bias_direction": "downhill"}}
"""The reversed-direction arm ``report.reversed_arm`` adds (the hypothesis' sign as an ablation)."""


def with_control_arm(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the control arm ``report.control`` (and, with ``report.reversed_arm``, the
    reversed direction :data:`REVERSED_ARM`) among its variants.

    The control runs the same steps, recipe, seed and data as every other variant with the
    elevation bias off (:data:`CONTROL_OVERRIDES`); the reversed arm the same with
    ``model.elevation_bias_direction: downhill``. A variant of that name the user defines is kept
    as given. With ``report.control: null`` no control is added.

    Raises:
        ConfigError: an added arm that could not run (the checks of :func:`validate_config`).
    """
    out = copy.deepcopy(dict(config))
    report = out.get("report", {})
    control = report.get("control")
    if control is not None and control not in out["variants"]:
        out["variants"][control] = copy.deepcopy(CONTROL_OVERRIDES)
    if report.get("reversed_arm") and REVERSED_ARM not in out["variants"]:
        out["variants"][REVERSED_ARM] = copy.deepcopy(REVERSED_OVERRIDES)
    for added in [n for n in out["variants"] if n not in config.get("variants", {})]:
        # the added arms meet the checks the user's variants met in validate_config
        _check_something_trains(variant_config(out, added), added)
    return out


SEED_SUFFIX = "-seed"
"""``<variant>-seed<s>``: the run of a variant with fine-tune seed ``s`` (:func:`with_seeds`)."""


def with_seeds(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with one variant per fine-tune seed of ``finetune.seeds``.

    The first seed keeps each variant's name (its seed set to it); every further seed ``s`` adds
    ``<variant>-seed<s>`` with the same overrides and ``finetune.seed: s``. A variant's own
    ``finetune.seeds`` override takes precedence. Without seeds nothing changes.
    """
    out = copy.deepcopy(dict(config))
    expanded: dict[str, Any] = {}
    for name, overrides in out["variants"].items():
        seeds = (overrides.get("finetune") or {}).get("seeds", out["finetune"].get("seeds"))
        if not seeds:
            expanded[name] = overrides
            continue
        for i, seed in enumerate(int(s) for s in seeds):
            run = copy.deepcopy(overrides)
            run.setdefault("finetune", {})["seed"] = seed
            expanded[name if i == 0 else f"{name}{SEED_SUFFIX}{seed}"] = run
    out["variants"] = expanded
    return out


def seed_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """``{variant: [its runs]}``: ``<variant>-seed<s>`` grouped under ``<variant>`` (in order)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        base, sep, seed = name.rpartition(SEED_SUFFIX)
        key = base if sep and seed.isdigit() and base in names else name
        groups.setdefault(key, []).append(name)
    return groups


def dump_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write a resolved config as YAML (what each stage of one variant reads)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w") as fh:
        yaml.safe_dump(dict(config), fh, sort_keys=False)


def load_merged(paths: list[str | Path] | tuple[str | Path, ...]) -> dict[str, Any]:
    """Several config files merged key by key in order (as Snakemake merges ``--configfile``s),
    validated, in the variant ``default`` (or the only one they define).

    Raises:
        ConfigError: a missing or invalid file, or a merged config the schema refuses (naming
            the files).
    """
    merged: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
        merged = _deep_merge(merged, raw)
    if len(paths) == 1 and "variant" in merged:
        return load_resolved(paths[0])
    cfg = validate_config(merged, source=" + ".join(str(p) for p in paths))
    name = "default" if "default" in cfg["variants"] else next(iter(cfg["variants"]))
    return variant_config(cfg, name)


def load_resolved(path: str | Path) -> dict[str, Any]:
    """Read a config written by :func:`dump_config` (or a user's config.yaml) for one stage.

    A resolved config carries the key ``variant``; a user's file is validated and takes the
    variant ``default`` (or the only one it defines).
    """
    with Path(path).open() as fh:
        raw = yaml.safe_load(fh) or {}
    if isinstance(raw, dict) and "variant" in raw:
        name = raw.pop("variant")
        # a stage's resolved config: its run's variants were checked when the run's config was
        # read, and the shared stages' pseudo-variant fine-tunes nothing
        return variant_config(validate_config(raw, source=str(path), fine_tunes=False), name)
    cfg = load_config(path)
    name = "default" if "default" in cfg["variants"] else next(iter(cfg["variants"]))
    return variant_config(cfg, name)
