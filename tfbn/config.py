"""Typed, validated experiment configs read from YAML.

A config file has the sections of `Config`; every key equals a dataclass field
name, and every field has a default. Validation happens before any training:
unknown keys, wrong types, unknown choices and malformed class ratios raise
`ConfigError` with a message that names the key and the fix.

Example:

```python
config = tfbn.config.load_config("configs/quickstart.yaml", ["train.steps=500"])
```
"""

import dataclasses
import difflib
import re
import types
import typing
import warnings
from typing import Literal, Optional, Union

import yaml

from tfbn.errors import ConfigError

# Factor name -> (config section, field) that the factor's levels replace.
FACTORS = {
    "activation": ("model", "activation"),
    "bn": ("model", "bn"),
    "depth": ("model", "depth"),
    "width": ("model", "width"),
    "optimizer": ("train", "optimizer"),
    "learning_rate": ("train", "learning_rate"),
    "batch_size": ("train", "batch_size"),
    "seed": ("train", "seed"),
    "train_ratio": ("data", "train_ratio"),
    "test_ratio": ("data", "test_ratio"),
}

_RATIO = re.compile(r"^[1-9][0-9]*(:[1-9][0-9]*)+$")


def _check_ratio(value, key):
    if value is not None and not _RATIO.match(value):
        raise ConfigError(
            f"{key}: {value!r} is not a class ratio; write positive whole numbers "
            "separated by colons, one per selected class, e.g. '1:9' "
            "(quote it in YAML)"
        )


def _check_positive(value, key):
    if value is not None and value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")


def _check_fraction(value, key):
    if not 0 <= value <= 1:
        raise ConfigError(f"{key}: must lie in [0, 1], got {value!r}")


def _check_interval(value, key):
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(f"{key}: give [low, high] with low <= high, got {list(value)!r}")


def _check_initializer(value, key):
    if isinstance(value, float) and value <= 0:
        raise ConfigError(f"{key}: a std must be positive, got {value}; or choose course, glorot or he")


def _check_pack(value, key):
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{key}: give auto, off or a positive number of branches, got {value!r}")


