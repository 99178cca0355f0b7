"""Convert a gear's Dockerfile into an Apptainer definition file, saying what does not carry over.

Flywheel gears are published with a Dockerfile; sites that cannot run Docker
build the same image with ``apptainer build`` from a definition file. The
conversion is done by spython (``spython.main.parse``: its Docker parser fills
a ``Recipe`` per stage, its Singularity writer renders the definition). Before
spython sees the Dockerfile, this module reads it the way Docker does (line
continuations, comments inside continuations, parser directives, heredocs,
instruction flags, ``$VAR`` expansion in COPY/ADD/WORKDIR) and rewrites what
spython would get wrong; after parsing it fixes the recipes (ENV/ARG values
exported to ``%post`` as Docker exports them to RUN, stages built ``FROM`` an
earlier stage flattened because Apptainer stages cannot inherit).

Every instruction that has no Apptainer equivalent, or whose meaning changes,
becomes a :class:`ConversionIssue` with its line number:

* **dropped** - not in the definition: USER (Apptainer runs the container as the
  calling user), HEALTHCHECK, EXPOSE, VOLUME, STOPSIGNAL, SHELL, ONBUILD, ARG
  without a default, heredocs, ``COPY --from=<image>``, unknown instructions.
* **changed** - converted with different semantics: ARG (fixed to its default),
  ``COPY --chown`` (files stay root's), ``--chmod`` (a chmod in %post), ADD of
  a URL (curl in %post) or an archive (tar in %post), ``RUN --mount``, COPY
  after RUN (all %files run before %post), directory copies, multi-stage builds.
* **note** - worth checking: ENTRYPOINT/CMD become ``%runscript`` but hpcgear
  (like Flywheel) runs the manifest ``command``; WORKDIR is not the run-time
  directory (gears start in /flywheel/v0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcgear.errors import InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

Severity = Literal["dropped", "changed", "note"]

_DROPPED = {
    "USER": "Apptainer runs the container as the user who starts it; there is no USER. "
            "Make sure files the gear writes at run time are writable by any user",
    "HEALTHCHECK": "Apptainer has no health checks; hpcgear follows the job through SLURM",
    "EXPOSE": "containers share the host's network; there is nothing to expose",
    "VOLUME": "Apptainer has no volumes; hpcgear binds /flywheel/v0/input, output and work "
              "at run time",
    "STOPSIGNAL": "hpcgear stops gears with SIGTERM, forwarded by the job script",
    "SHELL": "%post runs with /bin/sh; RUN lines that need another shell must call it "
             "(bash -c '...')",
    "ONBUILD": "Apptainer has no ONBUILD triggers",
}
_KNOWN = {"FROM", "RUN", "CMD", "ENTRYPOINT", "ENV", "ARG", "LABEL", "MAINTAINER", "COPY",
          "ADD", "WORKDIR", *_DROPPED}
_ARCHIVE_RE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz)$", re.IGNORECASE)
_HEREDOC_RE = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_VAR_RE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::[-+]([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True, slots=True)
class DockerInstruction:
    """One Dockerfile instruction as Docker reads it.

    ``line`` is the 1-based line it starts on; ``args`` the text after the
    keyword with continuations joined; ``body`` the physical lines after the
    keyword's line (continuations, minus comment lines Docker ignores);
    ``heredoc`` whether it uses ``<<EOF`` syntax.
    """

    line: int
    keyword: str
    args: str
    first: str
    body: tuple[str, ...]
    heredoc: bool = False


@dataclass(frozen=True, slots=True)
class ConversionIssue:
    """Something in the Dockerfile that was dropped or changed meaning."""

    line: int
    instruction: str
    severity: Severity
    message: str


@dataclass(frozen=True, slots=True)
class Conversion:
    """The definition file text plus everything a reviewer should know."""

    definition: str
    issues: tuple[ConversionIssue, ...]
    stages: int
    base_image: str | None


# --------------------------------------------------------------------------- reading


def split_dockerfile(text: str, source: str = "Dockerfile") -> list[DockerInstruction]:
    """Split Dockerfile text into instructions (continuations, comments, heredocs).

    Raises
    ------
    InvalidInputError
        For an ``# escape=`` directive other than backslash, or an unterminated heredoc.
    """
    lines = text.splitlines()
    i = 0
    # Parser directives: only at the very top, before any other comment or instruction.
    while i < len(lines):
        m = re.match(r"^\s*#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", lines[i])
        if not m:
            break
        if m.group(1).lower() == "escape" and m.group(2) != "\\":
            raise InvalidInputError(
                f"{source}:{i + 1}: the escape character {m.group(2)!r} is not supported",
                "convert Dockerfiles that use the default backslash escape",
            )
        i += 1
    out: list[DockerInstruction] = []
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i
        keyword = stripped.split(None, 1)[0]
        pieces = [stripped[len(keyword):].strip()]
        body: list[str] = []
        continued = raw.rstrip().endswith("\\")
        while continued and i + 1 < len(lines):
            i += 1
            nxt = lines[i]
            if not nxt.strip() or nxt.strip().startswith("#"):
                continue  # Docker ignores comment and empty lines inside a continuation
            # Indented, so spython never mistakes a continuation for an instruction.
            body.append(nxt.rstrip() if nxt[:1].isspace() else "    " + nxt.rstrip())
            pieces.append(nxt.strip())
            continued = nxt.rstrip().endswith("\\")
        args = " ".join(p.removesuffix("\\").strip() for p in pieces).strip()
        heredoc = False
        m = _HEREDOC_RE.search(args) if keyword.upper() in ("RUN", "COPY", "ADD") else None
        if m:
            heredoc = True
            word, dash = m.group(3), m.group(1)
            i += 1
            while i < len(lines):
                candidate = lines[i].lstrip("\t") if dash else lines[i]
                if candidate == word:
                    break
                body.append(lines[i])
                i += 1
            else:
                raise InvalidInputError(f"{source}:{start + 1}: heredoc <<{word} is not closed",
                                        f"end it with a line holding only {word}")
        out.append(DockerInstruction(start + 1, keyword.upper(), args, raw.rstrip(),
                                     tuple(body), heredoc))
        i += 1
    return out


# --------------------------------------------------------------------------- converting


class _Converter:
    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConversionIssue] = []
        self.lines: list[str] = []  # the normalised Dockerfile spython reads
        self.env: dict[str, str] = {}
        self.args: dict[str, str] = {}
        self.workdir = "/"
        self.stages: list[str] = []  # stage names ("" when unnamed), in order
        self.stage_parent: dict[int, int] = {}  # stage index -> earlier stage it is FROM
        self.base_image: str | None = None
        self.saw_run = False
        self.warned_order = False

    def issue(self, ins: DockerInstruction, severity: Severity, message: str) -> None:
        self.issues.append(ConversionIssue(ins.line, ins.keyword, severity, message))

    def expand(self, text: str) -> str:
        """Docker's variable expansion in COPY/ADD/WORKDIR/FROM (ENV and ARG values)."""
        values = {**self.args, **self.env}

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(3)
            default = m.group(2)
            if name in values:
                return values[name]
            return default if default is not None else ""

        return _VAR_RE.sub(sub, text)

    # -- instructions

    def convert(self, ins: DockerInstruction) -> None:
        kw = ins.keyword
        if kw not in _KNOWN:
            self.issue(ins, "dropped", f"unknown instruction {kw}")
            return
        if kw in _DROPPED:
            self.issue(ins, "dropped", _DROPPED[kw])
            return
        getattr(self, f"_{kw.lower()}")(ins)

    def _from(self, ins: DockerInstruction) -> None:
        words = ins.args.split()
        flags = [w for w in words if w.startswith("--")]
        words = [w for w in words if not w.startswith("--")]
        if flags:
            self.issue(ins, "changed", f"{' '.join(flags)} ignored: Apptainer pulls the image "
                       "for the build host's platform")
        if not words:
            raise InvalidInputError(f"{self.source}:{ins.line}: FROM without an image",
                                    "write FROM IMAGE[:TAG] [AS NAME]")
        image = self.expand(words[0])
        index = len(self.stages)
        # spython only starts a new stage at a named FROM, so unnamed stages get a name.
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{index}"
        if image in self.stages and image:
            self.stage_parent[index] = self.stages.index(image)
        if image == "scratch":
            self.issue(ins, "dropped", "FROM scratch has no Apptainer bootstrap; start from "
                       "a minimal image (busybox, debian:bookworm-slim)")
        self.stages.append(name)
        self.env = {}  # each stage starts with its own environment (ARGs before FROM stay)
        self.workdir = "/"
        self.saw_run = False
        if index in self.stage_parent:
            parent = self.stages[self.stage_parent[index]]
            self.issue(ins, "changed", f"stage {name} is built FROM stage {parent}: "
                       "Apptainer stages cannot inherit, so that stage's files, %post and "
                       "environment are repeated in this one")
        elif self.base_image is None or index > 0:
            self.base_image = image
        self.lines.append(f"FROM {image} AS {name}")

    def _run(self, ins: DockerInstruction) -> None:
        if ins.heredoc:
            self.issue(ins, "dropped", "RUN with a heredoc is not converted; write the "
                       "commands as RUN lines")
            return
        parts = ins.first.strip().split(None, 1)
        rest = parts[1] if len(parts) > 1 else ""
        flags = re.match(r"^(?:--[a-z-]+(?:=\S+)?\s+)+", rest)
        if flags:
            self.issue(ins, "changed", f"{flags.group(0).strip()} ignored: Apptainer builds "
                       "have no cache, secret or ssh mounts; the command runs without them")
            rest = rest[flags.end():]
        self.lines.append(f"RUN {rest}")
        self.lines.extend(ins.body)
        self.saw_run = True

    def _cmd(self, ins: DockerInstruction) -> None:
        self._entry_or_cmd(ins)

    def _entrypoint(self, ins: DockerInstruction) -> None:
        self._entry_or_cmd(ins)

    def _entry_or_cmd(self, ins: DockerInstruction) -> None:
        self.issue(ins, "note", f"{ins.keyword} becomes %runscript (apptainer run); hpcgear, "
                   "like Flywheel, runs the manifest's command instead, so keep it in step")
        self.lines.append(f"{ins.keyword} {ins.args}")

    def _env(self, ins: DockerInstruction) -> None:
        pairs = _env_pairs(ins.args)
        if pairs is None:
            self.issue(ins, "dropped", "this ENV line could not be parsed")
            return
        for key, value in pairs:
            value = self.expand(value)
            self.env[key] = value
            self.lines.append(f"ENV {key}={shlex.quote(value)}")

    def _arg(self, ins: DockerInstruction) -> None:
        for word in ins.args.split():
            name, eq, default = word.partition("=")
            default = default.strip("\"'")
            if not eq:
                self.issue(ins, "dropped", f"ARG {name} has no default and Apptainer has no "
                           f"build arguments: ${name} stays empty; set it in %post")
                continue
            self.args[name] = self.expand(default)
            self.issue(ins, "changed", f"ARG {name} is fixed to its default {default!r} and "
                       "exported in %post (Apptainer has no --build-arg)")
            self.lines.append(f"ARG {name}={shlex.quote(self.args[name])}")

    def _label(self, ins: DockerInstruction) -> None:
        pairs = _env_pairs(ins.args)
        if pairs is None:
            self.issue(ins, "dropped", "this LABEL line could not be parsed")
            return
        for key, value in pairs:
            self.lines.append(f"LABEL {key} {self.expand(value)}")

    def _maintainer(self, ins: DockerInstruction) -> None:
        self.lines.append(f"LABEL maintainer {ins.args}")

    def _workdir(self, ins: DockerInstruction) -> None:
        path = self.expand(ins.args.strip().strip("\"'"))
        self.workdir = os.path.normpath(os.path.join(self.workdir, path))
        self.lines.append(f"WORKDIR {self.workdir}")

    def _copy(self, ins: DockerInstruction) -> None:
        self._copy_or_add(ins, add=False)

    def _add(self, ins: DockerInstruction) -> None:
        self._copy_or_add(ins, add=True)

    def _copy_or_add(self, ins: DockerInstruction, *, add: bool) -> None:
        if ins.heredoc:
            self.issue(ins, "dropped", f"{ins.keyword} with a heredoc is not converted; put "
                       "the content in a file and copy that")
            return
        words = _split_copy_args(ins.args)
        if words is None:
            self.issue(ins, "dropped", "its JSON arguments could not be parsed")
            return
        flags = {}
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            flags[key] = value
        if len(words) < 2:
            self.issue(ins, "dropped", "needs at least one source and a destination")
            return
        *sources, dest = [self.expand(w) for w in words]
        if any(re.search(r"\s", w) for w in (*sources, dest)):
            self.issue(ins, "dropped", "paths with spaces cannot be written in %files")
            return
        if not dest.startswith("/") or "/./" in dest or "/../" in dest:
            resolved = os.path.normpath(os.path.join(self.workdir, dest))
            dest = resolved + ("/" if dest.endswith("/") and resolved != "/" else "")
        stage = flags.pop("from", None)
        if stage is not None and stage not in self.stages and not stage.isdigit():
            self.issue(ins, "dropped", f"--from={stage} copies from an image, which Apptainer "
                       f"cannot; add a stage `FROM {stage} AS src` and copy --from=src")
            return
        if stage is not None and stage.isdigit():
            stage = self.stages[int(stage)] if int(stage) < len(self.stages) else stage
        if "chown" in flags:
            self.issue(ins, "changed", f"--chown={flags.pop('chown')} ignored: files in the "
                       "image belong to root and the container runs as the calling user")
        chmod = flags.pop("chmod", None)
        for other in sorted(flags):
            self.issue(ins, "changed", f"--{other} ignored")
        if self.saw_run and stage is None and not self.warned_order:
            self.warned_order = True
            self.issue(ins, "changed", "Apptainer copies all %files before running %post, so "
                       "this copy happens before the RUN lines above it; check that they do "
                       "not depend on its absence or change these files")
        plain: list[str] = []
        for src in sources:
            if add and re.match(r"^https?://", src):
                self.issue(ins, "changed", f"{src} is downloaded with curl in %post; the "
                           "base image needs curl")
                target = dest if dest.endswith("/") else dest + "/"
                name = src.rstrip("/").rsplit("/", 1)[-1]
                self.lines.append(f"RUN mkdir -p {target} && curl -fsSL -o "
                                  f"{shlex.quote(target + name)} {shlex.quote(src)}")
            elif add and _ARCHIVE_RE.search(src):
                self.issue(ins, "changed", f"{src} is copied and unpacked with tar in %post "
                           "(Docker's ADD unpacks it)")
                tmp = f"/tmp/hpcgear-add/{Path(src).name}"  # noqa: S108 - inside the image build
                self.lines.append(f"COPY {src} {tmp}")
                self.lines.append(f"RUN mkdir -p {dest} && tar -xf {tmp} -C {dest} && rm -f {tmp}")
            else:
                if src in (".", "./") or (src.endswith("/") and stage is None):
                    self.issue(ins, "changed", f"{src} is a directory: Docker copies its "
                               "contents, Apptainer copies the directory itself; check the "
                               "layout (or list the files)")
                plain.append(src)
        if plain:
            prefix = f"COPY --from={stage} " if stage is not None else "COPY "
            self.lines.append(prefix + " ".join(plain) + f" {dest}")
            if chmod:
                self.issue(ins, "changed", f"--chmod={chmod} is applied with chmod in %post")
                if dest.endswith("/"):
                    targets = [dest + Path(s.rstrip("/")).name for s in plain]
                else:
                    targets = [dest]
                self.lines.append(f"RUN chmod {chmod} " + " ".join(targets))


