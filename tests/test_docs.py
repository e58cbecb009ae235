"""Docs that run: the commands, config paths and data paths of README.md, data/README.md, docs/*.md,
experiments/reproduce_paper.md and the experiments/ shell and sbatch scripts, checked against the code in-process
and without any data.

Extraction
* Every ``python -m hubert_lit ...`` command of a ```bash block or a script (also ``torchrun ... -m hubert_lit``,
  ``srun ... python -m hubert_lit``, ``${PY} -m hubert_lit``). bash itself expands them (``\\`` continuations,
  quotes, comments, loops, arrays, variables), with PATH pointing nowhere: every command it cannot find is recorded
  instead of run (``command_not_found_handle``), ``cd`` and ``source`` do nothing, and a ``$(python -c CODE)``
  (the layer in reproduce_paper.sh) gets the output of CODE run in this process. ``sbatch FILE ARGS`` (in a block,
  or a script's ``#   sbatch ...`` usage line) expands FILE with ARGS under SLURM-like variables.
* Every inline code span with ``-m hubert_lit`` (split with shlex, no shell): a fragment of a command.
* Every ``configs/...`` and ``experiments/...`` script path of those files and of configs/**/*.yaml, and every
  ```yaml block.

Checks
(a) every ``configs/`` path exists (``.yaml``: a file, otherwise a folder), as do the experiments/ scripts named;
(b) every command parses. ``fit/validate/test/predict``: :func:`hubert_lit.cli.lightning_main` with
    ``--print_config``, which is jsonargparse's full parse and type check of every key (unknown option, bad value,
    missing config file: exit 2) and exits before :func:`hubert_lit.cli.check_config`. So the LibriSpeech shards,
    labels and checkpoints a command names need not exist: whether they exist is the CLI's run-time check
    (tests/test_cli.py), and faking them here would only test the fakes. A tool: its own argparse parser
    (``build_parser()``), abbreviations off; inline fragments are parsed with every option made optional, so
    what they use must exist. The launcher must be able to run the module: ``torchrun [opts] -m hubert_lit``
    (torchrun's ``-m``; ``torchrun python -m`` would run a script called python), otherwise ``... python -m``;
(c) every path under ``data/librispeech/`` and every remote ``.../librispeech/...`` location, in a command, a doc
    or a config, follows the configs' layout (:func:`layout_problem`), and a remote shards or labels folder sits
    in a ``librispeech/`` mirror of it; an iteration-2 labels folder
    ``<enc>_it1-l<layer>-k<k>`` names the layer the label tool takes by default (half the encoder's depth); a
    ``label`` command writes the split it reads and takes ``--centroids`` from the same label set; no doc uses the
    retired ``data/shards``, ``data/labels`` or ``data/LibriSpeech`` folders;
(d) every ```yaml block is accepted as a ``--config`` on top of ``configs/pretrain/vanilla_it1.yaml``.

Placeholders: ``<name>`` becomes a word (``<sweep id>`` -> ``sweep_id``); a ``...`` that stands for an option's
value becomes a dummy value (dropped elsewhere); ``[--opt value]`` (an optional part) is checked without its
brackets; a run's saved ``runs/<name>/csv/version_N/config.yaml`` is the printed config of
``configs/pretrain/<name>.yaml``. ``SKIPPED`` lists the spans that name commands without being one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash")


def _bash_version() -> tuple[int, ...]:
    if BASH is None:
        return ()
    out = subprocess.run(
        [BASH, "-c", "echo ${BASH_VERSINFO[0]} ${BASH_VERSINFO[1]}"], capture_output=True, text=True
    )
    return tuple(int(x) for x in out.stdout.split())


# ----------------------------------------------------------------------------------------------- what is read
DOC_FILES = [
    "README.md",
    "data/README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    "experiments/reproduce_paper.md",
]
SHELL_SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments").glob("*.sh"))
SBATCH_SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments").glob("*.sbatch"))
CONFIG_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))

# Inline spans that name commands without being one (the span's text, whitespace collapsed) and why.
SKIPPED = {
    "python -m hubert_lit <command>": "the general form of every command",
    "python -m hubert_lit fit --config configs/...yaml": "a pattern for any config under configs/",
}

# The parser of every tool of hubert_lit/__main__.py (checked to cover TOOLS).
TOOL_PARSERS = {
    "synth": "hubert_lit.data.synth:build_parser",
    "shard": "hubert_lit.data.shard:build_parser",
    "label": "hubert_lit.labels.cli:build_parser",
    "export": "hubert_lit.export.cli:build_parser",
    "superb-data": "hubert_lit.superb.data.build:build_parser",
    "evaluate": "hubert_lit.superb.cli:build_parser",
    "profile": "hubert_lit.profile.cli:build_parser",
    "sweep": "hubert_lit.cli:build_sweep_parser",
    "info": "hubert_lit.system:build_parser",
}
META_COMMANDS = ("--version", "-V", "version", "--help", "-h", "help")

# What SLURM sets in a batch job (for expanding the sbatch scripts).
SLURM_ENV = {
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_CPUS_PER_TASK": "8",
}

# ----------------------------------------------------------------------------------------------- the layout
LIBRISPEECH_PARTS = {
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
}
SPLITS = {"train-960", "dev"}  # shard sets: the three training parts; dev-clean + dev-other
LABEL_SET = re.compile(r"^(?:mfcc-k\d+|(?P<run>[a-z0-9_]+)_it1-l(?P<layer>\d+)-k\d+)$")
LAYOUT = (
    "data/librispeech/LibriSpeech/<part>, data/librispeech/shards/{train-960,dev}, "
    "data/librispeech/labels/{mfcc-k<k>,<enc>_it1-l<layer>-k<k>}/{train-960,dev}"
)
RETIRED = re.compile(r"(?<![\w/.-])data/(?:shards|labels|LibriSpeech)(?![\w-])")
LOCAL_PATH = re.compile(r"(?<![\w/.-])data/librispeech(?:/[^\s`'\"()\[\],;|]*)?")
REMOTE_SETS = re.compile(r"\b[a-z][a-z0-9+]*://[^\s`'\"()]*?/(?:shards|labels)/")
REMOTE_PATH = re.compile(r"\b[a-z][a-z0-9+]*://[^\s`'\"()]*?/librispeech(?:/[^\s`'\"()\[\],;|]*)?")
CONFIG_PATH = re.compile(r"(?<![\w/.-])configs/[A-Za-z0-9_./-]*")
SCRIPT_PATH = re.compile(r"(?<![\w/.-])experiments/(?!results/)[\w/.-]+\.(?:py|sh|sbatch|md)\b")
PLACEHOLDER = re.compile(r"<([A-Za-z][^<>\n]*)>")


def _wild(part: str) -> bool:
    return any(c in part for c in "<>$*{}") or "..." in part


def _expand_braces(text: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", text)
    if match is None:
        return [text]
    head, tail = text[: match.start()], text[match.end() :]
    return [x for alt in match.group(1).split(",") for x in _expand_braces(head + alt + tail)]


def _encoder_depth(name: str) -> int | None:
    from hubert_lit.models.config import preset

    try:
        return preset(name).encoder.num_layers
    except (KeyError, ValueError):
        return None


def layout_problem(rest: str) -> str | None:
    """What is wrong with ``rest``, the part of a path after ``librispeech/`` (None: it follows the layout)."""
    parts = [p for p in rest.strip("/").split("/") if p]
    if not parts or _wild(parts[0]):
        return None
    top = parts[0]
    if top == "LibriSpeech":
        if len(parts) > 1 and not _wild(parts[1]) and parts[1] not in LIBRISPEECH_PARTS:
            return f"{parts[1]!r} is not a LibriSpeech part"
    elif top == "shards":
        if len(parts) > 1 and not _wild(parts[1]) and parts[1] not in SPLITS:
            return f"shard set {parts[1]!r} is not one of {sorted(SPLITS)}"
    elif top == "labels":
        if len(parts) > 1 and not _wild(parts[1]):
            match = LABEL_SET.match(parts[1])
            if match is None:
                return f"labels folder {parts[1]!r} is not mfcc-k<k> or <enc>_it1-l<layer>-k<k>"
            if match["run"] is not None:
                encoder = match["run"].removesuffix("_fairseq")
                depth = _encoder_depth(encoder)
                if depth is None:
                    return f"labels folder {parts[1]!r}: {encoder!r} is not a model preset"
                if int(match["layer"]) != depth // 2:
                    return (
                        f"labels folder {parts[1]!r}: layer {match['layer']}, but the label tool's layer for "
                        f"{encoder} (half of {depth}) is {depth // 2}"
                    )
        if len(parts) > 2 and not _wild(parts[2]) and parts[2] not in SPLITS:
            return f"labels split {parts[2]!r} is not one of {sorted(SPLITS)}"
    else:
        return f"{top!r}: not LibriSpeech/, shards/ or labels/"
    return None


def path_problems(where: str, text: str, retired: bool = True) -> list[str]:
    """Layout problems of every LibriSpeech path in ``text``."""
    problems = []
    if retired:
        for match in RETIRED.finditer(text):
            problems.append(f"{where}: {match.group(0)}/ is retired; use {LAYOUT}")
    for match in REMOTE_SETS.finditer(text):
        if not match.group(0).endswith(("/librispeech/shards/", "/librispeech/labels/")):
            problems.append(
                f"{where}: {match.group(0)}...: a remote copy mirrors the layout (.../librispeech/shards/...)"
            )
    found = [(m.group(0), m.group(0).partition("data/librispeech")[2]) for m in LOCAL_PATH.finditer(text)]
    found += [(m.group(0), m.group(0).partition("/librispeech")[2]) for m in REMOTE_PATH.finditer(text)]
    for path, rest in found:
        for variant in _expand_braces(rest.rstrip(".:")):
            problem = layout_problem(variant)
            if problem:
                problems.append(f"{where}: {path}: {problem} (layout: {LAYOUT})")
    return problems


def _split_of(path: str, kind: str) -> tuple[str, ...] | None:
    """``data/librispeech/shards/S`` -> (S,); ``data/librispeech/labels/N/S`` -> (N, S); else None."""
    rest = str(path).partition("librispeech/")[2].strip("/").split("/")
    if rest[0] != kind:
        return None
    return tuple(rest[1:])


# ----------------------------------------------------------------------------------------------- extraction
@dataclass
class Command:
    where: str
    argv: list[str]  # after "-m hubert_lit"
    launcher: list[str]  # before "-m"
    module: str = "hubert_lit"
    fragment: bool = False  # an inline span: options are checked, required ones are not


@dataclass
class Collected:
    commands: list[Command] = field(default_factory=list)
    names: list[tuple[str, str]] = field(default_factory=list)  # (where, command name) of bare mentions
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, span)
    texts: dict[str, str] = field(default_factory=dict)  # where -> text whose paths are checked
    yaml_blocks: list[tuple[str, str]] = field(default_factory=list)
    shell_problems: list[str] = field(default_factory=list)
    block_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (mentions, commands)


def fenced_blocks(text: str) -> tuple[list[tuple[str, int, str]], str]:
    """The fenced blocks of a markdown text as (language, first body line, body), and the text with them blanked."""
    blocks, outside, body, lang, start = [], [], [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if lang is None and fence:
            lang, start, body = fence.group(1) or "text", number + 1, []
            outside.append("")
        elif lang is not None and re.match(r"^\s*```\s*$", line):
            blocks.append((lang, start, "\n".join(body)))
            lang = None
            outside.append("")
        elif lang is not None:
            body.append(line)
            outside.append("")
        else:
            outside.append(line)
    return blocks, "\n".join(outside)


def substitute_placeholders(text: str) -> str:
    return PLACEHOLDER.sub(lambda m: re.sub(r"\W+", "_", m.group(1)).strip("_"), text)


PRELUDE = r"""
cd() { :; }
source() { :; }
declare -A DOCS_PY=()
__DOCS_PY__
command_not_found_handle() {
  {
    printf '%s\0' "${BASH_LINENO[-1]}" "$@"
    printf '\036\0'
  } >> "$DOCS_RECORD"
  if [[ "${1##*/}" == python* && "${2:-}" == -c && -v DOCS_PY["$3"] ]]; then
    printf '%s\n' "${DOCS_PY["$3"]}"
  fi
  return 0
}
"""


def _run_python_code(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<python -c in a doc>", "exec"), {"__name__": "__main__"})
    return out.getvalue().strip()


def run_shell(
    text: str, args: list[str], env: dict[str, str]
) -> tuple[list[tuple[int, list[str]]], int, str]:
    """Expand ``text`` with bash, recording every command it cannot find: ([(line, argv)], status, stderr)."""
    answers: dict[str, str] = {}
    for _ in range(3):
        declared = "\n".join(f"DOCS_PY[{shlex.quote(k)}]={shlex.quote(v)}" for k, v in answers.items())
        prelude = PRELUDE.replace("__DOCS_PY__", declared)
        offset = prelude.count("\n")
        with tempfile.TemporaryDirectory(prefix="docs-shell-") as tmp:
            record = Path(tmp) / "record"
            record.touch()
            result = subprocess.run(
                [BASH, "--noprofile", "--norc", "-c", prelude + substitute_placeholders(text), "doc", *args],
                cwd=tmp,
                env={"PATH": "/nonexistent-docs-path", "HOME": tmp, "DOCS_RECORD": str(record), **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            fields = record.read_bytes().decode().split("\0")
        records, current = [], []
        for item in fields[:-1]:
            if item == "\036":
                records.append((int(current[0]) - offset, current[1:]))
                current = []
            else:
                current.append(item)
        missing = {
            argv[2]
            for _, argv in records
            if len(argv) > 2 and argv[0].rsplit("/", 1)[-1].startswith("python") and argv[1] == "-c"
        } - set(answers)
        if not missing:
            return records, result.returncode, result.stderr
        for code in missing:
            answers[code] = _run_python_code(code)
    raise AssertionError(f"python -c calls keep changing: {sorted(missing)}")


# bash's own errors (a redirection into a folder the scratch directory lacks is not one: nothing is run)
SHELL_ERRORS = re.compile(
    r"syntax error|unbound variable|bad substitution|bad array subscript|unexpected EOF"
)


def shell_errors(stderr: str) -> str:
    return " | ".join(line for line in stderr.splitlines() if SHELL_ERRORS.search(line))


def commands_of(
    records: list[tuple[int, list[str]]], where
) -> tuple[list[Command], list[tuple[int, list[str]]]]:
    """The hubert_lit commands and the sbatch submissions among recorded commands."""
    commands, submissions = [], []
    for line, argv in records:
        for i in range(len(argv) - 1):
            if argv[i] == "-m" and argv[i + 1].split(".")[0] == "hubert_lit":
                commands.append(Command(where(line), argv[i + 2 :], argv[:i], module=argv[i + 1]))
                break
        else:
            if argv and argv[0] == "sbatch":
                submissions.append((line, argv))
    return commands, submissions


def _sbatch_job(argv: list[str]) -> tuple[str, list[str]] | None:
    for i, arg in enumerate(argv[1:], 1):
        if arg.endswith(".sbatch"):
            return arg, argv[i + 1 :]
    return None


def collect(docs: dict[str, str], scripts: dict[str, str], configs: dict[str, str]) -> Collected:
    """Everything the checks look at, from markdown ``docs``, shell ``scripts`` and ``configs`` (name -> text)."""
    out = Collected()
    jobs: dict[tuple[str, tuple[str, ...]], str] = {}  # (sbatch file, args) -> where it was submitted
    for name, text in docs.items():
        blocks, prose = fenced_blocks(text)
        out.texts[name] = text
        mentions = found = 0
        for lang, start, body in blocks:
            if lang == "yaml":
                out.yaml_blocks.append((f"{name}:{start}", body))
            if lang not in ("bash", "sh", "shell"):
                continue
            mentions += len(re.findall(r"-m hubert_lit\b", body))
            records, _, stderr = run_shell(body, [], {})
            if shell_errors(stderr):
                out.shell_problems.append(f"{name}:{start}: bash: {shell_errors(stderr)}")
            commands, submissions = commands_of(records, lambda line, n=name, s=start: f"{n}:{s + line - 1}")
            out.commands += commands
            found += len(commands)
            for line, argv in submissions:
                job = _sbatch_job(argv)
                if job:
                    jobs.setdefault((job[0], tuple(job[1])), f"{name}:{start + line - 1}")
        out.block_counts[name] = (mentions, found)
        for match in re.finditer(r"`([^`]+)`", prose):
            span = " ".join(match.group(1).split())
            if "-m hubert_lit" not in span:
                continue
            where = f"{name}:{prose.count(chr(10), 0, match.start()) + 1}"
            if span in SKIPPED:
                out.skipped.append((where, span))
                continue
            tokens = shlex.split(substitute_placeholders(span))
            commands, _ = commands_of([(0, tokens)], lambda _line, w=where: w)
            for command in commands:
                if len(command.argv) == 1 and not command.argv[0].startswith("-"):
                    out.names += [(where, n) for n in command.argv[0].split("|")]
                else:
                    command.fragment = True
                    out.commands.append(command)
    for name, text in scripts.items():
        out.texts[name] = text
        for line in text.splitlines():
            usage = re.match(r"^#\s+sbatch\s+(\S+\.sbatch)\b(.*)$", line)
            if usage:
                args = []
                for token in shlex.split(substitute_placeholders(usage.group(2))):
                    if token.startswith("["):
                        break
                    args.append(token)
                jobs.setdefault((usage.group(1), tuple(args)), f"{name} (usage line)")
        if name.endswith(".sh"):
            records, status, stderr = run_shell(text, [], {"PY": "python"})  # its interpreter is $PY
            if status != 0 or shell_errors(stderr):
                out.shell_problems.append(f"{name}: bash exited {status}: {shell_errors(stderr)}")
            out.commands += commands_of(records, lambda line, n=name: f"{n}:{line}")[0]
    for (script, args), submitted in sorted(jobs.items()):
        if script not in scripts:
            out.shell_problems.append(f"{submitted}: sbatch {script}: no such script")
            continue
        with tempfile.TemporaryDirectory(prefix="docs-submit-") as submit_dir:
            env = {**SLURM_ENV, "SLURM_SUBMIT_DIR": submit_dir}
            records, status, stderr = run_shell(scripts[script], list(args), env)
        if status != 0 or shell_errors(stderr):
            problem = f"exited {status}: {shell_errors(stderr)}"
            out.shell_problems.append(f"{submitted}: sbatch {script} {shlex.join(args)}: {problem}")
        label = f"sbatch {shlex.join([script, *args])} from {submitted}"
        out.commands += commands_of(records, lambda line, s=script, lb=label: f"{s}:{line} ({lb})")[0]
    out.texts.update(configs)
    return out


# ----------------------------------------------------------------------------------------------- checks
def _normalise(tokens: list[str], takes_value) -> list[str]:
    """Drop the brackets of optional parts; a ``...`` after an option that takes a value becomes a dummy value."""
    out: list[str] = []
    for token in tokens:
        if token.startswith("[-"):
            token = token[1:]
        if token.endswith("]") and token.count("]") > token.count("["):
            token = token[:-1]
        if token == "...":
            if out and out[-1].startswith("-") and "=" not in out[-1] and takes_value(out[-1]):
                out.append("placeholder")
            continue
        if token:
            out.append(token)
    return out


def _quiet(fn, *args):
    """``fn(*args)`` with stdout/stderr captured: (result or SystemExit code, captured text)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            result = fn(*args)
        except SystemExit as exc:
            result = exc.code
    return result, buffer.getvalue()


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def tool_parser(command: str) -> argparse.ArgumentParser:
    module, _, function = TOOL_PARSERS[command].partition(":")
    parser = getattr(importlib.import_module(module), function)()
    parser.allow_abbrev = False
    return parser


