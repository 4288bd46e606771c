"""Sweep files (wandb's format, ``method: grid``): reading and checking them, ``--set`` and ``-- EXTRA``
values, every combination's command as a wandb agent would build it, and the plan of runs with their
results files, logs and checkpoint folders."""
from __future__ import annotations

import itertools
import math
import os
import sys
from typing import Dict, List, Optional

from utils.errors import UserError
from utils.flags import canonical, results_name
from utils.grid.runs import GridRun

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
RUNNER_FLAGS = ("results_file", "results_dir", "checkpoint_dir", "resume")  # the runner sets these itself
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
MAX_RUNS = 100_000  # a grid larger than this is a typo (it would not finish); counted before it is expanded
SWEEP_BYTES = 1 << 20  # a sweep file is a page of text; more is not a sweep file


def load_sweep(path: str) -> dict:
    import yaml  # optional until a sweep file is read
    try:
        with open(path, "rb") as f:
            data = f.read(SWEEP_BYTES + 1)
        if len(data) > SWEEP_BYTES:
            raise UserError(f"sweep file {path} is larger than {SWEEP_BYTES} bytes; it is not a sweep file")
        sweep = yaml.load(data.decode("utf-8"), Loader=strict_loader())
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"sweep file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"sweep file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(sweep, dict):
        raise UserError(f"sweep file {path} must be a mapping with 'program' and 'parameters'")
    if not isinstance(sweep.get("program", ""), str):
        raise UserError(f"{path}: 'program' must be a file name, got {sweep['program']!r:.80}")
    command = sweep.get("command")
    if command is not None and not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
        raise UserError(f"{path}: 'command' must be a list of words, got {command!r:.80}")
    if sweep.get("method", "grid") != "grid":
        raise UserError(f"{path}: method {sweep['method']!r} needs the wandb controller; "
                        f"the local runner runs 'method: grid' only")
    for key in ("program", "parameters"):
        if key not in sweep:
            raise UserError(f"{path}: missing key {key!r}")
    if not isinstance(sweep["parameters"], dict) or not sweep["parameters"]:
        raise UserError(f"{path}: 'parameters' must be a non-empty mapping")
    return sweep


def parameter_values(path: str, sweep: dict, block: str = "parameters") -> Dict[str, list]:
    """Each parameter's list of values, in file order (of ``parameters``, or of a ``per_model`` entry)."""
    values = {}
    for name, spec in sweep[block].items():
        if isinstance(spec, dict) and "value" in spec:
            values[name] = [spec["value"]]
        elif isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
            values[name] = list(spec["values"])
        else:
            raise UserError(f"{path}: parameter {name!r} needs 'value' or a non-empty list 'values' "
                            f"for a grid (got {spec!r:.80})")
        bad = [v for v in values[name] if not isinstance(v, (str, int, float, bool))]
        if bad or not isinstance(name, str):
            raise UserError(f"{path}: parameter {name!r:.80} has a value that is not a number, word or "
                            f"true/false: {(bad or [name])[0]!r:.80}")
    return values


def per_model_values(path: str, sweep: dict, values: Dict[str, list]) -> Dict[str, Dict[str, list]]:
    """The ``per_model:`` block: method name -> {parameter: values} for the runs of that method only (the
    method is the ``model`` parameter, or ``method`` for main_lt.py sweeps)."""
    block = sweep.get("per_model") or {}
    if not isinstance(block, dict):
        raise UserError(f"{path}: 'per_model' must map method names to parameters")
    key = "model" if "model" in values else "method"
    methods = {str(v) for v in values.get(key, [])}
    out = {}
    for method, params in block.items():
        if str(method) not in methods:
            raise UserError(f"{path}: per_model {method!r} is not one of the sweep's {key} values "
                            f"({', '.join(sorted(methods)) or 'none'})")
        if not isinstance(params, dict) or not params:
            raise UserError(f"{path}: per_model {method!r} must be a non-empty mapping of parameters")
        if key in params or set(params) & set(RUNNER_FLAGS):
            raise UserError(f"{path}: per_model {method!r} may not set {key} or the runner's flags")
        out[str(method)] = parameter_values(path, {"p": params}, "p")
    return out


