"""Gear rule commands: rule add|list|show|enable|disable|rm|apply|test, rules evaluate|status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpcgear.cli.context import AppContext, parse_pairs, safe_text, site_registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

pass_app = click.make_pass_decorator(AppContext)


@click.group("rule")
def rule_group() -> None:
    """Gear rules: run a gear automatically when matching data arrives.

    \b
    File rules fire when a file newly matches their conditions (a new version,
    or metadata that makes it match); session rules fire when prerequisite
    gears completed on a session. The controller evaluates rules every cycle;
    `hpcgear rules evaluate` does it from cron.
    """


@rule_group.command("add")
@click.argument("project", metavar="GROUP/PROJECT")
@click.option("--name", required=True, help="Rule name, unique in the project.")
@click.option("--gear", "gear", required=True, metavar="GEAR[@VERSION]", help="Gear to run.")
@click.option("--auto-update", is_flag=True, help="Follow new enabled versions of the gear.")
@click.option(
    "--when",
    "when",
    multiple=True,
    metavar="COND",
    help="FIELD=VALUE, FIELD!=VALUE, FIELD~REGEX, FIELD? or a YAML mapping; all must hold.",
)
@click.option("--input", "trigger", metavar="NAME", help="Gear input the matching file becomes.")
@click.option(
    "--fixed-input",
    "fixed",
    multiple=True,
    metavar="NAME=PATH/FILE",
    help="A file every job gets, pinned to its current version (repeatable).",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="GEAR[:LABEL]",
    help="Session rule: run once GEAR completed on a session (LABEL: analysis label glob).",
)
@click.option(
    "--require",
    type=click.Choice(["all", "any"]),
    default="all",
    show_default=True,
    help="Session rule: all prerequisites, or any one.",
)
@click.option(
    "--session-input",
    "session_inputs",
    multiple=True,
    metavar="NAME=REGEX",
    help="Session rule: input NAME is the one session (then project) file matching REGEX.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=0,
    show_default=True,
    help="Session rule: new attempts after a failure.",
)
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE", help="Gear config.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Job tag (hpc: the cluster).")
@click.option(
    "--priority",
    type=click.Choice(["low", "medium", "high", "critical"]),
    default="medium",
    show_default=True,
)
@click.option(
    "--destination",
    type=click.Choice(["container", "acquisition", "session", "subject", "project"]),
    default="container",
    show_default=True,
    help="File rule: where jobs run (the file's container or an ancestor).",
)
@click.option("--description", default="", help="Free text.")
@click.option("--disabled", is_flag=True, help="Create the rule disabled.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rule_add(
    app: AppContext,
    project: str,
    name: str,
    gear: str,
    auto_update: bool,
    when: tuple[str, ...],
    trigger: str | None,
    fixed: tuple[str, ...],
    after: tuple[str, ...],
    require: str,
    session_inputs: tuple[str, ...],
    retries: int,
    config: tuple[str, ...],
    tags: tuple[str, ...],
    priority: str,
    destination: str,
    description: str,
    disabled: bool,
    as_json: bool,
) -> None:
    """Add a rule to PROJECT (needs the admin role on it)."""
    from hpcgear.rules.schema import (
        FixedInput,
        Prerequisite,
        RuleSpec,
        check_regex,
        parse_cli_when,
        split_gear,
    )
    from hpcgear.rules.service import rule_to_dict, save_rule

    gear_name, version = split_gear(gear, None)
    prereqs = []
    for item in after:
        g, _, label = item.partition(":")
        split_gear(g, None)
        prereqs.append(Prerequisite(gear=g, analysis_label=label or None))
    found = parse_pairs(session_inputs, "--session-input")
    for k, rx in found.items():
        check_regex(rx, f"--session-input {k}")
    spec = RuleSpec(
        name=name,
        gear=gear_name,
        version=version,
        auto_update=auto_update,
        project=project.strip().strip("/"),
        description=description,
        when=parse_cli_when(when),
        input=trigger,
        fixed_inputs={
            k: FixedInput(path=v) for k, v in parse_pairs(fixed, "--fixed-input").items()
        },
        after=tuple(prereqs),
        require="any" if require == "any" else "all",
        session_inputs=found,
        retries=retries,
        config=parse_pairs(config, "--config"),
        tags=tags,
        priority=priority,
        destination=destination,
        enabled=not disabled,
    )
    actor = app.actor
    sites = site_registry(app)

    def save(s: Session) -> dict[str, Any]:
        res = save_rule(s, actor, spec, create_only=True, coerce_strings=True, sites=sites)
        return rule_to_dict(s, res.rule)

    data = app.db.write(save)
    if as_json:
        app.emit_json(data)
        return
    pin = "latest (auto-update)" if data["auto_update"] else data["version"]
    app.echo(
        f"rule {safe_text(data['project'])}/{data['name']}: {data['kind']} rule running "
        f"{data['gear']} {pin}" + ("" if data["enabled"] else " (disabled)")
    )


@rule_group.command("list")
@click.argument("project", metavar="[GROUP/PROJECT]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rule_list(app: AppContext, project: str | None, as_json: bool) -> None:
    """List rules of PROJECT, or of every project you can read."""
    from hpcgear.rules.service import list_rules, rule_to_dict

    actor = app.actor
    with app.db.session() as s:
        rows = [rule_to_dict(s, r) for r in list_rules(s, actor, project)]
    if as_json:
        app.emit_json(rows)
        return
    if not rows:
        app.note("no rules (hpcgear rule add, or hpcgear rule apply FILE.yaml)")
        return
    app.table(
        [
            [
                safe_text(r["project"]),
                r["name"],
                r["kind"],
                r["gear"] + ("@latest" if r["auto_update"] else f"@{r['version']}"),
                "yes" if r["enabled"] else "no",
                str(r["jobs"]),
                safe_text(
                    r["when"]
                    or (f"after {r['require']}: " + ", ".join(p["gear"] for p in r["after"]))
                ),
            ]
            for r in rows
        ],
        ["PROJECT", "NAME", "KIND", "GEAR", "ENABLED", "JOBS", "WHEN"],
    )


@rule_group.command("show")
@click.argument("ref", metavar="GROUP/PROJECT/NAME")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rule_show(app: AppContext, ref: str, as_json: bool) -> None:
    """Show a rule, as YAML that `hpcgear rule apply` accepts."""
    import yaml

    from hpcgear.rules.service import get_rule_row, rule_to_dict, rule_to_yaml_doc

    actor = app.actor
    with app.db.session() as s:
        _project, row = get_rule_row(s, actor, ref)
        data = rule_to_dict(s, row)
        doc = rule_to_yaml_doc(data, row)
    if as_json:
        app.emit_json(data)
        return
    app.echo(
        f"# rule {safe_text(data['project'])}/{data['name']} (id {data['id']}): "
        f"{data['kind']} rule, owner {data['owner']}, {data['jobs']} job(s) so far"
    )
    if data["when"]:
        app.echo(f"# when: {safe_text(data['when'])}")
    text = yaml.safe_dump({"rules": [doc]}, sort_keys=False, allow_unicode=False)
    app.stdout.write(text)


def _set_enabled(app: AppContext, ref: str, enabled: bool) -> None:
    from hpcgear.rules.service import set_enabled

    actor = app.actor
    app.db.write(lambda s: set_enabled(s, actor, ref, enabled))
    app.echo(f"rule {safe_text(ref)} {'enabled' if enabled else 'disabled'}")


@rule_group.command("enable")
@click.argument("ref", metavar="GROUP/PROJECT/NAME")
@pass_app
def rule_enable(app: AppContext, ref: str) -> None:
    """Enable a rule (it acts on changes from now on)."""
    _set_enabled(app, ref, True)


@rule_group.command("disable")
@click.argument("ref", metavar="GROUP/PROJECT/NAME")
@pass_app
def rule_disable(app: AppContext, ref: str) -> None:
    """Disable a rule (queued jobs stay queued)."""
    _set_enabled(app, ref, False)


@rule_group.command("rm")
@click.argument("ref", metavar="GROUP/PROJECT/NAME")
@pass_app
def rule_rm(app: AppContext, ref: str) -> None:
    """Delete a rule (its jobs stay, still marked with the rule's id)."""
    from hpcgear.rules.service import delete_rule

    actor = app.actor
    rule_id = app.db.write(lambda s: delete_rule(s, actor, ref))
    app.echo(f"rule {safe_text(ref)} (id {rule_id}) deleted")


@rule_group.command("apply")
@click.argument("file", type=click.Path(path_type=Path), metavar="FILE.yaml")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rule_apply(app: AppContext, file: Path, dry_run: bool, as_json: bool) -> None:
    """Create or update the rules in FILE.yaml (all or nothing; applying twice is a no-op)."""
    from hpcgear.rules.schema import load_rules_file
    from hpcgear.rules.service import apply_rules

    specs = load_rules_file(file)
    actor = app.actor
    sites = site_registry(app)

    def apply(s: Session) -> list[Any]:
        found = apply_rules(s, actor, specs, sites=sites)
        if dry_run:
            s.rollback()
        return list(found)

    outcomes = app.db.write(apply)
    rows = [{"project": o.project, "name": o.name, "action": o.action} for o in outcomes]
    if as_json:
        app.emit_json({"dry_run": dry_run, "rules": rows})
        return
    for r in rows:
        verb = f"would be {r['action']}" if dry_run and r["action"] != "unchanged" else r["action"]
        app.echo(f"{safe_text(r['project'])}/{r['name']}: {verb}")


@rule_group.command("test")
@click.argument("ref", metavar="GROUP/PROJECT/NAME")
@click.argument("path", metavar="PATH")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rule_test(app: AppContext, ref: str, path: str, as_json: bool) -> None:
    """Explain whether the rule would fire on PATH (a file, or a session for session rules)."""
    from hpcgear.rules.engine import test_rule

    actor = app.actor
    with app.db.session() as s:
        result = test_rule(s, actor, lambda: site_registry(app), ref, path)
        s.rollback()
    if as_json:
        app.emit_json(result.as_dict())
        return
    for line in result.explanation.lines():
        app.echo(safe_text(line))
    app.echo(
        f"=> rule {safe_text(ref)} {'WOULD' if result.would_fire else 'would NOT'} fire on "
        f"{safe_text(result.target)}"
    )


@click.group("rules")
def rules_group() -> None:
    """Evaluate gear rules (the controller does this every cycle; cron may too)."""


@rules_group.command("evaluate")
@click.option(
    "--since",
    metavar="T",
    help="Re-read changes since T (2h, 7d, or an ISO time) instead of since the last run.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be queued; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rules_evaluate(app: AppContext, since: str | None, dry_run: bool, as_json: bool) -> None:
    """Evaluate rules on new uploads, metadata changes and job completions (site admins).

    Reads only what changed since the last evaluation, commits per batch, and
    may be interrupted and rerun at any time. Nothing is ever queued twice.
    """
    from hpcgear.rules.engine import check_evaluator, evaluate
    from hpcgear.units import parse_since

    when = parse_since(since) if since else None
    actor = app.actor
    with app.db.session() as s:
        check_evaluator(s, actor)
    report = evaluate(app.db, lambda: site_registry(app), since=when, dry_run=dry_run)
    data = report.as_dict()
    if as_json:
        app.emit_json(data)
        return
    verb = "would create" if dry_run else "created"
    app.echo(
        f"read {data['changes_read']} change(s) and {data['job_events_read']} job event(s); "
        f"evaluated {data['files_evaluated']} file(s) and {data['sessions_evaluated']} "
        f"session(s); {verb} {data['jobs_created']} job(s), skipped "
        f"{data['duplicates_skipped']} duplicate(s), {data['guarded']} guarded, "
        f"{data['errors']} error(s), {data['gave_up']} gave up"
    )
    for job in data["jobs"]:
        app.echo(
            f"  {job['id'] or '-':24}  rule {job['rule']}: {job['gear']} on "
            f"{safe_text(job['destination'])} ({safe_text(job['trigger'])})"
        )
    for note in data["notes"]:
        app.echo(f"  note: {safe_text(note)}")
    if data["stopped"]:
        app.note(f"stopped early: {data['stopped']}")
    cur = data["cursor"]
    app.echo(f"cursor: change_log={cur['change_log']} job_events={cur['job_events']}")


@rules_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rules_status(app: AppContext, as_json: bool) -> None:
    """How far rule evaluation has read, and how much is waiting."""
    from hpcgear.rules.engine import evaluation_status

    actor = app.actor
    with app.db.session() as s:
        data = evaluation_status(s, actor)
    if as_json:
        app.emit_json(data)
        return
    app.echo(f"enabled rules: {data['enabled_rules']} ({data['rules']} in total)")
    for name, feed in data["feeds"].items():
        app.echo(
            f"{name}: read up to {feed['position']} of {feed['last']} "
            f"({feed['waiting']} waiting, {feed['gaps']} gap id(s) watched)"
        )
