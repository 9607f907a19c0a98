"""What users set without editing the repository: the customisation settings of ``build`` (one
list feeding the click options, the config-file keys and build.json's inputs) and the
``tdx-image.toml`` config file.

The config file uses click's own mechanism: it becomes the command's ``default_map``, so every
``build`` option (``package = ["jq"]``, ``ssh-key = "id.pub"``, ``mirror = "..."``) can be set
there and the command line (and environment variables) still win.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from .compose import Customisation

CONFIG_NAME = "tdx-image.toml"
IMAGE_FORMATS = ("qcow2", "raw", "vmdk")
# Options that describe one invocation rather than the image: never read from a config file
# (--force least of all: replacing what is not ours must be asked for each time).
NOT_CONFIGURABLE = ("config", "dry_run", "as_json", "help", "force")
MIN_SIZE_MIB = 1024


class PackageName(click.ParamType):
    """A Debian or RPM package name (no versions, globs or options)."""

    name = "package"
    PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not self.PATTERN.fullmatch(value):
            self.fail(f"{value!r} is not a package name (letters, digits, + . _ -)", param, ctx)
        return value


class DiskSize(click.ParamType):
    """``8G``, ``6144M`` or a number of GiB, to MiB (KIWI's ``<size unit="M">``)."""

    name = "size"
    PATTERN = re.compile(r"(\d+)\s*([MG]?)i?B?", re.IGNORECASE)

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = self.PATTERN.fullmatch(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a size (e.g. 8G or 6144M)", param, ctx)
        mib = int(match.group(1)) * (1 if match.group(2).upper() == "M" else 1024)
        if mib < MIN_SIZE_MIB:
            self.fail(f"{value} is too small: a TDX guest disk needs at least {MIN_SIZE_MIB}M",
                      param, ctx)
        return mib


class UserName(click.ParamType):
    name = "user"
    PATTERN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not self.PATTERN.fullmatch(value):
            self.fail(f"{value!r} is not a user name (lower case, at most 32 characters)",
                      param, ctx)
        return value


@dataclass(frozen=True)
class Setting:
    option: str  # the command-line option; without "--" it is the config-file key
    field: str  # the Customisation field it fills
    help: str
    type: click.ParamType
    multiple: bool = False
    metavar: str | None = None


SETTINGS = (
    Setting("--package", "packages", "Add this package to the image (repeatable).",
            PackageName(), multiple=True, metavar="NAME"),
    Setting("--size", "size_mib", "Disk size, e.g. 8G or 6144M.  [default: the description's]",
            DiskSize()),
    Setting("--format", "image_format", "Disk image format.  [default: qcow2]",
            click.Choice(IMAGE_FORMATS)),
    Setting("--ssh-key", "ssh_key", "Authorize this OpenSSH public key (for --ssh-user).",
            click.Path(dir_okay=False, path_type=Path)),
    Setting("--ssh-user", "ssh_user", "The user --ssh-key is for, created in the image without "
            "a password.  [default: root]", UserName()),
)


def customised(command):
    """A callback receiving the settings' option values as one ``custom`` Customisation."""

    @functools.wraps(command)
    def with_customisation(*args, **values):
        chosen = {s.field: values.pop(s.field) for s in SETTINGS}
        chosen = {field: value for field, value in chosen.items() if value not in (None, ())}
        if "ssh_user" in chosen and "ssh_key" not in chosen:
            raise click.BadParameter("--ssh-user needs --ssh-key", param_hint="--ssh-user")
        return command(*args, custom=Customisation(**{k: tuple(v) if k == "packages" else v
                                                      for k, v in chosen.items()}), **values)

    return with_customisation


def options(command):
    """Add the settings' options and ``--config`` to a command; it receives ``custom``."""
    with_customisation = customised(command)
    for setting in reversed(SETTINGS):
        with_customisation = click.option(setting.option, setting.field, type=setting.type,
                                          multiple=setting.multiple, metavar=setting.metavar,
                                          help=setting.help)(with_customisation)
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=load_config,
                        help=f"Settings file (TOML; keys are option names).  "
                             f"[default: ./{CONFIG_NAME} if present]")(with_customisation)


def arguments(custom: Customisation) -> list[str]:
    """The command-line options that give ``custom`` again (paths absolute), e.g. for the build
    that runs inside a container."""
    default, words = Customisation(), []
    for setting in SETTINGS:
        value = getattr(custom, setting.field)
        if value == getattr(default, setting.field):
            continue
        for one in value if setting.multiple else [value]:
            if isinstance(one, Path):
                one = one.resolve()
            elif setting.field == "size_mib":
                one = f"{one}M"
            words += [setting.option, str(one)]
    return words


def load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Make the config file the command's default_map (options given on the line still win)."""
    path = value or (Path(CONFIG_NAME) if Path(CONFIG_NAME).is_file() else None)
    if path is None:
        return
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}", ctx, param)
    # Keys are the long option names without "--" (and an argument's name, e.g. target).
    by_key = {key: p for p in ctx.command.params if p.name not in NOT_CONFIGURABLE
              for key in ([opt[2:] for opt in p.opts if opt.startswith("--")]
                          if isinstance(p, click.Option) else [p.name])}
    defaults = {}
    for key, raw in data.items():
        target = by_key.get(key)
        if target is None:
            raise click.BadParameter(
                f"{path}: unknown setting {key!r} (known: "
                f"{', '.join(sorted(by_key))})", ctx, param)
        multiple = getattr(target, "multiple", False)
        if multiple and isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, dict) or isinstance(raw, list) != multiple:
            raise click.BadParameter(f"{path}: {key} must be {'a list' if multiple else 'one value'}",
                                     ctx, param)
        if isinstance(target.type, click.Path):  # relative to the file, not the current directory
            raw = [_beside(path, v) for v in raw] if isinstance(raw, list) else _beside(path, raw)
        defaults[target.name] = raw
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["tdx_image.config"] = path


def _beside(config: Path, value) -> str:
    return str(config.parent / Path(str(value)).expanduser())


def sources(ctx: click.Context) -> dict[str, str]:
    """Where each parameter's value came from: the command line, the environment, the config
    file (named), or the default."""
    config = ctx.meta.get("tdx_image.config")
    names: dict[ParameterSource | None, str] = {ParameterSource.COMMANDLINE: "command line", ParameterSource.ENVIRONMENT: "environment",
             ParameterSource.DEFAULT_MAP: str(config), ParameterSource.DEFAULT: "default"}
    return {p.name: names.get(ctx.get_parameter_source(p.name), "default") for p in ctx.command.params}
