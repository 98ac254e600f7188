"""Matrix config: YAML in, a validated plain-dict config out.

A matrix config names the axes (backbones x operators x shift implementations x
mixing modes x datasets x seeds), the model overrides every cell shares, the
trainer / data / optimiser / measurement settings, and the matched-FLOPs
groups. Validation is strict: an unknown key or a bad value raises a
ValueError whose one-line message names the key path, the value received and
what is allowed, so a user fixes the YAML without reading code.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from modules.names import BACKBONE_OPS as OPERATORS, MIXINGS, OPTIMIZERS, SCHEDULES, SHIFT_IMPLS as SHIFTS

# dataset name -> (in_chans, image size, num_classes); the datamodules own the data itself
DATASETS = {
    "fashion_mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "imagenet": (3, 224, 1000),
    "synthetic": (3, 32, 10),
}
CELL_KEYS = ("backbone", "op", "model", "shift", "mixing", "dataset", "seed")


class _Spec:
    """One scalar setting: type check, range check, default."""

    def __init__(self, kind, default=None, *, choices=None, lo=None, hi=None, nullable=False, doc=""):
        self.kind, self.default, self.choices = kind, default, choices
        self.lo, self.hi, self.nullable, self.doc = lo, hi, nullable, doc

    def allowed(self, path: str = "") -> str:
        if self.kind == "lightning":
            return lightning_allowed(path.rsplit(".", 1)[-1])
        if self.kind == "classifier":
            return classifier_allowed(path.rsplit(".", 1)[-1])
        if self.kind == "devices":
            return "an integer >= 1, -1 (all), 'auto', or a list of device indices"
        if self.kind == "threads":
            return "an integer >= 1, 'auto' (the physical cores) or null (torch's default)"
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices)) + (" or null" if self.nullable else "")
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 list: "a list", dict: "a mapping", "ratio": "an integer count or a fraction in (0, 1]",
                 "threads": "an integer >= 1 or 'auto' (physical cores)"}
        s = words.get(self.kind, str(self.kind))
        if self.lo is not None and self.hi is not None:
            s += f" in [{self.lo}, {self.hi}]"
        elif self.lo is not None:
            s += f" >= {self.lo}"
        return s + (" or null" if self.nullable else "")

    def check(self, path: str, value):
        if value is None:
            if self.nullable:
                return None
            _fail(path, value, self.allowed(path))
        if self.kind == "lightning":
            return check_trainer_arg(path, value)
        if self.kind == "classifier":
            return check_classifier_arg(path, value)
        if self.kind == "devices":
            ok = (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)) \
                or value == "auto" or (isinstance(value, list) and value
                                       and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value))
            if not ok:
                _fail(path, value, self.allowed())
            return value
        if self.kind == "threads":
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                _fail(path, value, self.allowed())
            return value
        if self.choices is not None:
            if value not in self.choices:
                _fail(path, value, self.allowed())
            return value
        kind = self.kind
        if kind == "threads":  # a positive count or "auto" (the machine's physical cores)
            if value == "auto":
                return value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(path, value, self.allowed())
            return value
        if kind == "ratio":  # Lightning's limit_*_batches: int count or float fraction
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(path, value, self.allowed())
            if isinstance(value, float) and not (0.0 < value <= 1.0):
                _fail(path, value, self.allowed())
            if isinstance(value, int) and value < 0:
                _fail(path, value, self.allowed())
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind in (int, float) and isinstance(value, bool):
            _fail(path, value, self.allowed())
        if not isinstance(value, kind):
            _fail(path, value, self.allowed())
        if self.lo is not None and value < self.lo:
            _fail(path, value, self.allowed())
        if self.hi is not None and value > self.hi:
            _fail(path, value, self.allowed())
        return value


def _fail(path: str, value, allowed: str):
    raise ValueError(f"config key {path!r}: got {value!r}; allowed: {allowed}")


# ---------------------------------------------------------------- settings checked against their owners' signatures
# Trainer arguments the runner sets itself (resume, records and progress depend on them)
RUNNER_TRAINER_ARGS = ("callbacks", "logger", "default_root_dir", "enable_checkpointing", "enable_progress_bar",
                       "use_distributed_sampler", "plugins", "model_registry")
# ImageClassifier arguments the runner fills from the cell and the data
RUNNER_CLASSIFIER_ARGS = ("self", "model_name_or_module", "num_classes", "model_kwargs", "input_size", "batch_size",
                          "log_mixing")


def _hints(fn) -> dict:
    import typing

    return {k: v for k, v in typing.get_type_hints(fn).items() if k != "return"}


def trainer_hints() -> dict:
    """lightning.pytorch.Trainer's own arguments and their annotations (the runner's own ones removed)."""
    import lightning.pytorch as pl

    return {k: v for k, v in _hints(pl.Trainer.__init__).items() if k not in RUNNER_TRAINER_ARGS}


def classifier_hints() -> dict:
    from modules.lightning import ImageClassifier

    return {k: v for k, v in _hints(ImageClassifier.__init__).items() if k not in RUNNER_CLASSIFIER_ARGS}


def _type_name(ann) -> str:
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "null"
    if origin is typing.Literal:
        return ", ".join(map(repr, args))
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(ann, getattr(
        ann, "__name__", str(ann)))


def _matches(value, ann) -> bool:
    """Whether a YAML value fits an annotation (scalars, Literal, Optional/Union, list, tuple, dict)."""
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is typing.Any:
        return True
    if ann is type(None):
        return value is None
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    return False  # objects (Accelerator, Profiler, timedelta ...): not expressible in YAML here


def lightning_allowed(key: str) -> str:
    hints = trainer_hints()
    if key == "accelerator":
        from lightning.pytorch.accelerators import AcceleratorRegistry
        return "one of " + ", ".join(map(repr, ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]))
    if key == "strategy":
        from lightning.pytorch.strategies import StrategyRegistry
        return "'auto' or one of Lightning's registered strategies: " + ", ".join(map(repr, StrategyRegistry.available_strategies()))
    if key in hints:
        return f"{_type_name(hints[key])} (lightning.pytorch.Trainer's {key})"
    return "keys " + ", ".join(SECTIONS["trainer"]) + " or any lightning.pytorch.Trainer argument except " \
        + ", ".join(RUNNER_TRAINER_ARGS) + " (the runner sets those)"


def check_trainer_arg(path: str, value):
    """A trainer setting against lightning.pytorch.Trainer's signature (and its accelerator/strategy registries)."""
    key = path.rsplit(".", 1)[-1]
    hints = trainer_hints()
    if key not in hints:
        _fail(path, value, lightning_allowed(key))
    if key in ("accelerator", "strategy"):
        from lightning.pytorch.accelerators import AcceleratorRegistry
        from lightning.pytorch.strategies import StrategyRegistry

        names = ({"auto", "gpu", *AcceleratorRegistry.available_accelerators()} if key == "accelerator"
                 else {"auto", *StrategyRegistry.available_strategies()})
        if value not in names:
            _fail(path, value, lightning_allowed(key))
        return value
    if not _matches(value, hints[key]):
        _fail(path, value, lightning_allowed(key))
    return value