def _parse_tool(command: Command) -> tuple[argparse.Namespace | None, str | None]:
    name, args = command.argv[0], command.argv[1:]
    parser = tool_parser(name)
    if command.fragment:
        for action in parser._actions:
            action.required = False
            if not action.option_strings and action.nargs is None:
                action.nargs = "?"
        for group in parser._mutually_exclusive_groups:
            group.required = False
    options = {s: a for a in parser._actions for s in a.option_strings}
    args = _normalise(args, lambda opt: opt in options and options[opt].nargs != 0)
    namespace = None

    def parse():
        nonlocal namespace
        namespace = parser.parse_args(args)
        return 0

    status, text = _quiet(parse)
    if status != 0:
        return None, f"python -m hubert_lit {shlex.join([name, *args])}: {_last_lines(text)}"
    return namespace, None


def _saved_run_config(path: str, tmp: Path) -> tuple[str | None, str | None]:
    """A run's saved ``config.yaml``: the printed config of ``configs/pretrain/<run name>.yaml``."""
    from hubert_lit.cli import lightning_main

    match = re.match(r"^runs/([^/]+)/csv/version_\d+/config\.yaml$", path)
    if match is None:
        return None, None
    source = ROOT / "configs" / "pretrain" / f"{match.group(1)}.yaml"
    if not source.is_file():
        return None, f"{path}: no configs/pretrain/{match.group(1)}.yaml makes that run"
    status, printed = _quiet(lightning_main, ["fit", "--config", str(source), "--print_config"])
    if status != 0:
        return None, f"{path}: printing {source.relative_to(ROOT)} failed: {_last_lines(printed)}"
    target = tmp / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(printed)
    return str(target), None


