"""What users set: every option of ``build`` (and ``summary``) as data, one list feeding the click
options, the ``tdx-image.toml`` config-file keys, build.json's inputs and README's options table.

The config file uses click's own mechanism: it becomes the command's ``default_map``, so every
configurable option (``package = ["jq"]``, ``ssh-key = "id.pub"``, ``mirror = "..."``) can be set
there and the command line (and environment variables) still win.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..core.defaults import DEFAULT_BOOT_TIMEOUT_S, DEFAULT_CACHE_DIR
from .compose import VERITY, WRITABLE, Customisation
from .sbom import parse_supplier
from ..core.inputs import Seconds, UserPath, read_text
from ..core.redact import url_passwords
from ..distros.clouds import CLOUDS, QEMU
from ..distros.repos import check_url, parse_repo_option
from ..distros.targets import TARGETS, Target

CONFIG_NAME = "tdx-image.toml"
CONFIG_MAX_BYTES = 2**20
IMAGE_FORMATS = ("qcow2", "raw", "vmdk")
MIN_SIZE_MIB = 1024
# A guard against a unit or digits too many (8000G for 8G); grow a disk after the build.
MAX_SIZE_MIB = 16 * 2**20
# Where a setting's value goes: the BuildRequest field of its name, the Customisation field of
# its name (applied to the composed description), or the verb itself (how this one run goes).
REQUEST, CUSTOM, COMMAND = "request", "customisation", "command"


class TargetName(click.ParamType):
    """A target's name, completed in the shell (get_target says which exist)."""

    name = "target"

    def shell_complete(self, ctx, param, incomplete):
        return [click.shell_completion.CompletionItem(name) for name in TARGETS
                if name.startswith(incomplete)]


class MirrorURL(click.ParamType):
    name = "url"

    def convert(self, value, param, ctx):
        return check_url("--mirror", value)