def _field(default, why, check=None):
    """A dataclass field with a one-line reason and an optional value check."""
    return dataclasses.field(default=default, metadata={"why": why, "check": check})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set to load and which part of it to keep."""

    source: Literal["digits", "tfds", "idx"] = _field(
        "digits", "digits is bundled with scikit-learn, so it works offline")
    name: Optional[str] = _field(None, "tensorflow-datasets name when source is tfds, e.g. mnist")
    data_dir: Optional[str] = _field(None, "tensorflow-datasets data directory (its default when null)")
    path: Optional[str] = _field(None, "directory of the four IDX files when source is idx")
    classes: Optional[tuple[int, ...]] = _field(
        None, "labels to keep, relabelled 0..k-1 in this order; null keeps all")
    max_train_per_class: Optional[int] = _field(None, "cap on training examples per class", _check_positive)
    max_test_per_class: Optional[int] = _field(None, "cap on test examples per class", _check_positive)
    train_ratio: Optional[str] = _field(None, "class ratio of the training split, e.g. '1:1'", _check_ratio)
    test_ratio: Optional[str] = _field(None, "class ratio of the test split, e.g. '1:9'", _check_ratio)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The MLP of `tfbn.build_mlp`; the paper uses depth 3, the course project 2."""

    depth: int = _field(2, "number of hidden layers (course project: 2)", _check_positive)
    width: int = _field(100, "units per hidden layer", _check_positive)
    activation: Literal["lrelu", "relu", "sigmoid", "softplus", "tanh", "linear"] = _field(
        "sigmoid", "the paper's saturating nonlinearity")
    bn: Literal["none", "before", "after", "renorm", "noisy"] = _field(
        "before", "the paper places BN before the activation; renorm: Batch Renormalization there; "
                  "noisy: BN there followed by a per-step shift of each unit's distribution")
    leaky_slope: float = _field(0.2, "negative slope of lrelu (course project: 0.2)")
    bn_momentum: float = _field(0.99, "momentum of BN's moving statistics (Keras's; the course project: 0.999)",
                                _check_fraction)
    bn_epsilon: float = _field(1e-3, "added to BN's variance (course project)", _check_positive)
    noise_shift: tuple[float, ...] = _field(
        (0.0, 1.0), "noisy BN: low and high of each unit's uniform shift, drawn every step",
        _check_interval)
    noise_scale: tuple[float, ...] = _field(
        (1.0, 2.0), "noisy BN: low and high of each unit's uniform scale, drawn every step",
        _check_interval)
    initializer: Union[Literal["course", "glorot", "he"], float] = _field(
        "course", "hidden kernels: the course project's truncated normal, std sqrt(2/fan_in); "
                  "glorot; he; or a truncated normal's std", _check_initializer)
    logits_initializer: Union[Literal["course", "glorot", "he"], float, None] = _field(
        None, "the logits layer's kernel, the same choices; null: as model.initializer",
        _check_initializer)
    bn_sync: bool = _field(True, "under several replicas, BN statistics over the global batch, "
                                 "not each replica's slice")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Step-based training; test metrics use BN's moving statistics."""

    steps: int = _field(40000, "training steps (course project: 40,000)", _check_positive)
    eval_every: int = _field(50, "steps between test evaluations (course project: 50)", _check_positive)
    batch_size: int = _field(64, "examples per training step (course project: 64)", _check_positive)
    optimizer: Literal["sgd", "adam"] = _field("sgd", "the course project's default")
    learning_rate: float = _field(0.01, "course project: SGD at 0.01", _check_positive)
    seed: int = _field(0, "seeds the kernels and the order of the training batches")
    threshold: float = _field(0.9, "test accuracy that 'steps to threshold' waits for", _check_fraction)
    eval_batch_size: int = _field(
        1000, "examples per evaluation batch: the batches BN normalizes by in the batch-statistics mode",
        _check_positive)
    pack: Union[Literal["auto", "off"], int] = _field(
        "auto", "trials trained together as branches of one model: auto, off or a maximum",
        _check_pack)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Where run output goes."""

    dir: str = _field("logs", "root of all experiments' TensorBoard runs and results")
    instruments: tuple[Literal["weights", "gradients", "jacobian", "percentiles", "ics",
                               "landscape"], ...] = _field(
        ("weights", "gradients", "jacobian", "percentiles"),
        "TensorBoard instruments to record (ics and landscape on request)")
    weights_every: int = _field(500, "steps between weight histograms and norms", _check_positive)
    gradients_every: int = _field(100, "steps between gradient norms and histograms", _check_positive)
    jacobian_every: int = _field(5000, "steps between Jacobian spectra of the probe set", _check_positive)
    percentiles_every: int = _field(500, "steps between activation percentiles of the probe set",
                                    _check_positive)
    ics_every: int = _field(2000, "steps between internal covariate shift measurements",
                            _check_positive)
    landscape_every: int = _field(5000, "steps between loss-landscape smoothness probes",
                                  _check_positive)
    probe_size: int = _field(250, "test examples in the fixed probe set (jacobian, percentiles)",
                             _check_positive)
    jacobian_mode: Literal["inference", "batch"] = _field(
        "inference", "BN with moving statistics, or the probe batch's own statistics held constant")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Devices: one trial across replicas, or several trials side by side."""

    strategy: Literal["auto", "mirrored", "none"] = _field(
        "auto", "auto: MirroredStrategy over all GPUs when there are two or more")
    devices: Optional[tuple[str, ...]] = _field(None, "devices of strategy mirrored; null: all")
    parallel_trials: int = _field(1, "packs trained at once, one worker process per GPU (per share of the CPU cores without one)",
                                  _check_positive)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The factors that vary across trials and the design that combines them."""

    design: Literal["full_factorial", "one_at_a_time"] = _field(
        "full_factorial", "every combination of the factor levels")
    factors: Optional[dict] = _field(
        None, "factor name -> list of levels (names in tfbn.config.FACTORS); null: one trial")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment."""

    experiment: str = _field("default", "names the folder <log.dir>/<experiment>")
    data: DataConfig = _field(DataConfig(), "the data set")
    model: ModelConfig = _field(ModelConfig(), "the network")
    train: TrainConfig = _field(TrainConfig(), "the optimisation")
    log: LogConfig = _field(LogConfig(), "the output")
    distribute: DistributeConfig = _field(DistributeConfig(), "the devices")
    study: StudyConfig = _field(StudyConfig(), "the factors")


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` without three YAML 1.1 surprises.

    YAML 1.1 reads `1:9` as the base-60 integer 69, `1e-3` as a string and
    `off` as false; class ratios, learning rates and ``train.pack: off`` are
    written exactly like that. As in YAML 1.2, only true and false are booleans.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                           "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?(?:0|[1-9][0-9_]*))$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text):
    """Parses YAML text safely, reading `1:9` as a string and `1e-3` as a float."""
    return yaml.load(text, Loader=_Loader)


def load_config(path, overrides=()):
    """Reads, overrides and validates a config file.

    Args:
        path: A YAML file.
        overrides: Strings ``key.path=value``; the value is read as YAML.

    Returns:
        A validated `Config`.

    Raises:
        ConfigError: naming the bad key or value and the fix.
    """
    try:
        with open(path) as f:
            raw = parse_yaml(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config")
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}")
    raw = raw if raw is not None else {}
    for override in overrides:
        _apply_override(raw, override)
    return parse_config(raw)


def _apply_override(raw, override):
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: write key.path=value, e.g. train.steps=500")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section")
    node[leaf] = parse_yaml(value)


def parse_config(raw):
    """Validates a nested dict (as read from YAML) into a `Config`."""
    config = _build(Config, _moved_keys(raw), "")
    _check_consistency(config)
    return config


def _moved_keys(raw):
    """Reads keys of earlier versions at their new place, with a deprecation message."""
    distribute = raw.get("distribute") if isinstance(raw, dict) else None
    if not isinstance(distribute, dict) or "bn_sync" not in distribute:
        return raw
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        return raw  # _build names the bad section
    if "bn_sync" in model and model["bn_sync"] != distribute["bn_sync"]:
        raise ConfigError("distribute.bn_sync and model.bn_sync disagree; keep model.bn_sync only")
    warnings.warn("distribute.bn_sync is now model.bn_sync (it changes the model); "
                  "write it there, the old key will go", FutureWarning, stacklevel=3)
    distribute = {k: v for k, v in distribute.items() if k != "bn_sync"}
    return {**raw, "distribute": distribute, "model": {**model, "bn_sync": raw["distribute"]["bn_sync"]}}


def to_dict(config):
    """Returns a config as plain nested dicts and lists, ready for YAML."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def flatten(tree, prefix=""):
    """``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}``; factors stay one value."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "factors":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def dump_config(config):
    """Returns a config as YAML text that `load_config` reads back unchanged."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _build(cls, raw, prefix):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), key, fields))
    values = {}
    for name, field in fields.items():
        if name not in raw:
            continue
        key = prefix + name
        values[name] = coerce_value(raw[name], field, key)
    return cls(**values)


def coerce_value(value, field, key):
    """Converts a YAML value to a dataclass field's type, or raises `ConfigError`."""
    if field.name == "factors":
        return _parse_factors(value, key)
    value = _coerce(value, field.type, key)
    check = field.metadata.get("check")
    if check:
        check(value, key)
    return value


def _coerce(value, tp, key):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        for alternative in alternatives:
            try:
                return _coerce(value, alternative, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(map(_choice_name, alternatives))}, "
                          f"got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of: "
                              + ", ".join(map(str, args)))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int, but `true` is no batch size.
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} "
                      f"({_type_name(type(value))})")


def _parse_factors(raw, key):
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must map factor names to lists of levels, e.g. bn: [none, before]")
    factors = {}
    for name, levels in raw.items():
        if name not in FACTORS:
            raise ConfigError(_unknown_key_message(f"{key}.{name}", name, FACTORS))
        levels = levels if isinstance(levels, list) else [levels]
        section, field_name = FACTORS[name]
        section_cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
        field = {f.name: f for f in dataclasses.fields(section_cls)}[field_name]
        parsed = tuple(coerce_value(v, field, f"{key}.{name}[{i}]") for i, v in enumerate(levels))
        if not parsed or len(set(parsed)) != len(parsed):
            raise ConfigError(f"{key}.{name}: give one or more distinct levels, got {levels!r}")
        factors[name] = parsed
    return factors


def _choice_name(tp):
    if typing.get_origin(tp) is Literal:
        return ", ".join(map(str, typing.get_args(tp)))
    return _type_name(tp)


def _type_name(tp):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", list: "a list", dict: "a mapping"}.get(tp, tp.__name__)


def _unknown_key_message(key, name, fields):
    close = difflib.get_close_matches(str(name), fields, n=1)
    hint = f"; did you mean {key[: -len(str(name))]}{close[0]}?" if close else ""
    return f"unknown key {key}{hint} (valid keys here: {', '.join(fields)})"


def _check_consistency(config):
    data, train = config.data, config.train
    if data.source == "tfds" and not data.name:
        raise ConfigError("data.name: source tfds needs a data set name, e.g. mnist")
    if data.source == "idx" and not data.path:
        raise ConfigError("data.path: source idx needs the directory of the IDX files")
    for key in ("train_ratio", "test_ratio"):
        ratio = getattr(data, key)
        levels = config.study.factors.get(key, ()) if config.study.factors else ()
        for value in {ratio, *levels} - {None}:
            parts = value.count(":") + 1
            if not data.classes or parts != len(data.classes):
                raise ConfigError(
                    f"data.{key}: ratio {value!r} has {parts} parts but data.classes is "
                    f"{list(data.classes) if data.classes else 'not set'}; list one class per part, "
                    "e.g. classes: [0, 1] with ratio '1:9'")
    if config.study.design == "one_at_a_time":
        for name in config.study.factors or {}:
            section, field = FACTORS[name]
            if getattr(getattr(config, section), field) is None:
                raise ConfigError(
                    f"study.factors.{name}: a one_at_a_time design varies each factor from "
                    f"the config's own value, but {section}.{field} is not set; set it to "
                    "the default level, e.g. '1:1'")
    if train.steps % train.eval_every:
        raise ConfigError(f"train.steps ({train.steps}) must be a multiple of "
                          f"train.eval_every ({train.eval_every}) so that the last step is evaluated")