def _env_pairs(args: str) -> list[tuple[str, str]] | None:
    """``KEY=VALUE ...`` or the legacy ``KEY VALUE`` form, shell-style quoting."""
    try:
        words = shlex.split(args, posix=True)
    except ValueError:
        return None
    if not words:
        return None
    if "=" not in words[0]:
        key, _, value = args.strip().partition(" ")
        return [(key, value.strip().strip("\"'"))]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", key):
            return None
        pairs.append((key, value))
    return pairs


def _split_copy_args(args: str) -> list[str] | None:
    text = args.strip()
    flags: list[str] = []
    while text.startswith("--"):
        flag, _, text = text.partition(" ")
        flags.append(flag)
        text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            return None
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            return None
        return flags + items
    return flags + text.split()


# --------------------------------------------------------------------------- spython


@contextlib.contextmanager
def _quiet_spython() -> Iterator[Any]:
    """spython prints warnings itself; silence it (hpcgear reports issues its own way)."""
    from spython.logger import bot

    level = bot.level
    bot.level = 0  # QUIET
    try:
        yield bot
    finally:
        bot.level = level


def _fix_recipes(recipes: dict[str, Any], parents: Mapping[int, int], args: Mapping[str, str],
                 ) -> dict[str, Any]:
    names = list(recipes)
    for recipe in recipes.values():
        if isinstance(recipe.fromHeader, str):
            recipe.fromHeader = recipe.fromHeader.strip()
        # Docker exports ENV (and ARG) values to RUN commands; spython writes bare
        # assignments into %post, which child processes would not see.
        exported = (set(recipe.environ) | {f"{k}={v}" for k, v in args.items()}
                    | {f"{k}={shlex.quote(v)}" for k, v in args.items()})
        recipe.install = [f"export {line}" if line in exported else line
                          for line in recipe.install]
    # Flatten stages built FROM an earlier stage: Apptainer stages only share files.
    for child_index, parent_index in sorted(parents.items()):
        if child_index >= len(names) or parent_index >= len(names):
            continue
        child, parent = recipes[names[child_index]], recipes[names[parent_index]]
        child.fromHeader = parent.fromHeader
        child.files = [*parent.files, *child.files]
        child.install = [*parent.install, *child.install]
        child.environ = [*parent.environ, *child.environ]
        child.labels = [*parent.labels, *child.labels]
        for layer, files in parent.layer_files.items():
            child.layer_files.setdefault(layer, [])[:0] = files
        if child.workdir is None:
            child.workdir = parent.workdir
    # A stage nobody copies from and that was only a parent is now redundant.
    used: set[str] = set()
    for recipe in recipes.values():
        used.update(recipe.layer_files)
    last = names[-1]
    for index in set(parents.values()):
        name = names[index]
        if name != last and name not in used:
            del recipes[name]
    return recipes


