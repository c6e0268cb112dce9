"""Checks of a composed configuration, before anything is built: configuration is an interface.

A misspelt key or an impossible value fails in seconds, with one line per problem naming the key, the bad value and
what is allowed, instead of doing nothing (Hydra accepts ``+attacks.cw_l2_nxt.params.steps=5`` and the run ignores
it) or failing minutes later without the key (``ami.weaken=abc``).

* :func:`check_config`: called by every entry point right after Hydra composes ``cfg``. Unknown keys (top level,
  ``ami``, ``data``, ``paths``; the keyword arguments of every ``_target_`` node), unknown attack sets and attack
  parameters, the values of the run's own keys (FPR targets, batch size, workers, faces to attack, seed, formats, the
  trainer's device), the values of each detector's and attack's parameters by that component's own
  ``check_params`` (AmI's factors, witness rule and witness folder:
  :func:`ami_lightning.detectors.ami.check_ami_params`; a detector whose parameters come from a group by
  interpolation, as AmI's from ``ami``, is reported under the group's keys), and the files and folders the run
  needs. It collects every problem and raises one :class:`ConfigError` listing them, one per line. Pure and fast:
  no model, no data read beyond ``is_file`` / ``is_dir``, the count of the shipped faces and the YAML files of the
  config sources (and the modules of the components named by dotted path, which are imported).
* :func:`check_model_layers`: called once the model is built, before the witnesses: each detector that checks its
  parameters against the model's layers does so (AmI: every ``ami.crop_layers`` entry must be a hookable layer).

Where the allowed keys come from
--------------------------------
From the config files themselves, not from a second, hand-written schema: a key someone adds to a config file is
allowed at once (no schema to keep in step, which is the usual way such checks rot), and a user's own config
folder (``--config-dir``, ``hydra.searchpath``, read from ``hydra.runtime.config_sources``) extends what is
allowed. Composing every option of every group would cost seconds; instead each YAML file is read as it is
(:func:`config_files`, milliseconds, cached): the primary configs at the root of each source, and every option of
every group, placed at its package (the ``# @package`` header; the group's name when there is none; ``_global_``
at the root). Then

* top level: the primary config's own keys (the one named by ``hydra.job.config_name``; those of all primaries
  when it is not known), the package of every group (``attack/*`` -> ``attacks``), the keys the ``_global_``
  options set (``experiment``, ``hparams_search``), and ``hydra``. So ``ami-witness +fpr_targets=[0.1]`` is refused:
  ``witness.yaml`` defines no ``fpr_targets`` and nothing reads it there;
* ``ami``, ``data``, ``paths``: the keys that any option of the group, or a ``_global_`` option, sets there;
* a node with a ``_target_`` (``model``, ``trainer``, ``data.benign``): the keyword parameters of the target
  (``inspect.signature``), as ``instantiate`` would call it; not checked when the target takes ``**kwargs``. The
  logger is left to :func:`ami_lightning.pipeline.loggers.check_logger`, Hydra's own node to Hydra;
* ``attacks.<set>``: keys ``name`` (a registered attack of
  :data:`ami_lightning.attacks.registry.ATTACK_SETS`, or ``package.module:Name`` of an ``Attack``; a budget-only
  entry without one takes the name its ``attack/<set>.yaml`` file gives, else the set's own), ``detector`` (for an
  adaptive attack: which of the run's detectors it attacks; no other attack takes one) and ``params``, the
  parameters of the attack's constructor (:meth:`~ami_lightning.attacks.registry.AttackSpec.parameters`;
  ``detector`` is the pipeline's), whose values its ``check_params`` checks;
* ``detectors.<name>``: keys ``type`` (a registered detector, :func:`ami_lightning.detectors.base.registered_detectors`,
  or ``package.module:Name``) and ``params`` (the keyword parameters of its factory, whose values its
  ``check_params`` checks); a run
  that evaluates (``ami-eval``, ``ami-run``) needs at least one.
* the names of attack sets and detectors: letters, digits, ``_`` and ``-`` (:data:`PLAIN_NAME`): a set's name is a
  folder under ``data.attacks_dir`` (an absolute name or ``..`` would read files outside it), and both are parts of
  metric names (``<detector>/<set>/<metric>``).

An unknown option of a config group chosen in a list (``detector=[amii]``, ``attack=[fgsm,bimm]``) is Hydra's error,
raised before any of this runs; importing this module makes it list the group's options, as Hydra does for a group
chosen alone (:func:`list_options_of_missing_configs`).
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from hydra._internal import defaults_list
from hydra.core.hydra_config import HydraConfig
from hydra.core.object_type import ObjectType
from hydra.errors import MissingConfigException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ami_lightning.attacks.registry import ATTACK_SETS, get_spec, keyword_parameters, known_attack
from ami_lightning.checks import is_int, is_number, show
from ami_lightning.cli import config_dir
from ami_lightning.data.datasets import OnError
from ami_lightning.data.shipped import shipped_face_count
from ami_lightning.detectors.base import get_detector_factory, registered_detectors

CHECKED_GROUPS: tuple[str, ...] = ("ami", "data", "paths")
"""Groups whose keys must be among those their config files define."""
UNCHECKED_TARGETS: tuple[str, ...] = ("hydra", "logger")
"""Top-level nodes whose ``_target_`` keyword arguments are left alone (Hydra's own; the logger's own check)."""
ATTACK_KEYS: tuple[str, ...] = ("name", "detector", "params")
DETECTOR_KEYS: tuple[str, ...] = ("type", "params")
EVALUATING_TASKS: tuple[str, ...] = ("eval", "run")
ON_ERROR: tuple[str, ...] = tuple(get_args(OnError))
CUDA_ACCELERATORS: tuple[str, ...] = ("gpu", "cuda")


_ABSENT: Any = object()  # no such key
_BROKEN: Any = object()  # a value that cannot be resolved (reported once, where it is read)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""What the name of an attack set or a detector may hold (module docstring)."""
_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)")


