"""Named gates: policies read from TOML (the bundled `gates/data/gates.toml`, then a user's `flipgate.toml`).

A user's file overrides keys of a bundled gate or adds a gate with `[gates.NAME]` tables; keys left
out keep the bundled value (or, for a new gate, the defaults of `GatePolicy`). Other top-level
tables of `flipgate.toml` belong to other parts of flipgate and are left alone here.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from harness.errors import InputError
from harness.fileio import note_input

MARGIN_SPACES = ("prob", "logit")
REFERENCES = ("oracle", "fp32")
USER_CONFIG = "flipgate.toml"
_NONE = "none"  # a string that clears an optional key (TOML has no null)


@dataclass(frozen=True)
class GatePolicy:
    """A gate: which candidate, which control, and the bounds that must all hold for it to pass."""

    name: str
    candidate: str
    control: str | None = None
    min_margin: float = 0.1
    margin_space: str = "prob"
    max_defects: int = 0
    min_cosine: float = 0.99
    max_kl: float | None = None
    # confident positions a pass must rest on (DESIGN.md: a gate with too little evidence fails);
    # why 12: gates/data/gates.toml
    min_confident: int = 12
    description: str = ""
    source: str = "bundled"
    oracle_fp32: str | None = None   # a float32 oracle trace: confirms or not each oracle-artifact
    reference: str = "oracle"        # "fp32": judge against the fp32 oracle outright

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GatePolicy":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


KEYS = tuple(f.name for f in fields(GatePolicy) if f.name not in ("name", "source"))


def bundled_gates_path() -> Path:
    return Path(str(resources.files("gates") / "data" / "gates.toml"))


def _read_toml(path: Path) -> dict:
    note_input(path)  # this run must not overwrite it (harness.fileio)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None


def _number(path, name, key, value, *, lo=None, hi=None, integer=False):
    where = f"{path}: [gates.{name}] {key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise InputError(f"{where} = {value!r}: expected {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise InputError(f"{where} = {value!r}: must be finite")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InputError(f"{where} = {value!r}: must lie in [{lo}, {hi if hi is not None else 'inf'}]")
    return int(value) if integer else float(value)


def _spec(path, name, key, value, *, optional):
    if not isinstance(value, str):
        raise InputError(f"{path}: [gates.{name}] {key} = {value!r}: expected a string")
    if optional and value.strip().lower() in (_NONE, ""):
        return None
    if not value.strip():
        raise InputError(f"{path}: [gates.{name}] {key} must not be empty")
    return value


def _apply(base: dict, table: object, path, name: str) -> dict:
    if not isinstance(table, dict):
        raise InputError(f"{path}: gates.{name} must be a table ([gates.{name}])")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise InputError(f"{path}: [gates.{name}] unknown key {unknown[0]!r} (valid keys: {', '.join(KEYS)})")
    out = dict(base)
    for key, value in table.items():
        if key == "candidate":
            out[key] = _spec(path, name, key, value, optional=False)
        elif key == "control":
            out[key] = _spec(path, name, key, value, optional=True)
        elif key == "margin_space":
            if value not in MARGIN_SPACES:
                raise InputError(f"{path}: [gates.{name}] margin_space = {value!r}: "
                                 f"valid values: {', '.join(MARGIN_SPACES)}")
            out[key] = value
        elif key == "min_margin":
            out[key] = _number(path, name, key, value, lo=0.0)
        elif key == "max_defects":
            out[key] = _number(path, name, key, value, lo=0, integer=True)
        elif key == "min_confident":
            out[key] = _number(path, name, key, value, lo=0, integer=True)
        elif key == "min_cosine":
            out[key] = _number(path, name, key, value, lo=-1.0, hi=1.0)
        elif key == "max_kl":
            if isinstance(value, str) and value.strip().lower() == _NONE:
                out[key] = None
            else:
                out[key] = _number(path, name, key, value, lo=0.0)
        elif key == "oracle_fp32":
            spec = _spec(path, name, key, value, optional=True)
            if spec is not None and not Path(spec).is_absolute() and Path(str(path)).is_file():
                spec = str(Path(str(path)).parent / spec)  # relative to the config file that names it
            out[key] = spec
        elif key == "reference":
            if value not in REFERENCES:
                raise InputError(f"{path}: [gates.{name}] reference = {value!r}: valid values: {', '.join(REFERENCES)}")
            out[key] = value
        elif key == "description":
            if not isinstance(value, str):
                raise InputError(f"{path}: [gates.{name}] description = {value!r}: expected a string")
            out[key] = value
    return out


def _check(d: dict, path, name: str) -> GatePolicy:
    if not d.get("candidate"):
        raise InputError(f"{path}: [gates.{name}] has no candidate (every gate names one)")
    if d["margin_space"] == "prob" and d["min_margin"] > 1.0:
        raise InputError(f"{path}: [gates.{name}] min_margin = {d['min_margin']} exceeds 1, "
                         "the largest probability margin (use margin_space = \"logit\" for logit gaps)")
    return GatePolicy(**d)


def _gates_table(doc: dict, path) -> dict:
    if "gate" in doc and "gates" not in doc:
        raise InputError(f"{path}: found [gate.*] tables: gates are defined as [gates.NAME]")
    table = doc.get("gates", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: 'gates' must hold tables [gates.NAME]")
    return table


def load_gates(config_path: str | os.PathLike | None = None) -> dict[str, GatePolicy]:
    """The bundled gates, overridden and extended by `config_path` (default: ./flipgate.toml if present)."""
    bundled = bundled_gates_path()
    defaults = {f.name: f.default for f in fields(GatePolicy) if f.name not in ("name", "candidate")}
    gates: dict[str, GatePolicy] = {}
    for name, table in _gates_table(_read_toml(bundled), bundled).items():
        d = _apply({"name": name, "candidate": "", **defaults}, table, bundled, name)
        gates[name] = _check(d, bundled, name)
    if config_path is None:
        user = Path(USER_CONFIG)
        if not user.is_file():
            return gates
    else:
        user = Path(config_path)
        if not user.is_file():
            raise InputError(f"{user}: no such config file")
    for name, table in _gates_table(_read_toml(user), user).items():
        base = gates[name].to_dict() if name in gates else {"name": name, "candidate": "", **defaults}
        d = _apply(base, table, user, name)
        d["source"] = str(user)
        gates[name] = _check(d, user, name)
    return gates


def get_gate(name: str, config_path: str | os.PathLike | None = None) -> GatePolicy:
    gates = load_gates(config_path)
    try:
        return gates[name]
    except KeyError:
        raise InputError(f"unknown gate {name!r} (valid gates: {', '.join(gates)})") from None


def with_overrides(policy: GatePolicy, **overrides) -> GatePolicy:
    """A copy with the given keys changed (None leaves a key as it is), checked like a TOML table."""
    table = {k: v for k, v in overrides.items() if v is not None}
    if not table:
        return policy
    d = _apply(policy.to_dict(), table, "command line", policy.name)
    return _check(d, "command line", policy.name)