def _render(recipes: dict[str, Any]) -> str:
    from spython.main.parse.writers import SingularityWriter

    writer = SingularityWriter(recipes)
    text: str = writer.convert(runscript="/bin/sh")
    # spython also writes the runscript as %startscript (for instances); gears never run
    # as instances, so only %runscript stays.
    text = re.sub(r"(?ms)^%startscript\n.*?(?=^%|^Bootstrap:|\Z)", "", text)
    if len(recipes) == 1:
        text = re.sub(r"(?m)^Stage: .*\n", "", text)
    sections = re.split(r"(?m)^(?=%[a-z]+)|^(?=Bootstrap:)", text)
    out: list[str] = []
    for chunk in sections:
        lines = chunk.strip("\n").splitlines()
        if not lines:
            continue
        if lines[0].startswith("%"):
            out.append(lines[0])
            out.extend("    " + line if line.strip() else "" for line in lines[1:])
        else:
            out.extend(line.rstrip() for line in lines)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def convert_dockerfile_text(text: str, *, source: str = "Dockerfile") -> Conversion:
    """Convert Dockerfile ``text``; see the module docstring for what is reported.

    Raises
    ------
    InvalidInputError
        The Dockerfile cannot be read as one (no FROM, bad directive, open heredoc).
    """
    from spython.main.parse.parsers import DockerParser

    instructions = split_dockerfile(text, source)
    if not any(i.keyword == "FROM" for i in instructions):
        raise InvalidInputError(f"{source}: no FROM instruction", "a Dockerfile starts FROM an "
                                "image; is this a Dockerfile?")
    converter = _Converter(source)
    for ins in instructions:
        converter.convert(ins)
    if len(converter.stages) > 1:
        first = next(i for i in instructions if i.keyword == "FROM")
        converter.issues.append(ConversionIssue(
            first.line, "FROM", "changed",
            f"multi-stage build ({len(converter.stages)} stages): each becomes an Apptainer "
            "stage and COPY --from becomes '%files from'; the image is the last stage"))
    workdir = converter.workdir
    if workdir not in ("/", "/flywheel/v0"):
        wd = [i for i in instructions if i.keyword == "WORKDIR"]
        if wd:
            converter.issues.append(ConversionIssue(
                wd[-1].line, "WORKDIR", "note",
                f"the runscript starts in {workdir}, but hpcgear and Flywheel start gears in "
                "/flywheel/v0"))
    with tempfile.TemporaryDirectory(prefix="hpcgear-dockerfile-") as tmp:
        normalised = Path(tmp) / "Dockerfile"
        normalised.write_text("\n".join(converter.lines) + "\n", encoding="utf-8")
        cwd = Path.cwd()
        with _quiet_spython():
            try:
                # spython checks COPY sources relative to the working directory; run it in
                # the Dockerfile's directory so those checks look at the build context.
                if Path(source).parent.is_dir():
                    os.chdir(Path(source).parent)
                parser = DockerParser(str(normalised))
                recipes = _fix_recipes(dict(parser.recipe), converter.stage_parent,
                                       converter.args)
                body = _render(recipes)
            except SystemExit:
                raise InvalidInputError(f"{source}: spython could not convert this Dockerfile",
                                        "check the FROM lines") from None
            finally:
                os.chdir(cwd)
    header = (
        f"# Converted from {Path(source).name} by `hpcgear gear convert-dockerfile` "
        f"(spython).\n# Review its {len(converter.issues)} note(s) on changed or dropped "
        "instructions before building.\n"
    )
    issues = tuple(sorted(converter.issues, key=lambda i: i.line))
    for issue in issues:
        logger.debug("%s:%d: %s %s: %s", source, issue.line, issue.severity,
                     issue.instruction, issue.message)
    return Conversion(header + body, issues, len(converter.stages), converter.base_image)


def convert_dockerfile(path: str | os.PathLike[str]) -> Conversion:
    """Read and convert the Dockerfile at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"{p} does not exist", "give the path of the gear's Dockerfile"
                            ) from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{p} is not UTF-8 text", "is this a Dockerfile?") from None
    return convert_dockerfile_text(text, source=str(p))
