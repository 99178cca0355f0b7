"""Dockerfile -> Apptainer definition (spython), with every lossy instruction reported."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from hpcgear.errors import InvalidInputError, NotFoundError
from hpcgear.gears.dockerfile import (
    Conversion,
    convert_dockerfile,
    convert_dockerfile_text,
    split_dockerfile,
)

FLYWHEEL_DOCKERFILE = textwrap.dedent("""\
    # syntax=docker/dockerfile:1
    # A Flywheel-style gear image
    FROM python:3.11-slim
    LABEL maintainer="Flywheel <support@flywheel.io>" \\
          org.opencontainers.image.source="https://github.com/flywheel-apps/example"
    ARG DEBIAN_FRONTEND=noninteractive
    ARG GEAR_VERSION
    ENV FLYWHEEL=/flywheel/v0
    ENV PYTHONUNBUFFERED=1 \\
        PIP_NO_CACHE_DIR=1
    RUN apt-get update && \\
        # dcm2niix does the conversion
        apt-get install -y --no-install-recommends dcm2niix pigz && \\
        rm -rf /var/lib/apt/lists/*
    WORKDIR ${FLYWHEEL}
    COPY requirements.txt ./
    RUN pip install --no-cache-dir -r requirements.txt
    COPY --chown=1000:1000 manifest.json run.py ${FLYWHEEL}/
    RUN chmod +x ${FLYWHEEL}/run.py
    USER 1000
    EXPOSE 8080
    VOLUME /flywheel/v0/output
    HEALTHCHECK --interval=30s CMD python3 -c "print(1)"
    STOPSIGNAL SIGINT
    ENTRYPOINT ["python3", "/flywheel/v0/run.py"]
    """)


def sections(definition: str) -> dict[str, list[str]]:
    """%section -> its (stripped, non-empty) lines; header lines under ""."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in definition.splitlines():
        if line.startswith("%"):
            current = line.strip()
            out.setdefault(current, [])
        elif line.strip() and not line.startswith("#"):
            out[current].append(line.strip())
    return out


def issues_by_line(conversion: Conversion) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for issue in conversion.issues:
        out.setdefault(issue.line, []).append(f"{issue.severity} {issue.instruction}")
    return out


@pytest.fixture
def flywheel(tmp_path: Path) -> Conversion:
    path = tmp_path / "Dockerfile"
    path.write_text(FLYWHEEL_DOCKERFILE)
    for name in ("requirements.txt", "manifest.json", "run.py"):
        (tmp_path / name).write_text("x")
    return convert_dockerfile(path)


def test_flywheel_dockerfile_converts(flywheel: Conversion) -> None:
    s = sections(flywheel.definition)
    assert s[""] == ["Bootstrap: docker", "From: python:3.11-slim"]
    assert flywheel.stages == 1 and flywheel.base_image == "python:3.11-slim"
    # WORKDIR-relative and ${FLYWHEEL} destinations are resolved as Docker would
    assert s["%files"] == [
        "requirements.txt /flywheel/v0/",
        "manifest.json /flywheel/v0/",
        "run.py /flywheel/v0/",
    ]
    assert s["%environment"] == [
        "export FLYWHEEL=/flywheel/v0",
        "export PYTHONUNBUFFERED=1",
        "export PIP_NO_CACHE_DIR=1",
    ]
    post = s["%post"]
    # ENV and ARG values reach RUN commands (exported), in Dockerfile order
    assert post[:4] == ["export DEBIAN_FRONTEND=noninteractive", "export FLYWHEEL=/flywheel/v0",
                        "export PYTHONUNBUFFERED=1", "export PIP_NO_CACHE_DIR=1"]
    # the continuation survives without the comment line Docker drops
    assert "apt-get install -y --no-install-recommends dcm2niix pigz && \\" in post
    assert not any(line.startswith("#") for line in post)
    assert "pip install --no-cache-dir -r requirements.txt" in post
    assert "chmod +x ${FLYWHEEL}/run.py" in post
    assert s["%labels"] == [
        "maintainer Flywheel <support@flywheel.io>",
        "org.opencontainers.image.source https://github.com/flywheel-apps/example",
    ]
    assert s["%runscript"] == ["cd /flywheel/v0", 'exec python3 /flywheel/v0/run.py "$@"']
    assert "%startscript" not in s and "%test" not in s
    # nothing dropped leaks into the definition
    for word in ("USER", "su -", "EXPOSE", "8080", "HEALTHCHECK", "SIGINT", "VOLUME"):
        assert word not in flywheel.definition.split("\n", 2)[2], word


def test_flywheel_dockerfile_reports_what_does_not_carry_over(flywheel: Conversion) -> None:
    by_line = issues_by_line(flywheel)
    assert by_line == {
        6: ["changed ARG"],
        7: ["dropped ARG"],
        16: ["changed COPY"],  # copied before the RUN lines above it
        18: ["changed COPY"],  # --chown
        20: ["dropped USER"],
        21: ["dropped EXPOSE"],
        22: ["dropped VOLUME"],
        23: ["dropped HEALTHCHECK"],
        24: ["dropped STOPSIGNAL"],
        25: ["note ENTRYPOINT"],
    }
    text = {i.line: i.message for i in flywheel.issues}
    assert "GEAR_VERSION has no default" in text[7]
    assert "runs the container as the user who starts it" in text[20]
    assert "--chown=1000:1000 ignored" in text[18]
    assert "manifest's command" in text[25]


def test_multi_stage_build_and_copy_from(tmp_path: Path) -> None:
    conversion = convert_dockerfile_text(textwrap.dedent("""\
        FROM python:3.11-slim AS builder
        RUN pip wheel --wheel-dir /wheels nibabel
        FROM python:3.11-slim AS base
        ENV FLYWHEEL=/flywheel/v0
        RUN echo base-step
        FROM base AS final
        COPY --from=builder /wheels /tmp/wheels
        COPY --from=0 /wheels/x.whl /tmp/x.whl
        COPY --from=ghcr.io/org/tool:1 /usr/bin/tool /usr/bin/tool
        RUN pip install /tmp/wheels/*.whl
        CMD ["python3", "run.py"]
        """))
    text = conversion.definition
    assert conversion.stages == 3
    # the stage built FROM base is flattened: base's steps run in it; base itself is gone
    assert text.count("Bootstrap: docker") == 2
    assert "Stage: builder" in text and "Stage: final" in text and "Stage: base" not in text
    final = text[text.index("Stage: final"):]
    assert "From: python:3.11-slim" in text[text.index("Stage: builder") - 40:]
    assert "echo base-step" in final and "export FLYWHEEL=/flywheel/v0" in final
    assert "%files from builder" in final
    assert "/wheels /tmp/wheels" in final and "/wheels/x.whl /tmp/x.whl" in final
    assert "/usr/bin/tool" not in text
    messages = " | ".join(f"{i.line}:{i.severity}:{i.message}" for i in conversion.issues)
    assert "1:changed:multi-stage build (3 stages)" in messages
    assert "6:changed:stage final is built FROM stage base" in messages
    assert "9:dropped:--from=ghcr.io/org/tool:1 copies from an image" in messages


def test_add_url_archive_chmod_and_run_mount() -> None:
    conversion = convert_dockerfile_text(textwrap.dedent("""\
        FROM debian:bookworm-slim
        ADD https://example.org/data/template.nii.gz /opt/templates/
        ADD fsl-lite.tar.gz /opt/
        ADD run.sh /flywheel/v0/run.sh
        COPY --chmod=0755 ["tool.sh", "/usr/local/bin/"]
        RUN --mount=type=cache,target=/root/.cache pip install x
        """))
    s = sections(conversion.definition)
    assert s["%files"] == [
        "fsl-lite.tar.gz /tmp/hpcgear-add/fsl-lite.tar.gz",
        "run.sh /flywheel/v0/run.sh",
        "tool.sh /usr/local/bin/",
    ]
    post = s["%post"]
    assert ("mkdir -p /opt/templates/ && curl -fsSL -o /opt/templates/template.nii.gz "
            "https://example.org/data/template.nii.gz") in post
    assert ("mkdir -p /opt/ && tar -xf /tmp/hpcgear-add/fsl-lite.tar.gz -C /opt/ && "
            "rm -f /tmp/hpcgear-add/fsl-lite.tar.gz") in post
    assert "chmod 0755 /usr/local/bin/tool.sh" in post
    assert "pip install x" in post
    assert not any("--mount" in line for line in post)
    severities = {(i.line, i.severity) for i in conversion.issues}
    assert {(2, "changed"), (3, "changed"), (5, "changed"), (6, "changed")} <= severities


def test_heredocs_shell_onbuild_and_unknown_instructions_are_dropped() -> None:
    conversion = convert_dockerfile_text(textwrap.dedent("""\
        FROM alpine:3.19
        SHELL ["/bin/bash", "-c"]
        RUN <<EOF
        apk add curl
        echo done
        EOF
        ONBUILD RUN echo child
        FROBNICATE now
        RUN echo after
        """))
    by_line = issues_by_line(conversion)
    assert by_line[2] == ["dropped SHELL"] and by_line[3] == ["dropped RUN"]
    assert by_line[7] == ["dropped ONBUILD"] and by_line[8] == ["dropped FROBNICATE"]
    post = sections(conversion.definition)["%post"]
    assert post == ["echo after"]


def test_split_dockerfile_reads_like_docker() -> None:
    instructions = split_dockerfile(textwrap.dedent("""\
        # escape=\\
        FROM x
        RUN a \\
            # a comment inside the continuation

            b
        copy  --chown=1 a  b
        """))
    assert [(i.line, i.keyword, i.args) for i in instructions] == [
        (2, "FROM", "x"),
        (3, "RUN", "a b"),
        (7, "COPY", "--chown=1 a  b"),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("RUN echo hi\n", "no FROM instruction"),
        ("# escape=`\nFROM x\n", "escape character '`' is not supported"),
        ("FROM x\nRUN <<EOF\necho\n", "heredoc <<EOF is not closed"),
    ],
)
def test_unconvertible_dockerfiles_are_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        convert_dockerfile_text(text)


def test_missing_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        convert_dockerfile(tmp_path / "Dockerfile")


def test_converted_definition_parses_with_spython(flywheel: Conversion, tmp_path: Path) -> None:
    from spython.main.parse.parsers import SingularityParser

    path = tmp_path / "Apptainer.def"
    path.write_text(flywheel.definition)
    recipe = next(iter(SingularityParser(str(path)).recipe.values()))
    assert recipe.fromHeader == "python:3.11-slim"
    assert "FLYWHEEL=/flywheel/v0" in recipe.environ
    assert "manifest.json /flywheel/v0/" in recipe.files


def hpcgear(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from hpcgear.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args), standalone=False)
    return code, out.getvalue(), err.getvalue()


def test_cli_convert_dockerfile(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(FLYWHEEL_DOCKERFILE)
    code, out, err = hpcgear("gear", "convert-dockerfile", str(dockerfile))
    assert code == 0
    assert out == convert_dockerfile(dockerfile).definition
    assert f"{dockerfile}:20: dropped: USER: Apptainer runs the container" in err
    assert f"{dockerfile}:23: dropped: HEALTHCHECK" in err

    target = tmp_path / "Apptainer.def"
    code, out, err = hpcgear("gear", "convert-dockerfile", str(dockerfile), "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == convert_dockerfile(dockerfile).definition
    assert f"wrote {target} (10 notes, 6 instructions not converted)" in err

    code, out, _ = hpcgear("gear", "convert-dockerfile", str(dockerfile), "--json")
    doc = json.loads(out)
    assert doc["stages"] == 1 and len(doc["issues"]) == 10
    assert {"line": 7, "instruction": "ARG", "severity": "dropped",
            "message": doc["issues"][1]["message"]} == doc["issues"][1]

    code, _, err = hpcgear("gear", "convert-dockerfile", str(tmp_path / "missing"))
    assert code == 3 and "does not exist" in err
