"""Ingest commands: ``hpcgear ingest dicom|nifti|reclassify``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpcgear.cli.context import AppContext, safe_text

if TYPE_CHECKING:
    from hpcgear.ingest.deid import DeidProfile
    from hpcgear.ingest.dicom import ProgressEvent
    from hpcgear.ingest.report import IngestReport

pass_app = click.make_pass_decorator(AppContext)

# Kept literal here (not imported) so `hpcgear ingest --help` stays fast.
DEFAULT_ROUTE_FIELD = "AccessionNumber"
DEFAULT_ROUTE_PATTERN = r"^(?P<project>[^/]+)/(?P<subject>[^/]+)(?:/(?P<session>[^/]+))?$"
DEFAULT_FW_FIELDS = ("PatientComments", "StudyComments")
MAX_SKIPPED_LINES = 50
_PHASE_LABELS = {"scan": "reading headers", "store": "storing"}


class ProgressBars:
    """Adapts the library's progress callback to one click progress bar per phase."""

    def __init__(self, app: AppContext, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled
        self.phase: str | None = None
        self.bar: Any = None
        self.pos = 0

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.phase != self.phase:
            self.close()
            self.phase = event.phase
            self.pos = 0
            self.bar = click.progressbar(
                length=max(event.total, 1),
                label=_PHASE_LABELS.get(event.phase, event.phase),
                file=self.app.stderr,
            )
            self.bar.__enter__()
        step = event.done - self.pos
        if step > 0:
            self.bar.update(step)
            self.pos = event.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _quiet_pydicom_value_warnings() -> None:
    """Scanner headers often break VR rules (an 18-character AccessionNumber in an
    SH); pydicom warns once per value. The ingest reads them anyway, so keep the
    terminal for the report; with -v pydicom's own log still says it."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")


def _progress_enabled(app: AppContext, flag: bool | None) -> bool:
    if flag is not None:
        return flag
    isatty = getattr(app.stderr, "isatty", None)
    return bool(isatty and isatty())


@click.group("ingest")
def ingest_group() -> None:
    """Ingest DICOM and NIfTI folders: routing, classification, de-identification.

    \b
    DICOM studies become sessions and series acquisitions (one zip per series),
    routed by the AccessionNumber convention PROJECT/SUBJECT/SESSION typed at
    the scanner, a fw://group/project/subject/session value, or the options.
    Rerunning on the same folder changes nothing; an interrupted run continues.
    """


def _common(f: Any) -> Any:
    options = [
        click.option("--group", "group", required=True, help="Group id to ingest into."),
        click.option("--project", help="Project label (DICOM: overrides header routing)."),
        click.option("--subject", help="Subject label for everything ingested."),
        click.option("--session", "session_label", help="Session label for everything ingested."),
        click.option(
            "--dry-run", is_flag=True, help="Print the planned hierarchy; change nothing."
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable summary."),
        click.option(
            "--jobs",
            type=click.IntRange(min=1, max=64),
            default=4,
            show_default=True,
            help="Parallel header reads / series builds.",
        ),
        click.option(
            "--progress/--no-progress",
            "progress",
            default=None,
            help="Progress bars on stderr (default: when stderr is a terminal).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@ingest_group.command("dicom")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path)
)
@_common
@click.option(
    "--route-field",
    default=DEFAULT_ROUTE_FIELD,
    show_default=True,
    help="DICOM keyword whose value routes the study.",
)
@click.option(
    "--route-pattern",
    default=DEFAULT_ROUTE_PATTERN,
    show_default=True,
    help="Regex over --route-field with named groups project, subject, session.",
)
@click.option(
    "--fw-field",
    "fw_fields",
    multiple=True,
    metavar="KEYWORD",
    help="Fields searched for fw://group/project/subject/session values "
    f"(repeatable; default {', '.join(DEFAULT_FW_FIELDS)}).",
)
@click.option(
    "--route-require",
    default="project,subject,session",
    show_default=True,
    help="Levels the routing field must name; a study naming fewer goes to Unsorted.",
)
@click.option(
    "--de-identify",
    is_flag=True,
    help="Apply the DICOM PS3.15 Annex E basic profile before storing.",
)
@click.option(
    "--deid-profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="De-identification profile (Flywheel deid YAML); implies --de-identify: "
    "the PS3.15 basic profile applies to every attribute the profile does not name.",
)
@pass_app
def dicom_cmd(
    app: AppContext,
    directory: Path,
    group: str,
    project: str | None,
    subject: str | None,
    session_label: str | None,
    dry_run: bool,
    as_json: bool,
    jobs: int,
    progress: bool | None,
    route_field: str,
    route_pattern: str,
    fw_fields: tuple[str, ...],
    route_require: str,
    de_identify: bool,
    deid_profile: Path | None,
) -> None:
    """Ingest the DICOM files under DIRECTORY (headers decide everything, not folders).

    \b
    Unroutable studies go to GROUP/Unsorted with the reason in the session's
    info.hpcgear.unsorted_reason (created when you are a group admin).
    Files that are not DICOM, lack UIDs or are truncated are listed with a
    reason code (not_dicom, missing_uid, unreadable) and skipped.
    """
    from hpcgear.ingest.dicom import start_scan
    from hpcgear.ingest.routing import RoutingRules, parse_required_levels

    _quiet_pydicom_value_warnings()

    profile: DeidProfile | None = None
    if deid_profile is not None or de_identify:  # the profile machinery only when asked
        from hpcgear.ingest.deid import default_profile, load_profile, with_baseline

        profile = (
            with_baseline(load_profile(deid_profile))
            if deid_profile is not None
            else default_profile()
        )
    routing = RoutingRules(
        field=route_field,
        pattern=route_pattern,
        fw_fields=tuple(fw_fields) or DEFAULT_FW_FIELDS,
        project=project,
        subject=subject,
        session=session_label,
        require=parse_required_levels(route_require),
    )
    bars = ProgressBars(app, _progress_enabled(app, progress))
    # With --jobs N the header reads start now, in N forked workers, while this
    # process imports the database layer and opens the database (about a
    # quarter of a second); the service checks everything before using them.
    with start_scan(
        directory, route_fields=routing.header_fields, profile=profile, jobs=jobs
    ) as started:
        # Core, not the ORM service module: the command then never imports
        # sqlalchemy.orm nor builds the models (about 0.2 s of CPU).
        from hpcgear.ingest.dicom_ingest import DicomIngestOptions, ingest_dicom

        options = DicomIngestOptions(group=group, routing=routing, profile=profile, jobs=jobs)
        actor = app.actor
        try:
            # Commit as you go: the ingest commits after each series itself.
            with app.db.engine.connect() as conn:
                report = ingest_dicom(
                    conn,
                    app.store,
                    actor,
                    directory,
                    options,
                    dry_run=dry_run,
                    progress=bars,
                    started=started,
                )
                conn.commit()
        finally:
            bars.close()
    _emit(app, report, as_json)


@ingest_group.command("nifti")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path)
)
@_common
@pass_app
def nifti_cmd(
    app: AppContext,
    directory: Path,
    group: str,
    project: str | None,
    subject: str | None,
    session_label: str | None,
    dry_run: bool,
    as_json: bool,
    jobs: int,
    progress: bool | None,
) -> None:
    """Ingest NIfTI images (with .json/.bval/.bvec sidecars) under DIRECTORY.

    \b
    BIDS names place files: sub-XX -> subject, ses-YY -> session (else
    "default"), the datatype folder (anat, func, dwi, ...) -> acquisition.
    --subject/--session override; --project is required.
    """
    from hpcgear.ingest.service import NiftiIngestOptions, ingest_nifti

    options = NiftiIngestOptions(
        group=group, project=project, subject=subject, session=session_label, jobs=jobs
    )
    actor = app.actor
    bars = ProgressBars(app, _progress_enabled(app, progress))
    try:
        with app.db.session() as s:
            report = ingest_nifti(
                s, app.store, actor, directory, options, dry_run=dry_run, progress=bars
            )
    finally:
        bars.close()
    _emit(app, report, as_json)


@ingest_group.command("bids")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
@pass_app
def bids_cmd(
    app: AppContext,
    directory: Path,
    group: str,
    project: str | None,
    subject: str | None,
    session_label: str | None,
    dry_run: bool,
    as_json: bool,
    jobs: int,
    progress: bool | None,
) -> None:
    """Ingest a BIDS dataset: images as `ingest nifti` places them, and every other file.

    \b
    dataset_description.json, participants.tsv, README and other top-level files
    go on the project; *_sessions.tsv on the subject; *_scans.tsv on the
    session; *_events.tsv and other files of a datatype folder beside its
    images. Each keeps its BIDS place in info.BIDS, so `export bids` puts it
    back. derivatives/, sourcedata/ and code/ are reported, not stored.
    """
    from hpcgear.errors import InvalidInputError
    from hpcgear.ingest.bids import ingest_bids_extras
    from hpcgear.ingest.service import NiftiIngestOptions, ingest_nifti

    if not project:
        raise InvalidInputError("ingest bids needs --project", "name the project: --project P")
    options = NiftiIngestOptions(
        group=group, project=project, subject=subject, session=session_label, jobs=jobs
    )
    actor = app.actor
    bars = ProgressBars(app, _progress_enabled(app, progress))
    try:
        with app.db.session() as s:
            report = ingest_nifti(
                s, app.store, actor, directory, options, dry_run=dry_run, progress=bars
            )
            ingest_bids_extras(
                s, app.store, actor, directory, f"{group}/{project}", report, dry_run=dry_run
            )
    finally:
        bars.close()
    _emit(app, report, as_json)


@ingest_group.command("folder")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--group", "group", required=True, help="Group id to ingest into.")
@click.option("--project", required=True, help="Project label.")
@click.option(
    "--template",
    required=True,
    help="Where files are, e.g. '{subject}/{session}/{acquisition}/*' (globs allowed).",
)
@click.option("--dry-run", is_flag=True, help="Print the planned hierarchy; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@pass_app
def folder_cmd(
    app: AppContext,
    directory: Path,
    group: str,
    project: str,
    template: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Upload a folder by a path template, as the Flywheel CLI's template ingest does.

    \b
    Each file's path under DIRECTORY is matched segment by segment against
    --template; {subject}, {session} and {acquisition} name the levels (a
    segment may add text around them: 'sub-{subject}'), other segments are
    globs. Files that do not match are reported as no_template_match.
    """
    from hpcgear.ingest.bids import ingest_folder

    actor = app.actor
    with app.db.session() as s:
        report = ingest_folder(
            s, app.store, actor, directory, f"{group}/{project}", template, dry_run=dry_run
        )
    _emit(app, report, as_json)


@ingest_group.command("reclassify")
@click.argument("path")
@click.option("--force", is_flag=True, help="Re-classify even files at the current version.")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def reclassify_cmd(app: AppContext, path: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Re-run the DICOM header classifier on files under PATH (project or below)."""
    from hpcgear.ingest.classifier import CLASSIFIER_VERSION
    from hpcgear.ingest.service import reclassify

    actor = app.actor
    with app.db.session() as s:
        results = reclassify(s, actor, path, force=force, dry_run=dry_run)
    if as_json:
        app.emit_json(
            {
                "classifier_version": CLASSIFIER_VERSION,
                "dry_run": dry_run,
                "files": [
                    {
                        "path": r.path,
                        "old_version": r.old_version,
                        "old": r.old,
                        "new": r.new,
                        "changed": r.changed,
                    }
                    for r in results
                ],
            }
        )
        return
    changed = [r for r in results if r.changed]
    for r in changed:
        what = _class_text(r.new) or "(unclassified)"
        app.echo(f"{safe_text(r.path)}: {what}")
    verb = "would re-classify" if dry_run else "re-classified"
    app.note(f"{verb} {len(changed)} file(s) with classifier {CLASSIFIER_VERSION}")


# -------------------------------------------------------------------- output


def _class_text(classification: dict[str, Any]) -> str:
    parts = []
    for key in ("Intent", "Measurement", "Features"):
        values = classification.get(key) or []
        if values:
            parts.append("/".join(str(v) for v in values))
    return " ".join(parts)


def _emit(app: AppContext, report: IngestReport, as_json: bool) -> None:
    if as_json:
        app.emit_json(report.to_dict())
        return
    for note in report.notes:
        app.echo(note)
    shown: set[int] = set()
    for sess in sorted(report.sessions, key=lambda s: s.path):
        line = f"session {safe_text(sess.path)} ({sess.status})"
        if sess.unsorted_reason:
            line += f" unsorted: {safe_text(sess.unsorted_reason)}"
        app.echo(line)
        prefix = sess.path + "/"
        for i, f in enumerate(report.files):
            if i in shown or not f.container.startswith(prefix):
                continue
            shown.add(i)
            app.echo(_file_line(f))
    for i, f in enumerate(report.files):
        if i not in shown:
            app.echo(_file_line(f))
    if report.skipped:
        app.echo(f"skipped {len(report.skipped)} file(s):")
        for s in report.skipped[:MAX_SKIPPED_LINES]:
            app.echo(f"  {safe_text(s.path)}: {s.reason} ({safe_text(s.detail)})")
        if len(report.skipped) > MAX_SKIPPED_LINES:
            rest = len(report.skipped) - MAX_SKIPPED_LINES
            app.echo(f"  ... and {rest} more (use --json for all)")
    sm = report.summary()
    tail = f"{sm['skipped']} skipped of {sm['files_seen']} seen"
    if report.dry_run:
        app.note(f"would store {sm['files']} file(s) in {sm['sessions']} session(s); {tail}")
        return
    app.note(
        f"stored {sm['files']} file(s) in {sm['sessions']} session(s): {sm['new']} new, "
        f"{sm['new_version']} new version(s), {sm['unchanged']} unchanged; {tail}"
    )


def _file_line(f: Any) -> str:
    where = f.container.rsplit("/", 1)[-1]
    name = f.name if f.name.startswith(where) else f"{where}/{f.name}"
    extra = f" {f.members} instance(s)" if f.members else ""
    cls = _class_text(f.classification)
    version = f" v{f.version}" if f.version else ""
    line = f"  {f.status:<11} {safe_text(name)}{version}{extra}"
    return line + (f" [{cls}]" if cls else "")
