"""Job configs: pydantic models loaded from YAML (``--config FILE``) with CLI flags on top.

Precedence is defaults < YAML < CLI. Every field becomes a flag (nested models as dotted flags,
``--llm.base-url``), ``--help`` lists each with its default, and unknown keys anywhere are
errors that name the key, because a typo silently ignored in a cluster config costs a GPU-day.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .redact import install as install_redaction
from .redact import redact, register_config

C = TypeVar("C", bound="JobConfig")


class ConfigError(ValueError):
    """A user mistake in a config file or on the command line (printed without traceback)."""


class JobFailed(RuntimeError):
    """A job that cannot go on for a reason the user must act on (a dead server, a provider
    outage): one ``error:`` line and exit 1, with everything finished so far kept."""


class ConfigSection(BaseModel):
    """Base for nested config sections: unknown keys are errors here too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class JobConfig(BaseModel):
    """Base for every job's config: no unknown keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Fields listed here get no generic flag (a job adds its own flags for them).
    cli_exclude: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def add_cli_extras(cls, parser: argparse.ArgumentParser) -> None:
        """Hook: add job-specific flags (e.g. ``--source`` for prepare)."""

    @classmethod
    def apply_cli_extras(cls, ns: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: fold job-specific flags into the raw config dict before validation."""
        return data


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap_optional(args[0])
    if origin is typing.Annotated:
        return _unwrap_optional(get_args(tp)[0])
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _flag_kind(tp: Any) -> str:
    tp = _unwrap_optional(tp)
    origin = get_origin(tp)
    if tp is bool:
        return "bool"
    if _is_model(tp):
        return "model"
    if origin is tuple or tp is tuple:
        return "scalar"  # fixed-size (e.g. a range "10-100" or [10, 100]): one value
    if origin in (list, set, frozenset) or tp in (list, set):
        return "list"
    if origin is dict or tp is dict:
        return "dict"
    if tp is str or tp is Path or origin is typing.Literal:
        return "str"
    return "scalar"


def _parse_scalar(text: str, kind: str) -> Any:
    if kind == "str":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _iter_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if not prefix and name in getattr(model, "cli_exclude", frozenset()):
            continue
        dotted = f"{prefix}{name}"
        kind = _flag_kind(field.annotation)
        if kind == "model":
            yield from _iter_fields(_unwrap_optional(field.annotation), prefix=f"{dotted}.")
        else:
            yield dotted, field, kind


def _help_for(field: Any) -> str:
    desc = field.description or ""
    if field.is_required():
        default = "required"
    else:
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        default = f"default: {value!r}"
    return f"{desc} ({default})".strip().replace("%", "%%")


TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})