class ConfigError(ValueError):
    """A configuration that cannot run as meant; ``problems`` holds one line per problem, each naming the key, the
    bad value and what is allowed, and the message lists them all."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        super().__init__(f"invalid configuration ({count} problem{'' if count == 1 else 's'}):\n"
                         + "\n".join(f"  {problem}" for problem in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[str, ...]]]:
        return type(self), (self.problems,)


# ---- what the config files define -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigFiles:
    """What the YAML files of some config sources define (module docstring): ``primaries``: each primary config's
    own top-level keys; ``packages``: the top-level keys that group options fill; ``nodes``: for each place (a key
    path), the mappings that files set there."""

    primaries: Mapping[str, frozenset[str]]
    packages: frozenset[str]
    nodes: Mapping[tuple[str, ...], tuple[Mapping[str, Any], ...]]
    includes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def own_keys(self, primary: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        """The top-level keys ``primary`` sets itself or through the root configs its defaults list includes
        (``run`` includes ``eval``, which includes ``common``), transitively."""
        keys = self.primaries.get(primary, frozenset())
        for included in self.includes.get(primary, ()):
            if included not in seen:
                keys |= self.own_keys(included, seen | {primary})
        return keys

    def top_level(self, primary: str | None) -> frozenset[str]:
        """Top-level keys allowed in a config composed from ``primary`` (all primaries' keys if it is unknown)."""
        if primary in self.primaries:
            return self.own_keys(primary) | self.packages
        return frozenset().union(*self.primaries.values()) | self.packages

    def keys_at(self, place: tuple[str, ...]) -> frozenset[str] | None:
        """Every key that some file sets in the mapping at ``place``; None if no file sets one there."""
        nodes = self.nodes.get(place)
        return frozenset().union(*(node.keys() for node in nodes)) if nodes else None


def _package_header(text: str) -> str | None:
    """The ``# @package`` of a config file (in its leading comment lines), or None."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            break
        if match := _PACKAGE.match(line):
            return match.group(1)
    return None


def _package_place(header: str | None, group: tuple[str, ...]) -> tuple[str, ...]:
    """Where an option of ``group`` goes: its package header as a key path (``_global_``: the root)."""
    if header is None:
        return group
    parts = tuple(header.split("."))
    if parts[0] == "_global_":
        return parts[1:]
    if parts[0] == "_group_":
        return group + parts[1:]
    return parts


def _record(nodes: dict[tuple[str, ...], list[Mapping[str, Any]]], place: tuple[str, ...], node: Any) -> None:
    if isinstance(node, Mapping):
        nodes.setdefault(place, []).append(node)
        for key, child in node.items():
            _record(nodes, (*place, str(key)), child)


@functools.lru_cache(maxsize=8)
def config_files(sources: tuple[str, ...]) -> ConfigFiles:
    """Read every ``*.yaml`` under the config folders ``sources`` (module docstring); cached."""
    primaries: dict[str, frozenset[str]] = {}
    includes: dict[str, tuple[str, ...]] = {}
    packages = {"hydra"}
    nodes: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for root in map(Path, sources):
        for path in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
            text = path.read_text(encoding="utf-8")
            content = OmegaConf.to_container(OmegaConf.create(text), resolve=False) if text.strip() else {}
            if not isinstance(content, dict):
                continue
            defaults = content.pop("defaults", None) or []
            group = path.relative_to(root).parent.parts
            if not group:
                primaries[path.stem] = primaries.get(path.stem, frozenset()) | frozenset(map(str, content))
                includes[path.stem] = tuple(d for d in defaults if isinstance(d, str) and d != "_self_")
                place: tuple[str, ...] = ()
            else:
                place = _package_place(_package_header(text), group)
                packages.update([place[0]] if place else map(str, content))
            _record(nodes, place, content)
    return ConfigFiles(primaries, frozenset(packages), {place: tuple(found) for place, found in nodes.items()},
                       includes)


def _hydra_node(cfg: DictConfig) -> Any:
    """Hydra's node of ``cfg`` (composed with ``return_hydra_config``), else the running job's, else None."""
    node = OmegaConf.select(cfg, "hydra", default=None, throw_on_resolution_failure=False)
    if isinstance(node, DictConfig):
        return node
    return HydraConfig.get() if HydraConfig.initialized() else None


def config_sources(cfg: DictConfig) -> tuple[str, ...]:
    """The config folders ``cfg`` was composed from: the shipped ``ami_lightning.conf`` and the ``file://`` and
    ``pkg://`` sources of Hydra's search path (Hydra's own aside)."""
    folders = [config_dir()]
    hydra = _hydra_node(cfg)
    sources = OmegaConf.select(hydra, "runtime.config_sources", default=None) if hydra is not None else None
    for source in sources or []:
        if source.get("provider") == "hydra" or not source.get("path"):
            continue
        if source.get("schema") == "file":
            folders.append(Path(source.path))
        elif source.get("schema") == "pkg":
            try:
                folders.append(Path(str(importlib.resources.files(source.path))))
            except (ModuleNotFoundError, TypeError):
                continue
    return tuple(dict.fromkeys(str(folder.resolve()) for folder in folders))


def _primary_name(cfg: DictConfig) -> str | None:
    hydra = _hydra_node(cfg)
    return OmegaConf.select(hydra, "job.config_name", default=None) if hydra is not None else None


# ---- helpers -------------------------------------------------------------------------------------------------------
def _item(key: str, value: Any) -> str:
    """``key=value`` for a scalar, ``key`` alone for a mapping."""
    return key if isinstance(value, DictConfig | Mapping) else f"{key}={show(value)}"


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _Problems:
    """The problems found so far, and reading values of ``cfg`` without letting a resolution error escape."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)

    def get(self, key: str) -> Any:
        """The resolved value at ``key``; ``_ABSENT`` if there is none; ``_BROKEN`` (and a problem) if it is ``???``
        or cannot be resolved."""
        try:
            return OmegaConf.select(self.cfg, key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            self.add(f"{key}=???: no value given")
        except OmegaConfBaseException as err:
            self.add(f"{key}: cannot be resolved: {str(err).splitlines()[0]}")
        return _BROKEN

    def source(self, key: str) -> str:
        """The key that ``key`` takes its value from, following plain interpolations (``data.attacks_dir`` ->
        ``paths.attacks_dir``), for messages that name what the user should set."""
        seen = []
        while key not in seen:
            seen.append(key)
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(self.cfg, parent, default=None) if parent else self.cfg
            if not isinstance(node, DictConfig) or leaf not in node.keys():
                break
            raw = OmegaConf.to_container(node, resolve=False).get(leaf)
            match = _INTERPOLATION.match(raw) if isinstance(raw, str) else None
            if match is None:
                break
            key = match.group(1)
        return key

    def value(self, key: str, ok: Callable[[Any], bool], expected: str, required: bool = True) -> Any:
        """Check the value at ``key`` (``ok``); a problem ``key=value: expected ...`` if it fails, or ``key: missing``
        if there is none and it is ``required``. Returns the value (or ``_ABSENT`` / ``_BROKEN``)."""
        value = self.get(key)
        if value is _ABSENT:
            if required:
                self.add(f"{key}: missing; expected {expected}")
        elif value is not _BROKEN and not ok(value):
            self.add(f"{key}={show(value)}: expected {expected}")
        return value


# ---- check_config --------------------------------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Check a composed config before anything is built (module docstring); one :class:`ConfigError` listing every
    problem found, one per line."""
    problems = _Problems(cfg)
    files = config_files(config_sources(cfg))
    _check_top_level(cfg, files, problems)
    raw = OmegaConf.to_container(cfg, resolve=False)
    for group in CHECKED_GROUPS:
        if isinstance(raw.get(group), Mapping):
            _check_keys(raw[group], (group,), files, problems)
    _check_targets(cfg, problems)
    _check_detectors(problems, files)
    _check_attacks(problems, files)
    _check_values(problems)
    _check_trainer(problems)
    _check_paths(problems)
    if problems.lines:
        raise ConfigError(problems.lines)


def _check_top_level(cfg: DictConfig, files: ConfigFiles, problems: _Problems) -> None:
    allowed = files.top_level(_primary_name(cfg))
    in_groups = {key: f"{group}.{key}" for group in CHECKED_GROUPS for key in files.keys_at((group,)) or ()}
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key in cfg.keys():
        key = str(key)
        if key not in allowed:
            hint = f" (did you mean {in_groups[key]}?)" if key in in_groups else _did_you_mean(key, allowed)
            problems.add(f"{_item(key, raw[key])}: unknown top-level key{hint}; allowed: {', '.join(sorted(allowed))}")


def _check_keys(node: Mapping[str, Any], place: tuple[str, ...], files: ConfigFiles, problems: _Problems) -> None:
    """Keys of ``node`` (raw, unresolved) at ``place`` against those the config files set there; nodes with a
    ``_target_`` are left to :func:`_check_targets`."""
    allowed = files.keys_at(place)
    if allowed is None or "_target_" in node:
        return
    where = ".".join(place)
    for key, child in node.items():
        if key not in allowed:
            problems.add(f"{_item(f'{where}.{key}', child)}: unknown key in {where}{_did_you_mean(key, allowed)}; "
                         f"the config files define: {', '.join(sorted(allowed))}")
        elif isinstance(child, Mapping):
            _check_keys(child, (*place, key), files, problems)


def _check_targets(cfg: DictConfig, problems: _Problems) -> None:
    """Every ``_target_`` node (but Hydra's and the logger's): its keys must be keyword parameters of the target."""
    raw = OmegaConf.to_container(cfg, resolve=False)

    def visit(node: Any, where: str) -> None:
        if isinstance(node, list):
            for i, child in enumerate(node):
                visit(child, f"{where}[{i}]")
            return
        if not isinstance(node, Mapping):
            return
        target = node.get("_target_")
        if target == "???":
            problems.get(f"{where}._target_")  # reported as a value not given
        elif isinstance(target, str) and "${" not in target:
            _check_target_keys(node, where, target, problems)
        for key, child in node.items():
            visit(child, f"{where}.{key}" if where else str(key))

    for key, node in raw.items():
        if key not in UNCHECKED_TARGETS:
            visit(node, str(key))


def _check_target_keys(node: Mapping[str, Any], where: str, target: str, problems: _Problems) -> None:
    """The keys of a ``_target_`` node against the target's keyword parameters, then their values by the target's
    own ``check_params`` where it has one (:func:`_component_problems`)."""
    try:
        function = get_object(target)
        parameters = keyword_parameters(function)
    except Exception as err:  # any failure to import the target is the config's problem here
        problems.add(f"{where}._target_={target!r}: cannot be imported: {err}")
        return
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        for key, value in node.items():
            if not (key.startswith("_") and key.endswith("_")) and key not in parameters:
                problems.add(f"{_item(f'{where}.{key}', value)}: not a parameter of {target}"
                             f"{_did_you_mean(key, parameters)}; it takes: {', '.join(parameters)}")
    if (check := getattr(function, "check_params", None)) is not None:
        _component_problems(problems, where, check, [k for k in map(str, node) if not k.startswith("_")])


def _component_problems(problems: _Problems, where: str, check: Callable[[dict[str, Any]], list[str]],
                        names: Iterable[str]) -> None:
    """A component's own check (``check``: its ``check_params``) on the parameters ``names`` of the node ``where``,
    each resolved (one that does not resolve is a problem of its own and is left out); each line it returns,
    ``<param>=<value>: ...``, is reported under the key the value comes from (``model.weights`` ->
    ``paths.vgg_face_weights``; AmI's ``detectors.ami.params`` -> ``ami``)."""
    values = {name: problems.get(f"{where}.{name}") for name in names}
    resolved = {name: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
                for name, v in values.items() if v is not _BROKEN and v is not _ABSENT}
    for line in check(resolved):
        param = re.match(r"\w+", line)
        problems.add(problems.source(f"{where}.{param.group(0)}") + line[param.end():] if param else f"{where}: {line}")


def _entries(
    problems: _Problems, top: str, mapping: DictConfig, keys: tuple[str, ...], what: str, name_rule: str
) -> Iterator[tuple[str, DictConfig]]:
    """``(key, node)`` of each entry ``<top>.<name>`` of ``mapping`` that is itself a mapping and whose name is
    plain (:data:`PLAIN_NAME`); a problem for any other name (``name_rule``: why names are plain) or value, and for
    each key of an entry outside ``keys`` (``what`` names an entry in the message: ``an attack set``)."""
    for name in map(str, mapping.keys()):
        if not PLAIN_NAME.fullmatch(name):
            problems.add(f"{top}[{name!r}]: not a valid {what.partition(' ')[2]} name: {name_rule}, so it is "
                         "letters, digits, _ and - only")
            continue
        key = f"{top}.{name}"
        node = problems.get(key)
        if not isinstance(node, DictConfig):
            if node is not _BROKEN:
                problems.add(f"{key}={show(node)}: expected a mapping with keys {', '.join(keys)}")
            continue
        for extra in (str(k) for k in node.keys() if k not in keys):
            problems.add(f"{key}.{extra}: unknown key of {what}{_did_you_mean(extra, keys)}; "
                         f"allowed: {', '.join(keys)}")
        yield key, node


def _check_detectors(problems: _Problems, files: ConfigFiles) -> None:
    """``detectors.<name>``: keys ``type`` (a registered detector) and ``params`` (keyword parameters of its factory,
    with the values its ``check_params`` accepts); at least one detector in a run that evaluates. Params taken from a
    group by interpolation (AmI's ``params: ${ami}``) are reported under that group's keys, and a key the group's
    own check already refused is not reported twice."""
    detectors = problems.get("detectors")
    if detectors is _BROKEN:
        return
    if detectors is _ABSENT or detectors is None or (isinstance(detectors, DictConfig) and len(detectors) == 0):
        if problems.get("task_name") in EVALUATING_TASKS:
            problems.add("detectors: none selected; choose at least one, e.g. detector=[ami,feature_squeezing] "
                         f"(registered: {', '.join(registered_detectors())})")
        return
    if not isinstance(detectors, DictConfig):
        problems.add(f"detectors={show(detectors)}: expected a mapping of detector name -> {{type, params}}")
        return
    for key, _node in _entries(problems, "detectors", detectors, DETECTOR_KEYS, "a detector",
                               "a detector's name is a part of metric names (<detector>/<set>/<metric>)"):
        kind = problems.get(f"{key}.type")
        if kind is _BROKEN:
            continue
        registered = registered_detectors()
        if isinstance(kind, str) and ":" in kind:
            try:
                factory = get_detector_factory(kind)
            except KeyError as err:
                problems.add(f"{key}.type={show(kind)}: {err.args[0]}")
                continue
        elif kind not in registered:
            problems.add(f"{key}.type={show(None if kind is _ABSENT else kind)}: not a registered detector"
                         f"{_did_you_mean(str(kind), registered)}; registered: {', '.join(registered)}, or "
                         "'package.module:Name' for a detector of your own")
            continue
        else:
            factory = get_detector_factory(kind)
        params = problems.get(f"{key}.params")
        if params is _ABSENT or params is None:
            continue
        if not isinstance(params, DictConfig):
            if params is not _BROKEN:
                problems.add(f"{key}.params={show(params)}: expected a mapping of parameter -> value")
            continue
        accepted = {n: p for n, p in keyword_parameters(factory).items() if n != "model"}
        raw = OmegaConf.to_container(params, resolve=False)
        source = problems.source(f"{key}.params")
        group_keys = files.keys_at(tuple(source.split("."))) if source != f"{key}.params" else None
        for param in map(str, params.keys()):
            if param not in accepted and (group_keys is None or param in group_keys):
                problems.add(f"{_item(f'{source}.{param}', raw[param])}: not a parameter of detector {kind!r}"
                             f"{_did_you_mean(param, accepted)}; allowed: {', '.join(accepted)}")
        if (check := getattr(factory, "check_params", None)) is not None:
            _component_problems(problems, source, check, map(str, params.keys()))


def _attack_of(set_name: str, node: DictConfig, files: ConfigFiles) -> str | None:
    """The registered attack of the set ``attacks.<set_name>``: its ``name``, else the ``name`` that the config file
    of that set (``attack/<set_name>.yaml``) gives, else the set's own name; None if none is registered."""
    if node.get("name"):  # an explicit name must itself be registered
        candidates = [node.get("name")]
    else:
        candidates = [found.get("name") for found in files.nodes.get(("attacks", set_name), ())] + [set_name]
    return next((str(c) for c in candidates if isinstance(c, str) and known_attack(c)), None)


def _check_attacks(problems: _Problems, files: ConfigFiles) -> None:
    attacks = problems.get("attacks")
    if attacks is _ABSENT or attacks is _BROKEN or attacks is None:
        return
    if not isinstance(attacks, DictConfig):
        problems.add(f"attacks={show(attacks)}: expected a mapping of attack set -> {{name, detector, params}}")
        return
    registered = ", ".join(sorted(ATTACK_SETS))
    detectors = problems.get("detectors")
    detector_names = [str(k) for k in detectors.keys()] if isinstance(detectors, DictConfig) else []
    for key, node in _entries(problems, "attacks", attacks, ATTACK_KEYS, "an attack set",
                              "a set's name is a folder under data.attacks_dir and a part of metric names "
                              "(<detector>/<set>/<metric>)"):
        set_name = key.removeprefix("attacks.")
        attack = _attack_of(set_name, node, files)
        name = problems.get(f"{key}.name")
        named = name is not _ABSENT and name is not _BROKEN and name is not None
        if attack is None:
            shown = f"{key}.name={show(name)}" if named else key
            if named and ":" in str(name):
                try:
                    get_spec(str(name))
                except KeyError as err:
                    problems.add(f"{shown}: {err.args[0]}")
                    continue
            problems.add(f"{shown}: unknown attack set{_did_you_mean(str(name) if named else set_name, ATTACK_SETS)}; "
                         f"registered: {registered}, or 'package.module:Name' for an attack of your own")
            continue
        if named:
            _check_attacked_detector(key, get_spec(attack).needs_detector, detector_names, problems)
        params = problems.get(f"{key}.params")
        if params is _ABSENT or params is _BROKEN:
            continue
        if not isinstance(params, DictConfig):
            problems.add(f"{key}.params={show(params)}: expected a mapping of parameter -> value")
            continue
        _check_attack_params(set_name, attack, params, selected=named, problems=problems)


def _check_attacked_detector(key: str, needs_detector: bool, detector_names: list[str], problems: _Problems) -> None:
    """An adaptive set names the run's detector it attacks (``detector``); another set names none."""
    detector = problems.get(f"{key}.detector")
    if detector is _BROKEN:
        return
    given = detector is not _ABSENT and detector is not None
    if not needs_detector:
        if given:
            problems.add(f"{key}.detector={show(detector)}: this attack does not attack a detector; remove the key")
        return
    if not given:
        problems.add(f"{key}.detector: missing; name the detector this adaptive set attacks, one of the run's "
                     f"detectors ({', '.join(detector_names) or 'none selected'})")
    elif str(detector) not in detector_names:
        problems.add(f"{key}.detector={show(detector)}: not among the run's detectors "
                     f"({', '.join(detector_names) or 'none selected'}); add it with detector=[...]")


def _check_attack_params(set_name: str, attack: str, params: DictConfig, selected: bool, problems: _Problems) -> None:
    spec = get_spec(attack)
    constructor = spec.factory
    accepted = spec.parameters()
    open_ended = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    configurable = {name: p for name, p in accepted.items()
                    if p.kind is not p.VAR_KEYWORD and not (spec.needs_detector and name == "detector")}
    label = f"{set_name} ({getattr(constructor, '__name__', constructor)})"
    raw = OmegaConf.to_container(params, resolve=False)
    for param in map(str, params.keys()):
        key = f"attacks.{set_name}.params.{param}"
        if spec.needs_detector and param == "detector":
            problems.add(f"{key}: the pipeline passes the detector named by attacks.{set_name}.detector; it is not "
                         "set by the params")
        elif param not in configurable and not open_ended:
            problems.add(f"{_item(key, raw[param])}: not a parameter of {label}{_did_you_mean(param, configurable)}; "
                         f"allowed: {', '.join(configurable)}")
    if selected:
        for name, p in configurable.items():
            if p.default is p.empty and name not in params.keys():
                problems.add(f"attacks.{set_name}.params.{name}: missing; {label} needs it")
    if (check := getattr(constructor, "check_params", None)) is not None:
        _component_problems(problems, f"attacks.{set_name}.params", check, map(str, params.keys()))


def _check_values(problems: _Problems) -> None:
    problems.value("fpr_targets", lambda v: isinstance(v, ListConfig) and len(v) > 0
                   and all(is_number(t) and 0 < t < 1 for t in v),
                   "a non-empty list of numbers in (0, 1), like [0.05]", required=False)
    problems.value("auroc_bootstrap.resamples", lambda v: is_int(v) and v >= 1, "an integer >= 1", required=False)
    problems.value("auroc_bootstrap.seed", is_int, "an integer", required=False)
    problems.value("optimized_metric", lambda v: v is None or (isinstance(v, str) and "/" in v),
                   "null or a logged metric name, like objective/fpr_gap or ami/fgsm/auroc", required=False)
    problems.value("objective.target_fpr", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]",
                   required=False)
    problems.value("seed", is_int, "an integer")
    problems.value("data.batch_size", lambda v: is_int(v) and v > 0, "an integer > 0")
    problems.value("data.num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    faces = shipped_face_count()
    problems.value("data.attack_faces", lambda v: v is None or (is_int(v) and 0 <= v <= faces),
                   f"null (all {faces} shipped faces) or an integer in [0, {faces}]")
    problems.value("data.on_error", lambda v: v in ON_ERROR, f"one of {', '.join(ON_ERROR)}")
    problems.value("data.npy_legacy", lambda v: isinstance(v, bool), "true or false")


def _check_trainer(problems: _Problems) -> None:
    devices = problems.value("trainer.devices", lambda v: is_int(v) and v >= 1, "an integer >= 1", required=False)
    accelerator = problems.get("trainer.accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() not in CUDA_ACCELERATORS:
        return
    if not torch.cuda.is_available():
        problems.add(f"trainer.accelerator={show(accelerator)}: no CUDA GPU is available here; use trainer=cpu "
                     f"(trainer=ddp_sim: DDP on the CPU)")
    elif is_int(devices) and devices > (count := torch.cuda.device_count()):
        problems.add(f"trainer.devices={devices}: expected an integer in [1, {count}] (the CUDA GPUs here)")


def _check_paths(problems: _Problems) -> None:
    """The attack sets' folder; the files and folders of the model and the benign set are checked by their builders'
    ``check_params`` (:func:`_check_target_keys`). All missing ones are reported together."""
    _check_attacks_dir(problems)


def _check_attacks_dir(problems: _Problems) -> None:
    """Selected attack sets are read from ``data.attacks_dir`` when it is given (each set a sub-folder), else
    generated from the first ``data.attack_faces`` shipped faces, which must then be at least one."""
    if not isinstance(problems.get("attacks"), DictConfig):
        return
    selected = list(selected_attacks(problems.cfg))
    if not selected:
        return
    root = problems.get("data.attacks_dir")
    key = problems.source("data.attacks_dir")
    if root is None or root == "" or root is _ABSENT:
        if problems.get("data.attack_faces") == 0:
            problems.add(f"{key}=null: not given, and data.attack_faces=0 generates no attack samples; give the "
                         f"folder of the attack sets ({', '.join(selected)}), one sub-folder each, or select none "
                         f"with attack=[]")
    elif root is not _ABSENT and root is not _BROKEN:
        folder = Path(str(root))
        if not folder.is_dir():
            problems.add(f"{key}={show(str(root))}: no such folder; the run reads the attack sets "
                         f"({', '.join(selected)}) there, one sub-folder each")
        elif missing := [name for name in selected if not (folder / name).is_dir()]:
            problems.add(f"{key}={show(str(root))}: no sub-folder for the attack sets {', '.join(missing)}")


def selected_attacks(cfg: DictConfig) -> dict[str, DictConfig]:
    """The attack sets the run selected (``attack=[...]``): the entries of ``cfg.attacks`` that an ``attack/<set>``
    file filled in (they carry a ``name``). Budget-only entries of an experiment (``attacks.<set>.params``) for sets
    left out by ``attack=[...]`` are ignored."""
    return {str(name): spec for name, spec in (cfg.get("attacks") or {}).items()
            if isinstance(spec, DictConfig) and spec.get("name")}


# ---- check_model_layers --------------------------------------------------------------------------------------------
def check_model_layers(cfg: DictConfig, layer_names: Sequence[str]) -> None:
    """Once the model is built (before the witnesses): each configured detector whose factory has a
    ``check_layers(params, layer_names)`` (AmI: its crop layers must be hookable layers of the model) checks its
    resolved parameters against the model's hookable layers ``layer_names``
    (:func:`ami_lightning.models.layers.hook_layer_names`); :class:`ConfigError` listing the problems, each under
    the key its value comes from."""
    problems = _Problems(cfg)
    detectors = cfg.get("detectors") or {}
    for name in map(str, detectors.keys()):
        kind = OmegaConf.select(cfg, f"detectors.{name}.type", default=None)
        params = OmegaConf.select(cfg, f"detectors.{name}.params", default=None)
        if not isinstance(kind, str) or not isinstance(params, DictConfig):
            continue
        check = getattr(get_detector_factory(kind), "check_layers", None)
        if check is not None:
            _component_problems(problems, problems.source(f"detectors.{name}.params"),
                                lambda resolved, check=check: check(resolved, layer_names), map(str, params.keys()))
    if problems.lines:
        raise ConfigError(problems.lines)


# ---- Hydra's error for an unknown option ----------------------------------------------------------------------------
def list_options_of_missing_configs() -> None:
    """Make Hydra's error for an option a config group does not have (``Could not load 'detector/amii'``) list the
    group's options also when the option was chosen in a list (``detector=[amii]``); Hydra 1.3 lists them only for
    a group chosen alone (``model=dlibb``). Wraps ``hydra._internal.defaults_list.config_not_found_error``, once."""
    original = defaults_list.config_not_found_error
    if getattr(original, "lists_options", False):
        return

    def config_not_found_error(repo: Any, tree: Any) -> None:
        try:
            original(repo=repo, tree=tree)
        except MissingConfigException as err:
            message, group = str(err), (err.missing_cfg_file or "").rpartition("/")[0]
            options = repo.get_group_options(group, ObjectType.CONFIG) if group else []
            if "Available options" in message or not options:
                raise
            head, sep, tail = message.partition("\nConfig search path:")
            listed = "".join(f"\n\t{option}" for option in options)
            raise MissingConfigException(f"{head}\nAvailable options in '{group}':{listed}{sep}{tail}",
                                         err.missing_cfg_file, options) from None

    config_not_found_error.lists_options = True  # type: ignore[attr-defined]
    defaults_list.config_not_found_error = config_not_found_error


list_options_of_missing_configs()