class RepositoryOption(click.ParamType):
    """``URL`` (rpm-md) or ``URL,SUITE[,COMPONENTS]`` (apt), to a Repository."""

    name = "repository"
    # TDX_IMAGE_REPOS holds one value per line (a value may hold spaces: 'main contrib').
    envvar_list_splitter = "\n"

    def convert(self, value, param, ctx):
        return value if not isinstance(value, str) else parse_repo_option(value)


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
        # A bare number (the config file's size = 8) is GiB, as on the command line.
        match = self.PATTERN.fullmatch(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a size (e.g. 8G or 6144M)", param, ctx)
        mib = int(match.group(1)) * (1 if match.group(2).upper() == "M" else 1024)
        if mib < MIN_SIZE_MIB:
            self.fail(f"{value} is too small: a TDX guest disk needs at least {MIN_SIZE_MIB}M",
                      param, ctx)
        if mib > MAX_SIZE_MIB:
            self.fail(f"{value} is too large: at most {MAX_SIZE_MIB // 2**20}T", param, ctx)
        return mib


class SupplierOption(click.ParamType):
    """``Name <e-mail>`` or ``Name <https://url>``, as the SBOMs name the image's supplier."""

    name = "supplier"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or parse_supplier(value) is None:
            self.fail(f"{value!r} is not 'Name <e-mail>' or 'Name <https://url>'", param, ctx)
        return value


class UserName(click.ParamType):
    """A user to create for SSH logins: never one the system's packages own (their home, shell
    and files belong to a service; a key for ``daemon`` or ``sshd`` is a backdoor, not a login)."""

    name = "user"
    PATTERN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
    # Debian's base-passwd and the users packages of both targets create (sshd, systemd, dbus,
    # apt, tpm2-tss, polkit, chrony); names with "_" or "systemd-" are services' by convention.
    SYSTEM_USERS = frozenset(["daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "sshd", "messagebus", "polkitd", "tss", "chrony", "ntp", "dnsmasq", "avahi", "statd", "rpc", "uuidd", "syslog", "lxd", "postfix", "dhcpcd"])

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not self.PATTERN.fullmatch(value):
            self.fail(f"{value!r} is not a user name (lower case, at most 32 characters)",
                      param, ctx)
        if value in self.SYSTEM_USERS or value.startswith(("_", "systemd-")):
            self.fail(f"{value!r} is a system user of the image, not a login",
                      param, ctx)
        return value


@dataclass(frozen=True)
class Setting:
    option: str  # the command-line option ("--size"), or the argument's metavar ("TARGET")
    field: str  # the click parameter, named after the field it fills (see REQUEST, CUSTOM)
    help: str
    type: click.ParamType | None = None
    part: str = REQUEST
    metavar: str | None = None
    multiple: bool = False
    flag: bool = False
    default: Any = None
    shown_default: str | None = None  # the default in words when it is not a value
    envvar: str | None = None
    configurable: bool = True  # a key of the config file (never: how to print, --force)
    recorded: bool = False  # build.json's inputs carry it, under its field name
    summary: bool = True  # `summary` takes it as `build` does
    callback: Callable | None = None  # an eager option processed before the others (--config)

    @property
    def toml_types(self) -> tuple:
        """What the config file may hold for it: true/false, a number where one is meant, else
        text (of one value, or of each in a list)."""
        if self.flag:
            return (bool,)
        return (str, int, float) if isinstance(self.type, Seconds | DiskSize) else (str,)

    @property
    def toml_type_name(self) -> str:
        names: dict[tuple, str] = {(bool,): "true or false", (str,): "text (in quotes)"}
        return names.get(self.toml_types, "a number or text")

    @property
    def key(self) -> str:
        """The config-file key: the option without "--" (the argument's parameter name)."""
        return self.option[2:] if self.option.startswith("--") else self.field

    @property
    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        return "" if self.default in (None, False) else f"{self.default:g}" if isinstance(
            self.default, float) else str(self.default)

    def parameter(self) -> Callable:
        """The click decorator for this setting."""
        if not self.option.startswith("--"):
            return click.argument(self.field, metavar=self.option, type=self.type)
        return click.option(
            self.option, self.field, type=self.type, metavar=self.metavar, help=self.help,
            multiple=self.multiple, is_flag=self.flag, envvar=self.envvar,
            default=bool(self.default) if self.flag else self.default,
            show_default=self.shown_default or self.default not in (None, False), callback=self.callback,
            is_eager=self.callback is not None, expose_value=self.callback is None)


def load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Make the config file the command's default_map (options given on the line still win)."""
    path = value or (Path(CONFIG_NAME) if Path(CONFIG_NAME).is_file() else None)
    if path is None:
        return
    try:
        data = tomllib.loads(read_text(path, "--config", CONFIG_MAX_BYTES))
    except tomllib.TOMLDecodeError as error:
        raise click.BadParameter(f"cannot read {path}: {error}", ctx, param)
    taken = {p.name for p in ctx.command.params}
    by_key = {s.key: s for s in SETTINGS if s.configurable and s.field in taken}
    defaults = {}
    for key, raw in data.items():
        setting = by_key.get(key)
        if setting is None:
            raise click.BadParameter(
                f"{path}: unknown setting {key!r} (known: {', '.join(sorted(by_key))})", ctx, param)
        if setting.multiple and isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, dict) or isinstance(raw, list) != setting.multiple:
            raise click.BadParameter(
                f"{path}: {key} must be {'a list' if setting.multiple else 'one value'}", ctx, param)
        for one in raw if isinstance(raw, list) else [raw]:
            if not isinstance(one, setting.toml_types) or isinstance(one, bool) != setting.flag:
                raise click.BadParameter(
                    f"{path}: {key} = {one!r} is not {setting.toml_type_name}", ctx, param)
        if isinstance(setting.type, click.Path):  # relative to the file, not the current directory
            raw = [_beside(path, v) for v in raw] if isinstance(raw, list) else _beside(path, raw)
        defaults[setting.field] = raw
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["tdx_image.config"] = path


def _beside(config: Path, value) -> str:
    return str(config.parent / Path(str(value)).expanduser())


FILE = UserPath(dir_okay=False, path_type=Path)
DIRECTORY = UserPath(file_okay=False, path_type=Path, resolve_path=True)

SETTINGS = (
    Setting("TARGET", "target", "What to build: debian, leap or sles.", TargetName()),
    Setting("--release", "release", "The distribution release: leap 16.0 (default), 15.6 or "
            "15.5; sles 16.0 (default), 15-SP7, 15-SP6 or 15-SP5; debian 13 (default) or 12.  A "
            "release past SUSE's general support builds with a warning.", metavar="RELEASE"),
    Setting("--ltss", "ltss", "SLES 15-SP5/15-SP6: add the LTSS update repository (an RMT's "
            "mirror of it, or the registered host's LTSS extension).", flag=True, recorded=True),
    Setting("--container", "container", "Build inside the target's own container image (podman "
            "or docker): how Leap and SLES are built on a non-SUSE host.", part=COMMAND, flag=True),
    Setting("--container-image", "container_image", "The container image for --container.",
            part=COMMAND, metavar="IMAGE", shown_default="openSUSE Leap of the release's "
            "generation (sles too: 15.6 or 16.0); debian: localhost/tdx-image-debian:12 from containers/make-debian-12-image"),
    Setting("--out", "out_dir", "Where the artifacts are published.",
            UserPath(file_okay=False, path_type=Path), metavar="DIR", shown_default="out/TARGET"),
    Setting("--mirror", "mirror", "Base URL of the distribution's repositories (Debian: the "
            "archive, its -security twin is used too; Leap: a download.opensuse.org mirror; SLES: "
            "an RMT/SMT or SCC base).  Or set TDX_IMAGE_MIRROR, which keeps a login in the URL off "
            "the command line.", MirrorURL(), metavar="URL", recorded=True, envvar="TDX_IMAGE_MIRROR",
            shown_default="Debian from the host's apt sources, Leap download.opensuse.org, SLES "
            "the registered host's repositories"),
    Setting("--repo", "extra_repositories", "Add a repository: URL alone is rpm-md; with SUITE it "
            "is an apt repository (repeatable).  Or set TDX_IMAGE_REPOS, one value per line.",
            RepositoryOption(), metavar="URL[,SUITE[,COMPONENTS]]", multiple=True,
            envvar="TDX_IMAGE_REPOS"),
    Setting("--credentials", "credentials_file", "Repository credentials file (username=/password= "
            "lines, as SUSEConnect's SCCcredentials, mode 0600); or set TDX_IMAGE_REPO_USER and "
            "TDX_IMAGE_REPO_PASSWORD.", FILE, metavar="FILE"),
    Setting("--signing-key", "signing_keys", "Trust this repository signing key (repeatable).",
            UserPath(dir_okay=False, exists=True, path_type=Path, resolve_path=True),
            metavar="FILE", multiple=True, recorded=True),
    Setting("--cache-dir", "cache_dir", "Package cache shared by all builds (or set "
            "TDX_IMAGE_CACHE_DIR).", DIRECTORY, metavar="DIR", default=DEFAULT_CACHE_DIR,
            envvar="TDX_IMAGE_CACHE_DIR"),
    Setting("--boot-test", "boot_test", "Boot the image in QEMU after validation.", flag=True),
    Setting("--boot-timeout", "boot_timeout", "Seconds the boot test waits for the guest's "
            "self-check (as `boot --timeout`).", Seconds(1), metavar="SECONDS",
            default=DEFAULT_BOOT_TIMEOUT_S),
    Setting("--no-incremental", "no_incremental", "Bootstrap and install packages afresh instead "
            "of reusing the prepared root cached for the same packages, repositories and "
            "repository metadata.", flag=True),
    Setting("--dry-run", "dry_run", "Compose and check the description, print the kiwi-ng "
            "command, build nothing.", part=COMMAND, flag=True, configurable=False, summary=False),
    Setting("--force", "force", "Replace --out (and OUT.failed) even if they hold files tdx-image "
            "did not write.  Never: the current directory, /, system directories, $HOME (and sudo's "
            "user's), the project's directories, the package cache, the lock directory.",
            flag=True, configurable=False),
    Setting("--config", "config", "Settings file (TOML; keys are option names).", FILE,
            part=COMMAND, metavar="FILE", shown_default=f"./{CONFIG_NAME} if present",
            configurable=False, callback=load_config),
    Setting("--supplier", "supplier", "Who builds and supplies the image, named as its supplier "
            "and the author of its SBOMs (BSI TR-03183-2 asks for a contact).", SupplierOption(),
            metavar="'NAME <E-MAIL|URL>'", recorded=True, envvar="TDX_IMAGE_SUPPLIER",
            shown_default="none: NOASSERTION"),
    Setting("--builder-id", "builder_id", "The builder named in the provenance (SLSA's "
            "builder.id), e.g. the CI workflow's URL.", metavar="URI", recorded=True,
            envvar="TDX_IMAGE_BUILDER_ID", shown_default="urn:tdx-image:builder:host:HOSTNAME"),
    Setting("--package", "packages", "Add this package to the image (repeatable).", PackageName(),
            part=CUSTOM, metavar="NAME", multiple=True, recorded=True),
    Setting("--size", "size_mib", "Disk size, e.g. 8G or 6144M.", DiskSize(), part=CUSTOM,
            metavar="SIZE", shown_default="the description's: 4G", recorded=True),
    Setting("--format", "image_format", "Disk image format.", click.Choice(IMAGE_FORMATS),
            part=CUSTOM, metavar="|".join(IMAGE_FORMATS), shown_default="qcow2", recorded=True),
    Setting("--cloud", "cloud", "Where the image runs: qemu (a TDX host of your own), gcp (a "
            "Google Cloud Confidential VM: gce tar.gz, NVMe and gVNIC drivers) or azure (an Azure "
            "confidential VM: fixed VHD, Hyper-V drivers); gcp and azure add cloud-init with the "
            "cloud's datasource alone and decide the format.", click.Choice(tuple(CLOUDS)),
            part=CUSTOM, metavar="|".join(CLOUDS), default=QEMU.name, recorded=True),
    Setting("--ssh-key", "ssh_key", "Authorize this OpenSSH public key (for --ssh-user).", FILE,
            part=CUSTOM, metavar="FILE", recorded=True),
    Setting("--ssh-user", "ssh_user", "The user --ssh-key is for, created in the image without a "
            "password.", UserName(), part=CUSTOM, metavar="NAME", shown_default="root",
            recorded=True),
    Setting("--root", "root", "The root file system: verity (read-only, dm-verity; its root hash on the "
            "measured UKI command line; writes go to a tmpfs, nothing persists) or writable (an ext4 "
            "root the host can modify between boots).", click.Choice((VERITY, WRITABLE)), part=CUSTOM,
            metavar="verity|writable", shown_default="verity on debian 13, leap 16.0 and sles 16.0, else writable", recorded=True),
    Setting("--progress", "progress_format", "How the build reports its phases on stderr: auto (a "
            "status line on a terminal, a line per phase otherwise) or json (one JSON object per "
            "event and line).", click.Choice(("auto", "json")), part=COMMAND, metavar="auto|json",
            default="auto", configurable=False, summary=False),
    Setting("--json", "as_json", "Print the result as JSON on stdout.", part=COMMAND, flag=True,
            configurable=False),
)
BY_FIELD = {setting.field: setting for setting in SETTINGS}


def options(command):
    """Give ``command`` every setting as its argument or option, in the list's order."""
    for setting in reversed(SETTINGS):
        command = setting.parameter()(command)
    return command


def customisation(values: dict, target: Target) -> Customisation:
    """The customisation settings among ``values`` (the options' values by field), with the
    target's default root."""
    chosen = {s.field: values[s.field] for s in SETTINGS
              if s.part == CUSTOM and values[s.field] not in (None, ())}
    if "ssh_user" in chosen and "ssh_key" not in chosen:
        raise click.BadParameter("--ssh-user needs --ssh-key", param_hint="--ssh-user")
    chosen["root"] = target.root_mode(chosen.get("root"))
    return Customisation(**chosen)


def plain(value):
    """A setting's value as JSON has it: paths as text, sequences as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value


def recorded(request) -> dict:
    """build.json's and the provenance's inputs from ``request`` (a BuildRequest): each recorded
    setting's value, a password in a URL (--mirror) shown as ***."""
    values = {s.field: plain(getattr(request.custom if s.part == CUSTOM else request, s.field))
              for s in SETTINGS if s.recorded}
    return {field: url_passwords(value) if isinstance(value, str) else value
            for field, value in values.items()}


def arguments(custom: Customisation) -> list[str]:
    """The command-line options that give ``custom`` again (paths absolute), e.g. for the build
    that runs inside a container."""
    default, words = Customisation(), []
    for setting in (s for s in SETTINGS if s.part == CUSTOM):
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


def sources(ctx: click.Context) -> dict[str, str]:
    """Where each parameter's value came from: the command line, the environment, the config
    file (named), or the default."""
    config = ctx.meta.get("tdx_image.config")
    names: dict[ParameterSource | None, str] = {
        ParameterSource.COMMANDLINE: "command line", ParameterSource.ENVIRONMENT: "environment",
        ParameterSource.DEFAULT_MAP: str(config), ParameterSource.DEFAULT: "default"}
    return {p.name: names.get(ctx.get_parameter_source(p.name), "default")
            for p in ctx.command.params if p.name}


def readme_table() -> str:
    """README's table of build options (tests/test_settings.py checks README has it)."""
    rows = ["| option | config-file key | default | what it does |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        option = s.option if s.flag or not s.option.startswith("--") else f"{s.option} {s.metavar}"
        cells = (f"`{option}`", f"`{s.key}`" if s.configurable else "(not in the file)",
                 s.default_text, s.help)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"