class BoolFlag(argparse.Action):
    """A boolean field on the command line: ``--x`` or ``--x true|false`` (``--no-x`` is added
    next to it by :func:`build_parser`).

    The value form lets a flag say what a YAML key says (``--tracking.enabled false``), so a
    config line and a CLI override read the same; the bare and ``--no-`` forms stay for
    habit (``--no-instructions``).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = None,
                 help: str | None = None, **_: Any):
        super().__init__(option_strings, dest, nargs="?", default=default,
                         metavar="true|false", help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        word = "true" if values is None else str(values).strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            parser.error(f"{option_string} expects true or false, got {values!r}")
        setattr(namespace, self.dest, word in TRUE_WORDS)


def build_parser(cls: type[JobConfig], description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file (local path or fsspec URI); CLI flags override it")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    group = parser.add_argument_group("config fields")
    for dotted, field, kind in _iter_fields(cls):
        flag = "--" + dotted.replace("_", "-")
        alias = "--" + dotted if "_" in dotted else None
        names = [flag] + ([alias] if alias else [])
        dest = "cfg__" + dotted.replace(".", "__")
        if kind == "bool":
            group.add_argument(*names, dest=dest, action=BoolFlag, default=None,
                               help=_help_for(field))
            group.add_argument(*("--no-" + n[2:] for n in names), dest=dest,
                               action="store_const", const=False, help=f"= {flag} false")
        elif kind == "list":
            group.add_argument(*names, dest=dest, action="append", default=None,
                               metavar="VALUE", help=_help_for(field) + "; repeat for more")
        elif kind == "dict":
            group.add_argument(*names, dest=dest, action="append", default=None,
                               metavar="KEY=VALUE", help=_help_for(field) + "; repeat for more")
        else:
            group.add_argument(*names, dest=dest, default=None, metavar="VALUE",
                               help=_help_for(field))
    cls.add_cli_extras(parser)
    return parser


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = value


def _field_at(cls: type[BaseModel], dotted: str) -> tuple[Any, str]:
    model: Any = cls
    field = None
    for key in dotted.split("."):
        field = model.model_fields[key]
        model = _unwrap_optional(field.annotation)
    assert field is not None
    return field, _flag_kind(field.annotation)


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping from a local path or fsspec URI."""
    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key {loc!r}")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_config(
    cls: type[C], argv: Sequence[str] | None = None, description: str | None = None
) -> C:
    """Parse ``argv`` into a validated config; raises :class:`ConfigError` on user mistakes."""
    parser = build_parser(cls, description)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    data: dict[str, Any] = load_yaml(ns.config) if ns.config else {}
    origin = f"--config {ns.config}" if ns.config else "command line"
    for dotted, _field, _ in _iter_fields(cls):
        raw = getattr(ns, "cfg__" + dotted.replace(".", "__"), None)
        if raw is None:
            continue
        field, kind = _field_at(cls, dotted)
        if kind == "list":
            inner = get_args(_unwrap_optional(field.annotation))
            inner_kind = _flag_kind(inner[0]) if inner else "scalar"
            values: list[Any] = []
            for item in raw:
                # "a,b" and repeated flags both work for scalar lists
                parts = item.split(",") if inner_kind in ("str", "scalar") else [item]
                values.extend(_parse_scalar(p.strip(), inner_kind) for p in parts if p.strip())
            value: Any = values
        elif kind == "dict":
            value = {}
            for item in raw:
                if "=" not in item:
                    raise ConfigError(f"--{dotted} expects KEY=VALUE, got {item!r}")
                k, v = item.split("=", 1)
                value[k.strip()] = _parse_scalar(v, "scalar")
        else:
            value = _parse_scalar(raw, kind) if kind != "bool" else raw
        _set_dotted(data, dotted, value)
    data = cls.apply_cli_extras(ns, data)
    try:
        cfg = cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
    register_config(cfg)  # the keys its *api_key_env name, the passwords in its URIs
    if ns.print_config:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
        raise SystemExit(0)
    return cfg


def run_cli(main: typing.Callable[[], int | None]) -> None:
    """Run a job's ``main`` turning user mistakes into one clear line and exit code 2.
    Everything the job prints passes :func:`embedforge.redact.redact` on its way out."""
    install_redaction()
    try:
        code = main()
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except JobFailed as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)


def named_option(item: str, flag: str, by_name: dict[str, dict[str, Any]],
                 what: str) -> tuple[dict[str, Any], str, str]:
    """``NAME.KEY=VALUE`` of a per-item flag -> (the named item's dict, KEY, VALUE).

    Shared by ``--option``/``--map`` of prepare (sources) and evaluate (tasks); the error names
    the flag and the defined items.
    """
    left, eq, value = item.partition("=")
    name, dot, key = left.partition(".")
    if not (eq and dot and name and key):
        raise ConfigError(f"{flag} expects NAME.KEY=VALUE, got {item!r}")
    if name not in by_name:
        raise ConfigError(f"{flag} {item!r} names {what} {name!r}, which is not defined "
                          f"({what}s: {', '.join(map(str, by_name)) or 'none'})")
    return by_name[name], key.strip(), value


def safe_name(v: str, what: str) -> str:
    """A source/task name usable in paths and ``NAME=...`` flags."""
    if not v or any(c in v for c in "/\\ \t\n=:"):
        raise ValueError(f"{what} name {v!r} must be non-empty without '/', ':', '=' or spaces")
    return v


def parse_range(v: Any) -> Any:
    """``"0-5"``, ``"0..5"`` or ``"0,5"`` -> ``(0.0, 5.0)``; anything else unchanged."""
    if isinstance(v, str):
        parts = v.split(",") if "," in v else v.replace("..", "-").split("-")
        return tuple(float(x) for x in parts if x.strip())
    return v