def _parse_lightning(command: Command, tmp: Path) -> str | None:
    from hubert_lit.cli import lightning_main

    args = _normalise(command.argv, lambda opt: True)
    for i, arg in enumerate(args):
        if i and args[i - 1] in ("--config", "-c") and arg.startswith("runs/"):
            replacement, problem = _saved_run_config(arg, tmp)
            if problem:
                return problem
            if replacement:
                args[i] = replacement
    if not any(a.startswith("--print_config") for a in args):
        args.append("--print_config")
    status, text = _quiet(lightning_main, args)
    if status != 0:
        return f"python -m hubert_lit {shlex.join(command.argv)}: exit {status}: {_last_lines(text)}"
    return None


def command_problems(commands: list[Command], tmp: Path) -> list[str]:
    """(b): every command parses; label commands keep their splits; launchers can run the module."""
    from hubert_lit.__main__ import LIGHTNING_COMMANDS, TOOLS

    problems, seen = [], {}
    for command in commands:
        launcher = [Path(t).name for t in command.launcher]
        pythons = [t for t in launcher if t.startswith("python")]
        if command.module != "hubert_lit":
            problems.append(
                f"{command.where}: -m {command.module}: run the entry point, -m hubert_lit <command>"
            )
        if launcher and launcher[0] == "torchrun":
            if pythons:
                problems.append(
                    f"{command.where}: torchrun ... python -m hubert_lit: torchrun runs a script or, with its own "
                    "-m, a module: torchrun [options] -m hubert_lit ..."
                )
        elif not launcher or not launcher[-1].startswith("python"):
            problems.append(f"{command.where}: {shlex.join(command.launcher)} -m: not a Python interpreter")
        if not command.argv:
            problems.append(f"{command.where}: python -m hubert_lit without a command")
            continue
        key = (tuple(command.argv), command.fragment)
        if key in seen:  # the same command in several places parses the same way
            if seen[key]:
                problems.append(f"{command.where}: {seen[key]}")
            continue
        name = command.argv[0]
        problem = None
        if name in META_COMMANDS:
            from hubert_lit.__main__ import main

            status, text = _quiet(main, command.argv)
            problem = (
                None if status == 0 else f"{shlex.join(command.argv)}: exit {status}: {_last_lines(text)}"
            )
        elif name in LIGHTNING_COMMANDS:
            problem = _parse_lightning(command, tmp)
        elif name in TOOLS:
            namespace, problem = _parse_tool(command)
            if namespace is not None and name == "label" and not command.fragment:
                problem = _label_split_problem(command, namespace)
        else:
            problem = f"unknown command {name!r} (python -m hubert_lit --help lists them)"
        seen[key] = problem
        if problem:
            problems.append(f"{command.where}: {problem}")
    return problems


