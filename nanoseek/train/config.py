"""Training configuration: dataclass sections read from TOML, overridden from the command line.

A stage's config is a dataclass whose fields are sections (``[optim]``, ``[train]``, …), each a
dataclass of plain fields. ``load_config(Cls, "run.toml", ["--optim.lr", "3e-4"])`` reads the
file, applies ``--section.key value`` (or ``--section.key=value``) overrides, checks every key
and type, and raises ``ValueError`` naming the key and the fix. Override values are parsed as
TOML values (``3e-4``, ``true``, ``[[0, 0.3], [0.7, 0.1]]``), falling back to a bare string.

The shared sections live here (``OptimConfig``, ``RunConfig``); stages add their own.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Piecewise = float | list[list[float]]
"""A value that may change during training: a number, or ``[[start_fraction, value], ...]``
(each value holds from its fraction of training on; fractions ascending, the first 0)."""


@dataclass
class OptimConfig:
    """``[optim]``: AdamW, gradient clipping, the learning-rate schedule and the balance bias.

    Schedules (``schedule``), with fractions of the total steps:

    * ``v3`` (DeepSeek-V3): linear warmup, constant until ``decay_start`` (0.676), cosine to
      ``min_lr_ratio`` (0.1) by ``decay_end`` (0.966), then ``tail_lr_ratio`` (0.0332) from
      ``tail_start`` (0.989): 2.2e-4 → 2.2e-5 → 7.3e-6 over 14.8T tokens.
    * ``wsd`` (warmup-stable-decay): constant until ``decay_start`` (0.8), then linear to
      ``min_lr_ratio`` at ``decay_end`` (1.0).
    * ``cosine``: cosine from the end of warmup to ``min_lr_ratio`` at the end.
    * ``constant``: warmup then constant.
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    schedule: str = "v3"
    warmup_steps: int = 0
    decay_start: float | None = None
    decay_end: float | None = None
    tail_start: float | None = None
    tail_lr_ratio: float = 0.0332
    bias_update_speed: Piecewise = field(default_factory=lambda: [[0.0, 0.001], [0.966, 0.0]])
    """γ of auxiliary-loss-free balancing (V3: 0.001, then 0 for the last 500B tokens)."""


@dataclass
class RunConfig:
    """``[train]``: batch, length of the run, precision, parallelism, logging, checkpoints.

    The global batch is ``batch_tokens`` tokens per optimizer step; each rank runs
    ``micro_batch`` sequences of ``seq_len`` tokens per forward, so gradient accumulation is
    ``batch_tokens / (micro_batch * seq_len * world_size)`` micro-batches (0: no accumulation).
    ``batch_ramp_start`` > 0 grows the batch linearly from that many tokens to
    ``batch_tokens`` over the first ``batch_ramp_tokens`` trained tokens (V3: 3072 → 15360
    sequences over 469B tokens). The run lasts ``steps`` optimizer steps, or if 0 until
    ``tokens`` tokens.
    """

    out_dir: str = "runs/train"
    seed: int = 0
    steps: int = 0
    tokens: int = 0
    seq_len: int = 256
    micro_batch: int = 4
    batch_tokens: int = 0
    batch_ramp_start: int = 0
    batch_ramp_tokens: int = 0
    precision: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "ddp"
    device: str = "auto"
    log_every: int = 1
    eval_every: int = 0
    eval_batches: int = 8
    """Validation micro-batches per evaluation, over all ranks (0: the whole split)."""
    save_every: int = 0
    keep_last: int = 3
    tensorboard: bool = False
    progress: bool = True
    peak_tflops: float = 0.0
    """Peak FLOP/s (in TFLOP/s) for MFU; 0: a known GPU's, or a matmul measured once."""


# -------------------------------------------------------------------- loading
def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """``cls`` from a TOML file (or defaults when ``path`` is None) plus ``--a.b value``
    overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--config: no such file {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"--config: {path} is not valid TOML ({e})") from None
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``["--optim.lr", "3e-4", "--train.steps=10"]`` → ``[("optim.lr", 3e-4), ...]``."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"override {arg!r}: expected --section.key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"override --{key}: missing value")
            value, i = args[i + 1], i + 1
        out.append((key.replace("-", "_"), parse_value(value)))
        i += 1
    return out


def parse_value(text: str) -> Any:
    """A command-line value as TOML (numbers, booleans, arrays, quoted strings), else the
    text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override --{key}: {part} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Build dataclass ``cls`` from a nested dict, checking names and types. Keys absent from
    ``data`` keep ``base``'s values (a section given in part keeps the defaults its parent
    declares for the rest, e.g. SFT's ``train.out_dir``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key; valid keys here: "
                         f"{', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.", _default(fields[name]))
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def _default(f: dataclasses.Field) -> Any:
    """The default value a dataclass field declares, or None."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` as type ``tp`` (int ← integral float, float ← int), else ``ValueError``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, name)
            except ValueError:
                continue
        raise ValueError(f"{name}: {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is None or value == "none":
            return None
        raise ValueError(f"{name}: expected none")
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ValueError(f"{name}: expected a {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        if origin is list and args:
            return [_coerce(v, args[0], name) for v in value]
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)
