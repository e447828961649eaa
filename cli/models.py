"""``colorizer models``: the model store from the command line: list versions and labels, move a
label, delete one, apply retention. Acts on the store in ``COLORIZER_DATA_DIR`` directly, the
same files the API reads: every replica following a label switches at its next look."""

from __future__ import annotations

import click

from cli.main import load_settings, main, setup_logging
from common.labels import BadLabel, Labels, LabelsUnreadable, UnknownLabel, prune_versions
from common.store import DEFAULT_VERSION, BrokenVersion, UnknownVersion, Version, VersionStore, version_key


def _store() -> tuple[VersionStore, Labels]:
    settings = load_settings()
    setup_logging(settings)
    from models.store import packaged_default

    store = VersionStore(settings.models_dir, packaged_default(settings.default_model_dir))
    return store, Labels(store.root)


@main.group("models")
def models() -> None:
    """List the model versions and labels; move, delete labels; apply retention; retry a version
    a replica refused."""


@models.command("list")
def list_models() -> None:
    """Every version (the packaged default first) with its labels, and the serving policy."""
    store, labels = _store()
    try:
        by_version: dict[Version, list[str]] = {}
        for name, version in labels.read().items():
            by_version.setdefault(version, []).append(name)
    except LabelsUnreadable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"serving policy (COLORIZER_SERVE): {load_settings().serve}")
    rows: list[Version] = [DEFAULT_VERSION] if store.has_default() else []
    rows += store.versions()
    for version in rows:
        names = ", ".join(sorted(by_version.get(version, [])))
        click.echo(f"{version!s:>10}  {names}")


@models.command("label")
@click.argument("name")
@click.argument("version")
def label(name: str, version: str) -> None:
    """Point label NAME at VERSION (a number or "default"), after loading it to check it serves."""
    store, labels = _store()
    from models.store import ModelStore

    try:
        target = version_key(version)
        ModelStore(store.root, store.default_dir).load(target)  # refuses a version that cannot load
        previous = labels.set(name, target)
    except (BadLabel, UnknownVersion, BrokenVersion, LabelsUnreadable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"label {name!r} -> version {target}" + (f" (was {previous})" if previous is not None else ""))


@models.command("unlabel")
@click.argument("name")
def unlabel(name: str) -> None:
    """Delete label NAME (replicas that follow it keep serving what they serve)."""
    _, labels = _store()
    try:
        previous = labels.remove(name)
    except (BadLabel, UnknownLabel, LabelsUnreadable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"label {name!r} deleted (it pointed at version {previous})")


@models.command("prune")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="Versions to keep besides the labelled and pinned ones [default: COLORIZER_KEEP_VERSIONS].",
)
def prune(keep: int | None) -> None:
    """Delete every version but the newest KEEP, the labelled ones and the one COLORIZER_SERVE pins."""
    store, _ = _store()
    settings = load_settings()
    keep = keep or settings.keep_versions
    if keep < 1:
        raise click.ClickException("say how many versions to keep: --keep N (or COLORIZER_KEEP_VERSIONS)")
    try:
        removed = prune_versions(store, keep, settings.policy.pinned)
    except LabelsUnreadable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted versions {removed}" if removed else "nothing to delete")


@models.command("retry")
@click.argument("version")
def retry(version: str) -> None:
    """Forget that a replica refused VERSION, so every replica tries it again (a refusal also ends
    by itself when the version's files change)."""
    store, _ = _store()
    from common.refusals import Refusals

    try:
        key = version_key(version)
    except UnknownVersion as exc:
        raise click.ClickException(str(exc)) from None
    if not Refusals(store.root).forget(key):
        raise click.ClickException(f"no replica refused version {key}")
    click.echo(f"version {key} will be tried again")