def _label_split_problem(command: Command, ns: argparse.Namespace) -> str | None:
    shards, out = _split_of(ns.shards, "shards"), _split_of(str(ns.out), "labels")
    if shards is None or out is None:
        return None
    if len(out) < 2 or out[1:2] != shards[:1]:
        return f"label writes {ns.out} from shards {ns.shards}: the labels split must be the shards' split"
    if ns.centroids is not None:
        source = _split_of(str(ns.centroids), "labels")
        if source is not None and source[:1] != out[:1]:
            return f"label --centroids {ns.centroids} is another label set than --out {ns.out}"
    return None


def name_problems(names: list[tuple[str, str]]) -> list[str]:
    from hubert_lit.__main__ import LIGHTNING_COMMANDS, TOOLS

    return [
        f"{where}: python -m hubert_lit {name}: no such command"
        for where, name in names
        if name not in TOOLS and name not in LIGHTNING_COMMANDS and name not in META_COMMANDS
    ]


def file_path_problems(texts: dict[str, str], commands: list[Command]) -> list[str]:
    """(a): every configs/ path exists, and every experiments/ script named."""
    sources = dict(texts)
    sources.update({c.where: " ".join(c.argv) for c in commands})
    problems = []
    for where, text in sources.items():
        for match in CONFIG_PATH.finditer(text):
            path = match.group(0).rstrip(".")
            if "..." in path or text[match.end() : match.end() + 1] in ("$", "<", "{", "*"):
                continue  # a pattern (configs/...yaml, configs/pretrain/${enc}_it1.yaml): expanded commands are checked
            target = ROOT / path
            if path.endswith(".yaml") and not target.is_file():
                problems.append(f"{where}: config {path} does not exist")
            elif not path.endswith(".yaml") and not target.is_dir():
                problems.append(f"{where}: {path} is not a folder of configs/")
        for match in SCRIPT_PATH.finditer(text):
            if not (ROOT / match.group(0)).is_file():
                problems.append(f"{where}: {match.group(0)} does not exist")
    return problems