def classifier_allowed(key: str) -> str:
    if key == "optimizer":
        return "one of " + ", ".join(map(repr, OPTIMIZERS))
    if key == "schedule":
        return "one of " + ", ".join(map(repr, SCHEDULES))
    hints = classifier_hints()
    if key in hints:
        return f"{_type_name(hints[key])} (ImageClassifier's {key})"
    return "keys " + ", ".join(hints) + " (modules.lightning.ImageClassifier's optimisation arguments)"


def check_classifier_arg(path: str, value):
    key = path.rsplit(".", 1)[-1]
    hints = classifier_hints()
    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}.get(key)
    if key not in hints or (choices is not None and value not in choices) or not _matches(value, hints[key]):
        _fail(path, value, classifier_allowed(key))
    return value


SECTIONS: dict[str, dict[str, _Spec]] = {
    "trainer": {
        "accelerator": _Spec("lightning", "auto"),
        "devices": _Spec("devices", 1),
        "strategy": _Spec("lightning", "auto"),
        "num_nodes": _Spec(int, 1, lo=1),
        "precision": _Spec("lightning", "32-true"),
        "max_epochs": _Spec(int, 1, lo=1, nullable=True),
        "max_steps": _Spec(int, -1, lo=-1),
        "limit_train_batches": _Spec("ratio", None, nullable=True),
        "limit_val_batches": _Spec("ratio", None, nullable=True),
        "limit_test_batches": _Spec("ratio", None, nullable=True),
        "accumulate_grad_batches": _Spec(int, 1, lo=1),
        "gradient_clip_val": _Spec(float, None, lo=0.0, nullable=True),
        "log_every_n_steps": _Spec(int, 10, lo=1),
        "deterministic": _Spec(bool, False),
        "checkpoint_every_n_steps": _Spec(int, 50, lo=1),   # resume granularity inside an epoch
        "keep_checkpoints": _Spec(bool, False),             # keep last.ckpt after a cell finishes
    },
    "data": {
        "root": _Spec(str, None, nullable=True),
        "batch_size": _Spec(int, 64, lo=1),
        "num_workers": _Spec(int, 0, lo=0),
        "val_fraction": _Spec(float, 0.1, lo=0.0, hi=0.9),
        "image_size": _Spec(int, None, lo=8, nullable=True),
        "train_subset": _Spec(int, None, lo=1, nullable=True),
        "val_subset": _Spec(int, None, lo=1, nullable=True),
        "test_subset": _Spec(int, None, lo=1, nullable=True),
        "augment": _Spec(bool, True),
        "eval_batch_size": _Spec(int, None, lo=1, nullable=True),
    },
    "optim": {  # ImageClassifier's optimisation arguments (modules/lightning.py)
        "optimizer": _Spec("classifier", "sgd"),
        "lr": _Spec(float, 0.1, lo=1e-12),
        "weight_decay": _Spec(float, 5e-4, lo=0.0),
        "momentum": _Spec(float, 0.9, lo=0.0, hi=1.0),
        "nesterov": _Spec(bool, True),
        "schedule": _Spec("classifier", "cosine"),
        "warmup_epochs": _Spec(float, 0.0, lo=0.0),
        "min_lr": _Spec(float, 0.0, lo=0.0),
        "label_smoothing": _Spec(float, 0.0, lo=0.0, hi=0.99),
    },
    "measure": {
        "counts": _Spec(bool, True),
        "voices": _Spec(list, ["formula", "fvcore"]),
        "speed": _Spec(bool, True),
        # torch intra-op threads: "auto" = the physical cores this process may use (shared by the DDP
        # processes of one machine), an integer, or null (leave torch's setting alone)
        "threads": _Spec("threads", "auto", nullable=True),
        # cells run side by side on this machine, each in its own process (inline executor): "auto" threads are
        # then the physical cores divided among them
        "jobs": _Spec(int, 1, lo=1),
        "batch_size": _Spec(int, 32, lo=1),
        "latency": _Spec(bool, True),
        "min_run_time": _Spec(float, 0.5, lo=0.0),
        "repeats": _Spec(int, 5, lo=1),
    },
    "model": {
        "stem": _Spec(str, None, choices=("imagenet", "small"), nullable=True),
        "widths": _Spec(list, None, nullable=True),
        "width_mult": _Spec(float, None, lo=0.0, nullable=True),
        "kernel_att": _Spec(int, None, lo=1, nullable=True),
        "heads": _Spec(int, None, lo=1, nullable=True),
        "img_size": _Spec(int, None, lo=8, nullable=True),
        "num_classes": _Spec(int, None, lo=1, nullable=True),
        "in_chans": _Spec(int, None, lo=1, nullable=True),
        "kernel_size": _Spec(int, None, lo=1, nullable=True),
        "window_size": _Spec(int, None, lo=1, nullable=True),
        "patch_size": _Spec(int, None, lo=1, nullable=True),
        "depths": _Spec(list, None, nullable=True),
        "mlp_ratio": _Spec(float, None, lo=0.0, nullable=True),
        "drop_path_rate": _Spec(float, None, lo=0.0, hi=1.0, nullable=True),
    },
}