def expand(sweep: dict, path: str = "sweep", overrides: Optional[Dict[str, list]] = None) -> List[Dict[str, object]]:
    """All combinations of the parameter values; the last parameter varies fastest, as in wandb's grid.

    ``overrides`` (``--set``) replaces a parameter's values, or adds the parameter after the sweep's; a
    ``per_model`` entry then replaces (or adds) values for the runs of its method only, combinations it
    makes identical counted once.  More than ``MAX_RUNS`` combinations are refused before any is built."""
    values = {**parameter_values(path, sweep), **(overrides or {})}
    count = math.prod(len(v) for v in values.values())
    if count > MAX_RUNS:
        raise UserError(f"{path}: the grid has {count} combinations, more than the {MAX_RUNS} the runner "
                        f"accepts; split the sweep or fix its values")
    combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    per_model = per_model_values(path, sweep, values)
    if not per_model:
        return combos
    key = "model" if "model" in values else "method"
    out, seen = [], set()
    for combo in combos:
        own = per_model.get(str(combo.get(key)), {})
        if len(out) + math.prod(len(v) for v in own.values()) > MAX_RUNS:
            raise UserError(f"{path}: the grid with its per_model values has more than the {MAX_RUNS} "
                            f"combinations the runner accepts; split the sweep or fix its values")
        for chosen in itertools.product(*own.values()):
            run = {**combo, **dict(zip(own, chosen))}
            identity = tuple(sorted((k, canonical(v)) for k, v in run.items()))
            if identity not in seen:
                seen.add(identity)
                out.append(run)
    return out


def strict_loader():
    """A safe YAML loader for sweep files that refuses aliases (``*name``: a few hundred bytes of them expand
    into billions of values) and duplicate keys (which YAML would resolve silently, the last one winning)."""
    import yaml  # optional until a sweep file is read

    class Strict(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"aliases (*name) are not allowed in a sweep file (line {mark.line + 1})")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    raise yaml.YAMLError(f"a key that is not a word or number (line {key_node.start_mark.line + 1})")
                if key in seen:
                    raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep)
    return Strict


def _typed(text: str):
    """A value given on the command line, typed as YAML types it in a sweep file (1, 0.1, true, er)."""
    import yaml  # optional until a sweep file is read
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def parse_set(tokens: List[str]) -> Dict[str, list]:
    """``--set`` tokens -> each parameter's values.  ``KEY=V1,V2`` and ``KEY=V1 V2`` (later tokens without
    ``=`` continue the last key's values) are the same; a key may not be the runner's own flags."""
    values: Dict[str, list] = {}
    key = None
    for token in tokens:
        if "=" in token:
            key, _, text = token.partition("=")
            if not key or key.startswith("-"):
                raise UserError(f"--set needs KEY=VALUE (a parameter name without dashes), got {token!r}")
            if any(flag.startswith(key) for flag in RUNNER_FLAGS):
                raise UserError(f"--set {key}: the runner sets --{key} itself (give --results_dir)")
            values[key] = []
        elif key is None:
            raise UserError(f"--set needs KEY=VALUE first, got {token!r}")
        else:
            text = token
        values[key] += [_typed(v) for v in text.split(",") if v.strip()]
    for key, given in values.items():
        if not given:
            raise UserError(f"--set {key}= has no value")
    return values


def parse_extra(tokens: List[str]) -> Dict[str, object]:
    """The flags after ``--`` as {name: value}, for the results name: ``--n_epochs 1`` and ``--n_epochs=1``
    give 1, a flag alone gives True, several values are joined by spaces (``--lr_milestones 10 20``)."""
    flags: Dict[str, list] = {}
    name = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, eq, text = token[2:].partition("=")
            if name in flags:
                raise UserError(f"extra flag --{name} is given twice")
            if name in RUNNER_FLAGS:
                raise UserError(f"extra flag --{name}: the runner sets it itself (give --results_dir)")
            flags[name] = [text] if eq else []
        elif name is None:
            raise UserError(f"extra flags after -- must start with a flag (--name), got {token!r}")
        else:
            flags[name].append(token)
    return {k: True if not v else _typed(v[0]) if len(v) == 1 else " ".join(v) for k, v in flags.items()}


def render_command(command: List[str], program: str, params: Dict[str, object],
                   interpreter: str = sys.executable) -> List[str]:
    """The argv a wandb agent would build from ``command``, with this Python as the interpreter."""
    arg_forms = {
        "args": [f"--{k}={v}" for k, v in params.items()],
        "args_no_equals": [s for k, v in params.items() for s in (f"--{k}", str(v))],
        "args_no_hyphens": [f"{k}={v}" for k, v in params.items()],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}"
                                  for k, v in params.items() if v is not False],
    }
    macros = {"env": ["/usr/bin/env"] if os.path.exists("/usr/bin/env") else [],
              "interpreter": [interpreter], "program": [program], **arg_forms}
    argv = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise UserError(f"unsupported sweep command macro {chunk}; supported: "
                                + ", ".join("${" + m + "}" for m in macros))
            argv += macros[chunk[2:-1]]
        else:
            argv.append(chunk)
    return argv