def layout_problems(collected: Collected) -> list[str]:
    """(c) over the docs, scripts, configs and the expanded commands."""
    problems = []
    for where, text in collected.texts.items():
        problems += path_problems(where, text)
    for command in collected.commands:
        problems += path_problems(command.where, " ".join(command.argv), retired=False)
    return sorted(set(problems))


def yaml_problems(blocks: list[tuple[str, str]], tmp: Path) -> list[str]:
    """(d): a ```yaml block is a config fragment the fit parser accepts."""
    from hubert_lit.cli import lightning_main

    problems = []
    for i, (where, body) in enumerate(blocks):
        path = tmp / f"block{i}.yaml"
        path.write_text(body + "\n")
        base = str(ROOT / "configs/pretrain/vanilla_it1.yaml")
        status, text = _quiet(
            lightning_main, ["fit", "--config", base, "--config", str(path), "--print_config"]
        )
        if status != 0:
            problems.append(f"{where}: yaml block rejected: {_last_lines(text)}")
    return problems


def _read(names: list[str]) -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in names}


# ----------------------------------------------------------------------------------------------- tests
pytestmark = pytest.mark.skipif(
    _bash_version() < (4, 3), reason="the docs' shell blocks are expanded with bash >= 4.3"
)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Collected:
    cwd = os.getcwd()
    os.chdir(ROOT)  # commands name configs relative to the repository root
    try:
        yield collect(_read(DOC_FILES), _read(SHELL_SCRIPTS + SBATCH_SCRIPTS), _read(CONFIG_FILES))
    finally:
        os.chdir(cwd)


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_every_command_is_found(docs):
    """Each -m hubert_lit of a bash block gives at least one command (loops give more); the shells expanded
    cleanly; every tool has a parser here."""
    from hubert_lit.__main__ import TOOLS

    assert set(TOOL_PARSERS) == set(TOOLS)
    assert docs.shell_problems == []
    missed = {name: counts for name, counts in docs.block_counts.items() if counts[1] < counts[0]}
    assert missed == {}, "(mentions, commands found) per file"
    scripts = {c.where.split(":")[0] for c in docs.commands}
    assert set(SHELL_SCRIPTS) <= scripts and "experiments/slurm_pretrain.sbatch" in scripts
    assert {span for _, span in docs.skipped} == set(SKIPPED), "a SKIPPED entry no doc has any more"