MATRIX_KEYS = {
    "backbones": "a non-empty list of backbone names, e.g. [resnet26]",
    "operators": f"a non-empty list drawn from {list(OPERATORS)}",
    "shifts": f"a non-empty list drawn from {list(SHIFTS)} (ACmix cells only)",
    "mixings": f"a non-empty list drawn from {list(MIXINGS)} (ACmix cells only)",
    "datasets": f"a non-empty list drawn from {list(DATASETS)}",
    "seeds": "a non-empty list of integers >= 0",
    "exclude": "a list of selectors, e.g. [{op: sa, seed: 2}]",
}
TOP_KEYS = ("name", "description", "matrix", "groups", "report") + tuple(SECTIONS)
REPORT_SPECS = {
    "run": _Spec(bool, True),  # run the report command after the matrix
    "margin": _Spec(float, 0.5, lo=1e-9),  # equivalence margin of the verdicts, top-1 points
}
GROUP_KEYS = ("name", "reference", "members", "tolerance")


def _check_selector(path: str, sel) -> dict:
    if not isinstance(sel, dict) or not sel:
        _fail(path, sel, f"a non-empty mapping over {list(CELL_KEYS)}")
    for k, v in sel.items():
        if k not in CELL_KEYS:
            _fail(f"{path}.{k}", v, f"keys {list(CELL_KEYS)}")
    return dict(sel)