def plan(sweep_path: str, results_dir: str, interpreter: str = sys.executable, checkpoints: bool = False,
         overrides: Optional[Dict[str, list]] = None, extra: Optional[List[str]] = None,
         data_path: Optional[str] = None) -> List[GridRun]:
    """The runs of a sweep file, each with its command, results file, log file (and checkpoint directory).

    ``overrides``: parameter values replaced or added (``--set``); ``extra``: flags appended to every
    command (after ``--``), named in the results name unless operational; ``data_path``: every run's
    ``--data_path`` (replacing the sweep's)."""
    if os.path.exists(results_dir) and not os.path.isdir(results_dir):
        raise UserError(f"--results_dir {results_dir!r} is a file, not a folder")
    sweep = load_sweep(sweep_path)
    program = str(sweep["program"])
    if not os.path.exists(program):
        raise UserError(f"program {program!r} of {sweep_path} not found in {os.getcwd()} "
                        f"(run the grid from the directory wandb agents would run in: the repository root)")
    overrides = dict(overrides or {})
    if data_path is not None:
        overrides["data_path"] = [data_path]
    extra = list(extra or [])
    extra_flags = parse_extra(extra)
    combos = expand(sweep, sweep_path, overrides)
    for name in extra_flags:
        if name in combos[0]:
            raise UserError(f"extra flag --{name} is a parameter of {sweep_path}: give --set {name}=VALUE "
                            f"to change its values" + (" (or --data_path)" if name == "data_path" else ""))
    keys = list(dict.fromkeys(k for c in combos for k in c))
    for key in keys:
        if any(flag.startswith(str(key)) and flag != key for flag in RUNNER_FLAGS):
            raise UserError(f"{sweep_path}: parameter {key!r} abbreviates a runner flag "
                            f"({', '.join('--' + f for f in RUNNER_FLAGS if f.startswith(str(key)))}); "
                            f"give flags in full (the runner sets those itself)")
    varying = [k for k in keys if len({canonical(c.get(k)) for c in combos}) > 1]
    runs, seen = [], set()
    for params in combos:
        # The runner places results and checkpoints itself: a sweep's results_dir, checkpoint_dir and resume
        # (which wandb agents need) are replaced by its own.
        params = {k: v for k, v in params.items() if k not in RUNNER_FLAGS}
        name = results_name({**params, **extra_flags})
        if name in seen:
            raise UserError(f"{sweep_path}: two runs have the same parameters ({name})")
        seen.add(name)
        results_file = os.path.join(results_dir, name + ".json")
        command = render_command(sweep.get("command") or DEFAULT_COMMAND, program, params, interpreter) + extra
        checkpoint_dir = os.path.join(results_dir, "checkpoints", name) if checkpoints else None
        runs.append(GridRun(params, " ".join(f"{k}={params[k]}" for k in varying if k in params) or name, results_file,
                            os.path.join(results_dir, "logs", name + ".log"),
                            command + runner_flags(results_file, checkpoint_dir), checkpoint_dir, command, program))
    return runs


def untrusted(sweep_path: str) -> Optional[str]:
    """Why a sweep file would run something other than this repository's programs with the sweep's flags (a
    program outside the repository, a command word that is neither a ``${...}`` macro nor a ``--flag``), or
    ``None``.  A sweep file in a shared folder is data: what it runs needs the user's consent (``--any_program``)."""
    sweep = load_sweep(sweep_path)
    program = os.path.realpath(sweep["program"])
    if os.path.commonpath([program, REPOSITORY]) != REPOSITORY:
        return f"its program {sweep['program']!r} is outside the repository ({REPOSITORY})"
    for word in sweep.get("command") or []:
        if not (word.startswith("${") and word.endswith("}") or word.startswith("--")):
            return f"its command runs {word!r} (only ${{...}} macros and --flag words are run without asking)"
    return None


def runner_flags(results_file: str, checkpoint_dir: Optional[str]) -> List[str]:
    """The flags the runner adds to a command: where its results go, and its checkpoints (resumed)."""
    flags = [f"--results_file={results_file}"]
    return flags + [f"--checkpoint_dir={checkpoint_dir}", "--resume"] if checkpoint_dir else flags