def test_config_paths_exist(docs):
    assert file_path_problems(docs.texts, docs.commands) == []


def test_commands_parse(docs, tmp_path, at_root):
    assert command_problems(docs.commands, tmp_path) == []
    assert name_problems(docs.names) == []


def test_librispeech_paths_follow_one_layout(docs):
    assert layout_problems(docs) == []


def test_yaml_blocks_parse(docs, tmp_path, at_root):
    assert yaml_problems(docs.yaml_blocks, tmp_path) == []


BAD_DOC = """
```bash
python -m hubert_lit label --shards data/librispeech/shards/train-960 --out data/librispeech/labels/mfcc-k100/train-960 \\
    --features mfcc --clusterz 100
python -m hubert_lit fit --config configs/pretrain/no_such_it1.yaml
python -m hubert_lit fit --config configs/pretrain/vanilla_it1.yaml --model.no_such_key=1
torchrun --nproc_per_node=2 python -m hubert_lit label --shards x --out y --features mfcc --clusters 10
python -m hubert_lit label --shards data/librispeech/shards/dev --out data/librispeech/labels/mfcc-k100/train-960 \\
    --centroids data/librispeech/labels/mfcc-k100/train-960
```
Old folders: `data/shards/train960`, `https://host/shards/train960`; a wrong layer: `data/librispeech/labels/vanilla_it1-l8-k500/dev`;
`python -m hubert_lit lable`; `python -m hubert_lit shard --no-such-flag`.
```yaml
data:
  train_shardz: data/librispeech/shards/train-960
```
"""


def test_the_checks_catch_broken_docs(tmp_path, at_root):
    """The same checks on a doc with one mistake of each kind report each of them."""
    bad = collect({"bad.md": BAD_DOC}, {}, {})
    found = "\n".join(
        command_problems(bad.commands, tmp_path)
        + name_problems(bad.names)
        + file_path_problems(bad.texts, bad.commands)
        + layout_problems(bad)
        + yaml_problems(bad.yaml_blocks, tmp_path)
    )
    for expected in (
        "--clusterz",  # an option the tool does not have
        "config configs/pretrain/no_such_it1.yaml does not exist",
        "no_such_key",  # a key the LightningCLI does not have
        "torchrun ... python -m hubert_lit",
        "the labels split must be the shards' split",
        "data/shards/ is retired",
        "https://host/shards/...: a remote copy mirrors the layout",
        "layer 8, but the label tool's layer for vanilla (half of 12) is 6",
        "lable: no such command",
        "--no-such-flag",
        "train_shardz",
    ):
        assert expected in found, f"{expected!r} not reported in:\n{found}"
