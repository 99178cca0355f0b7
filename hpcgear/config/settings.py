"""User and daemon settings: where the database and permanent storage live.

Resolution order for the config file: ``--config`` > ``HPCGEAR_CONFIG`` >
``$XDG_CONFIG_HOME/hpcgear/config.yaml`` (default ``~/.config/hpcgear/config.yaml``).
Values inside it are overridden by ``HPCGEAR_DATABASE_URL`` / ``HPCGEAR_STORAGE_ROOT``.
Data defaults live under ``$XDG_DATA_HOME/hpcgear`` (``~/.local/share/hpcgear``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hpcgear.errors import ConfigError, SchemaError

SETTINGS_KEYS: dict[str, str] = {
    "database_url": "SQLAlchemy URL; sqlite:///PATH (default) or postgresql://...",
    "storage_root": "directory of the permanent object store",
    "sites": "list of site config YAML files this instance knows",
    "default_site": "site name used for jobs whose tags route nowhere else",
    "scratch_root": "scratch directory for jobs run by the embedded local site",
    "image_cache": "SIF cache directory of the embedded local site",
    "apptainer": "apptainer/singularity executable of the embedded local site (default: PATH)",
    "api_url": "address of this instance's HTTP API (`hpcgear serve`), e.g. http://host:8080",
    "api_key": "your API key (`hpcgear login KEY`); when set, commands go through the API",
}


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hpcgear"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "hpcgear"


def default_config_path() -> Path:
    return config_home() / "config.yaml"


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path
    database_url: str
    storage_root: Path
    scratch_root: Path
    image_cache: Path = Path("/nonexistent")
    apptainer: str | None = None
    sites: tuple[Path, ...] = ()
    default_site: str | None = None
    api_url: str | None = None
    api_key: str | None = None
    exists: bool = False  # whether the config file was found
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> where it came from

    def to_dict(self) -> dict[str, Any]:
        return {
            "database_url": self.database_url,
            "storage_root": str(self.storage_root),
            "scratch_root": str(self.scratch_root),
            "image_cache": str(self.image_cache),
            "apptainer": self.apptainer,
            "sites": [str(p) for p in self.sites],
            "default_site": self.default_site,
            "api_url": self.api_url,
            "api_key": self.api_key,
        }


def default_settings(config_path: Path) -> Settings:
    data = data_home()
    return Settings(
        config_path=config_path,
        database_url=f"sqlite:///{data / 'hpcgear.db'}",
        storage_root=data / "storage",
        scratch_root=data / "scratch",
        image_cache=data / "images",
    )


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HPCGEAR_CONFIG")
    if env:
        return Path(env).expanduser()
    return default_config_path()


def load_settings(
    explicit: str | os.PathLike[str] | None = None, *, allow_missing: bool = False
) -> Settings:
    """Read the config file (if any) and apply environment overrides."""
    path = resolve_config_path(explicit)
    settings = default_settings(path)
    sources: dict[str, str] = {}
    if path.exists():
        raw = _read_yaml(path)
        settings = _apply(settings, raw, path)
        sources.update({k: str(path) for k in raw})
        settings = replace(settings, exists=True)
    elif explicit and not allow_missing:
        raise ConfigError(
            f"config file {path} does not exist",
            "run `hpcgear init --config PATH` to create it, or fix the path",
        )
    env_url = os.environ.get("HPCGEAR_DATABASE_URL")
    if env_url:
        settings = replace(settings, database_url=env_url)
        sources["database_url"] = "HPCGEAR_DATABASE_URL"
    env_apptainer = os.environ.get("HPCGEAR_APPTAINER")
    if env_apptainer and settings.apptainer is None:
        settings = replace(settings, apptainer=env_apptainer)
        sources["apptainer"] = "HPCGEAR_APPTAINER"
    env_storage = os.environ.get("HPCGEAR_STORAGE_ROOT")
    if env_storage:
        settings = replace(settings, storage_root=Path(env_storage).expanduser())
        sources["storage_root"] = "HPCGEAR_STORAGE_ROOT"
    env_key = os.environ.get("HPCGEAR_API_KEY")
    if env_key:
        settings = replace(settings, api_key=env_key.strip())
        sources["api_key"] = "HPCGEAR_API_KEY"
    return replace(settings, sources=sources)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}", "check the path and its permissions"
        ) from exc
    from hpcgear.config.yamlload import decode_utf8, unreadable_char

    text = decode_utf8(data, str(path))

    bad = unreadable_char(text)
    if bad is not None:
        raise SchemaError(
            f"{path}:{bad[0]}: contains the control character {bad[1]} (not allowed in YAML)",
            "remove it from the config file",
        )
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise SchemaError(
            f"{path}: the YAML is nested too deeply to read", "the config is a flat mapping"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SchemaError(
            f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})", "fix the YAML syntax"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SchemaError(
            f"{path}: expected a mapping of settings, got {type(data).__name__}",
            f"valid keys: {', '.join(SETTINGS_KEYS)}",
        )
    return data


def _apply(settings: Settings, raw: Mapping[str, Any], path: Path) -> Settings:
    unknown = sorted(set(raw) - set(SETTINGS_KEYS))
    if unknown:
        raise SchemaError(
            f"{path}: unknown setting(s) {', '.join(map(repr, unknown))}",
            f"valid keys: {', '.join(SETTINGS_KEYS)}",
        )
    out = settings
    base = path.parent
    if "database_url" in raw:
        if not isinstance(raw["database_url"], str) or not raw["database_url"].strip():
            raise SchemaError(
                f"{path}: database_url must be a non-empty string",
                "e.g. sqlite:////var/lib/hpcgear/hpcgear.db",
            )
        out = replace(out, database_url=raw["database_url"])
    for key in ("storage_root", "scratch_root", "image_cache"):
        if key in raw:
            val = raw[key]
            if not isinstance(val, str) or not val:
                raise SchemaError(f"{path}: {key} must be a directory path", SETTINGS_KEYS[key])
            resolved = base / Path(val).expanduser()
            if key == "storage_root":
                out = replace(out, storage_root=resolved)
            elif key == "image_cache":
                out = replace(out, image_cache=resolved)
            else:
                out = replace(out, scratch_root=resolved)
    if "apptainer" in raw:
        if raw["apptainer"] is not None and not isinstance(raw["apptainer"], str):
            raise SchemaError(
                f"{path}: apptainer must be an executable path",
                "e.g. apptainer: /usr/bin/apptainer",
            )
        out = replace(out, apptainer=raw["apptainer"])
    if "sites" in raw:
        sites = raw["sites"] or []
        if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
            raise SchemaError(
                f"{path}: sites must be a list of YAML file paths",
                "e.g. sites: [/etc/hpcgear/sites/alpine.yaml]",
            )
        out = replace(out, sites=tuple(base / Path(s).expanduser() for s in sites))
    if "default_site" in raw:
        if raw["default_site"] is not None and not isinstance(raw["default_site"], str):
            raise SchemaError(f"{path}: default_site must be a site name", "e.g. alpine")
        out = replace(out, default_site=raw["default_site"])
    for key in ("api_url", "api_key"):
        if key in raw:
            val = raw[key]
            if val is not None and (not isinstance(val, str) or not val.strip()):
                raise SchemaError(f"{path}: {key} must be a non-empty string", SETTINGS_KEYS[key])
            text = val.strip() if isinstance(val, str) else None
            out = replace(out, api_url=text) if key == "api_url" else replace(out, api_key=text)
    return out


def write_settings(settings: Settings) -> None:
    """Write the config file atomically (mode 600: it may hold a database password)."""
    path = settings.config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = settings.to_dict()
    if not data["sites"]:
        del data["sites"]
    for key in ("default_site", "apptainer", "api_url", "api_key"):
        if data[key] is None:
            del data[key]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_setting(config_path: Path, key: str, value: str | None) -> None:
    """Set (or with None remove) one key of the config file, keeping the others (mode 600)."""
    if key not in SETTINGS_KEYS:
        raise ConfigError(f"unknown setting {key!r}", f"valid keys: {', '.join(SETTINGS_KEYS)}")
    path = Path(config_path)
    raw = _read_yaml(path) if path.exists() else {}
    if value is None:
        raw.pop(key, None)
    else:
        raw[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