def _check_list(path: str, value, allowed=None, kind=str) -> list:
    if not isinstance(value, list) or not value:
        _fail(path, value, MATRIX_KEYS.get(path.split(".")[-1], "a non-empty list"))
    seen = set()
    for i, v in enumerate(value):
        if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            _fail(f"{path}[{i}]", v, "an integer >= 0")
        if kind is str and not isinstance(v, str):
            _fail(f"{path}[{i}]", v, "a string")
        if allowed is not None and v not in allowed:
            _fail(f"{path}[{i}]", v, "one of " + ", ".join(map(repr, allowed)))
        if v in seen:
            _fail(f"{path}[{i}]", v, "each value once (duplicate)")
        seen.add(v)
    return list(value)


def validate_config(raw: Any, *, known_models=None) -> dict:
    """Check a raw config mapping and return it with every default filled in.

    known_models: names the registry offers (when available); each
    backbone-operator model name is then checked against it.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"config must be a YAML mapping with keys {list(TOP_KEYS)}, got {type(raw).__name__}")
    for k in raw:
        if k not in TOP_KEYS:
            _fail(k, raw[k], f"top-level keys {list(TOP_KEYS)}")
    cfg: dict = {"name": raw.get("name", "matrix"), "description": raw.get("description", "")}
    if not isinstance(cfg["name"], str) or not cfg["name"]:
        _fail("name", cfg["name"], "a non-empty string")

    m = raw.get("matrix")
    if not isinstance(m, dict):
        _fail("matrix", m, "a mapping with keys " + ", ".join(MATRIX_KEYS))
    for k in m:
        if k not in MATRIX_KEYS:
            _fail(f"matrix.{k}", m[k], "keys " + ", ".join(MATRIX_KEYS))
    for req in ("backbones", "operators", "datasets"):
        if req not in m:
            _fail(f"matrix.{req}", None, MATRIX_KEYS[req])
    matrix = {
        "backbones": _check_list("matrix.backbones", m["backbones"]),
        "operators": _check_list("matrix.operators", m["operators"], OPERATORS),
        "shifts": _check_list("matrix.shifts", m.get("shifts", ["multigroup"]), SHIFTS),
        "mixings": _check_list("matrix.mixings", m.get("mixings", ["learnable"]), MIXINGS),
        "datasets": _check_list("matrix.datasets", m["datasets"], tuple(DATASETS)),
        "seeds": _check_list("matrix.seeds", m.get("seeds", [0]), kind=int),
        "exclude": [],
    }
    excl = m.get("exclude", []) or []
    if not isinstance(excl, list):
        _fail("matrix.exclude", excl, MATRIX_KEYS["exclude"])
    matrix["exclude"] = [_check_selector(f"matrix.exclude[{i}]", s) for i, s in enumerate(excl)]
    cfg["matrix"] = matrix
    if known_models is not None:
        known = set(known_models)
        def excluded(b, op):  # a selector on backbone / op / model alone drops the pair from every cell
            pair = {"backbone": b, "op": op, "model": f"{b}-{op}"}
            return any(set(s) <= set(pair) and all(pair[k] in (v if isinstance(v, list) else [v]) for k, v in s.items())
                       for s in matrix["exclude"])

        for b in matrix["backbones"]:
            for op in matrix["operators"]:
                if f"{b}-{op}" not in known and not excluded(b, op):
                    # Swin has no plain-conv form: list what the registry does have for this backbone
                    have = sorted(n for n in known if n.startswith(b + "-"))
                    raise ValueError(
                        f"config key 'matrix': model {b}-{op!s} (backbone {b!r} x operator {op!r}) is not in the "
                        f"registry; allowed for {b!r}: {', '.join(have) or 'none (unknown backbone)'}; "
                        f"use matrix.exclude or drop the operator")

    for sec, specs in SECTIONS.items():
        given = raw.get(sec) or {}
        if not isinstance(given, dict):
            _fail(sec, given, "a mapping with keys " + ", ".join(specs))
        out = {}
        extra = {}
        for k, v in given.items():
            if k in specs:
                continue
            # any other Lightning Trainer / ImageClassifier argument, checked against its signature; only
            # present when set, so cell ids of configs that do not use them stay the same
            if sec == "trainer":
                extra[k] = check_trainer_arg(f"{sec}.{k}", copy.deepcopy(v))
            elif sec == "optim":
                extra[k] = check_classifier_arg(f"{sec}.{k}", copy.deepcopy(v))
            else:
                _fail(f"{sec}.{k}", v, "keys " + ", ".join(specs))
        for k, spec in specs.items():
            out[k] = spec.check(f"{sec}.{k}", copy.deepcopy(given[k]) if k in given else copy.deepcopy(spec.default))
        if sec == "trainer":  # our own specs above narrow Lightning's types; the signature must still accept them
            for k in ("max_epochs", "max_steps", "limit_train_batches", "gradient_clip_val"):
                check_trainer_arg(f"{sec}.{k}", out[k])
        out.update(extra)
        cfg[sec] = out
    t = cfg["trainer"]
    if t["max_epochs"] is None and t["max_steps"] == -1:
        _fail("trainer.max_epochs", None, "an integer >= 1 (or set trainer.max_steps)")
    w = cfg["model"]["widths"]
    if w is not None and (not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in w)):
        _fail("model.widths", w, "a list of positive integers (4 per-stage widths for ResNet, [embed_dim] for Swin)")
    voices = cfg["measure"]["voices"]
    if not voices or not all(isinstance(v, str) for v in voices):
        _fail("measure.voices", voices, "a non-empty list of counter names, e.g. [formula, fvcore]")

    groups = raw.get("groups") or []
    if not isinstance(groups, list):
        _fail("groups", groups, "a list of {name, reference, members, tolerance}")
    cfg["groups"] = []
    names = set()
    for i, g in enumerate(groups):
        p = f"groups[{i}]"
        if not isinstance(g, dict):
            _fail(p, g, "a mapping with keys " + ", ".join(GROUP_KEYS))
        for k in g:
            if k not in GROUP_KEYS:
                _fail(f"{p}.{k}", g[k], "keys " + ", ".join(GROUP_KEYS))
        name = g.get("name")
        if not isinstance(name, str) or not name or name in names:
            _fail(f"{p}.name", name, "a unique non-empty string")
        names.add(name)
        tol = _Spec(float, 0.01, lo=0.0, hi=1.0).check(f"{p}.tolerance", g.get("tolerance", 0.01))
        ref = _check_selector(f"{p}.reference", g.get("reference"))
        mem = _check_selector(f"{p}.members", g.get("members")) if g.get("members") is not None else {}
        cfg["groups"].append({"name": name, "reference": ref, "members": mem, "tolerance": tol})

    cfg["report"] = _check_report(raw.get("report", True))
    return cfg


def _check_report(report) -> dict:
    """`report: true/false` (print the report after the matrix) or a mapping {run, margin}."""
    if isinstance(report, bool):
        report = {"run": report}
    if not isinstance(report, dict):
        _fail("report", report, "true, false or a mapping with keys " + ", ".join(REPORT_SPECS))
    for k, v in report.items():
        if k not in REPORT_SPECS:
            _fail(f"report.{k}", v, "keys " + ", ".join(REPORT_SPECS))
    return {k: spec.check(f"report.{k}", report.get(k, spec.default)) for k, spec in REPORT_SPECS.items()}


def _registry_names():
    try:
        from modules import list_models
    except ImportError:
        return None
    return list_models()


def load_config(path: str | os.PathLike, overrides: dict | None = None, *, check_registry: bool = True) -> dict:
    """Read and validate a matrix YAML. overrides: {"trainer.max_epochs": 1, ...} applied before validation."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found; pass a YAML file such as configs/default.yaml")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            msg = " ".join(str(e).split())
            raise ValueError(f"config file {path!r} is not valid YAML: {msg}") from None
    raw = apply_overrides(raw, overrides or {})
    return validate_config(raw, known_models=_registry_names() if check_registry else None)


def apply_overrides(raw, overrides: dict):
    """Set dotted keys ("trainer.max_epochs") in a raw config; the result is validated like the file."""
    if not overrides:
        return raw
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        return raw
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = raw
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if part == "report" and isinstance(child, bool):
                child = node[part] = {"run": child}
            if not isinstance(child, dict):
                _fail(".".join(parents[:i + 1]), child, f"a mapping (to set {dotted})")
            node = child
        node[key] = value
    return raw


def parse_set(items: list[str] | None) -> dict:
    """--set KEY=VALUE (repeatable) into overrides; VALUE is read as YAML (64, 0.1, null, auto, [0, 1])."""
    out = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not p for p in key.split(".")):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set data.batch_size=64")
        try:
            value = yaml.safe_load(text) if text.strip() else None
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a number was meant
                try:
                    value = float(value)
                except ValueError:
                    pass
            out[key] = value
        except yaml.YAMLError:
            raise ValueError(f"--set {item!r}: the value is not valid YAML; quote it, e.g. --set 'name=\"x\"'") from None
    return out
