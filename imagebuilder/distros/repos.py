"""Package repositories: what KIWI is given, where Debian mirrors come from, credentials.

Repositories never live in the KIWI descriptions: the driver passes them with
``--ignore-repos --add-repo`` (the way KIWI's own build tests point descriptions at mirrors),
so a mirror host is never written into the project and the user can swap or add repositories
without editing XML.
"""

from __future__ import annotations

import base64
import configparser
import glob
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import CredentialsError, InputError, RepositoryError
from ..core.inputs import read_text

APT_SOURCES = "/etc/apt/sources.list"
# Where zypper's configuration lives: "/" on a SUSE host; the --container path mounts the
# host's /etc/zypp elsewhere and says so here.  Tests point it at sample files.
ZYPP_ROOT_ENV = "TDX_IMAGE_ZYPP_ROOT"
APT_SOURCES_DIR = "/etc/apt/sources.list.d"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Where a SUSE system keeps the distribution's package signing keys (openSUSE-build-key,
# suse-build-key: gpg-pubkey-*.asc), on a SUSE build host and in the Leap builder containers.
SUSE_KEYS_DIR = Path("/usr/lib/rpm/gnupg/keys")
USER_VARIABLE, PASSWORD_VARIABLE = "TDX_IMAGE_REPO_USER", "TDX_IMAGE_REPO_PASSWORD"
CREDENTIALS_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def secrets(self) -> list[str]:
        """Strings that must never reach a log: the password as given and as URLs quote it."""
        return sorted({self.password, urllib.parse.quote(self.password, safe=""),
                       f"{self.username}:{self.password}"} - {""})


@dataclass(frozen=True)
class Repository:
    alias: str
    url: str
    type: str  # KIWI repository type: "apt-deb" or "rpm-md"
    distribution: str = ""  # apt suite, e.g. "bookworm-security"
    components: str = ""  # apt components, space separated
    signing_keys: tuple[str, ...] = ()  # absolute paths of keys to trust
    gpgcheck: bool = True
    authenticated: bool = False  # send the build's repository credentials
    # A registered SLES host's repositories: SCC's access token (the URL's query, a secret kept
    # out of ``url`` so that ``url`` may be logged) or zypper's credentials file, read.
    token: str = ""
    credentials: Credentials | None = field(default=None, repr=False)

    def __post_init__(self):
        if "," in self.full_url:
            # KIWI splits --add-repo on commas.
            raise InputError(f"repository URL must not contain a comma: {self.url}")

    @property
    def full_url(self) -> str:
        return f"{self.url}?{self.token}" if self.token else self.url

    def kiwi_add_repo(self) -> str:
        """The value of KIWI's --add-repo: source,type,alias,priority,imageinclude,
        package_gpgcheck,{keys},components,distribution,repo_gpgcheck,sourcetype."""
        keys = "{" + ";".join(f"file://{key}" for key in self.signing_keys) + "}" if self.signing_keys else ""
        check = "true" if self.gpgcheck else "false"
        # imageinclude=false: the build's repositories (and any credentials) stay out of the image.
        return ",".join(
            [self.full_url, self.type, self.alias, "", "false", check, keys, self.components,
             self.distribution, check, ""]
        )

    def probe_url(self) -> str:
        """A small file that exists in every healthy repository of this type."""
        base = self.url.rstrip("/")
        if self.type == "apt-deb":
            return f"{base}/dists/{self.distribution}/InRelease"
        return f"{base}/repodata/repomd.xml" + (f"?{self.token}" if self.token else "")


URL = re.compile(r"^(https?|ftp|file)://[^\s,]+$")


def check_url(option: str, value: str) -> str:
    """A repository base URL KIWI can take: a scheme it fetches from, no spaces or commas."""
    if not URL.match(value):
        raise InputError(f"{option} {value!r}: expected a URL (http, https, ftp or file) "
                         "without spaces or commas", "e.g. https://mirror.example/debian")
    return value


def parse_repo_option(value: str) -> Repository:
    """``--repo`` values: ``URL`` (rpm-md) or ``URL,SUITE[,COMPONENTS]`` (apt)."""
    fields = value.split(",")
    if len(fields) > 3 or any(not field.strip() for field in fields[1:]):
        raise InputError(f"--repo {value!r}: expected URL or URL,SUITE[,COMPONENTS]",
                         "separate components by spaces: URL,SUITE,'main contrib'")
    url = check_url("--repo", fields[0])
    alias = "user-" + re.sub(r"[^A-Za-z0-9]+", "-", url.split("://", 1)[1]).strip("-")[:60]
    if len(fields) == 1:
        return Repository(alias=alias, url=url, type="rpm-md")
    suite, components = fields[1].strip(), " ".join(fields[2].split()) if len(fields) == 3 else "main"
    return Repository(alias=alias, url=url, type="apt-deb", distribution=suite,
                      components=components, signing_keys=(DEBIAN_KEYRING,))


def host_debian_mirrors(sources_files: list[str] | None = None) -> dict[str, str]:
    """Suite -> base URL from the build host's apt configuration (deb822 and one-line forms).

    This is how the host reaches Debian's packages; the project never names a mirror itself.
    """
    if sources_files is None:
        sources_files = sorted(glob.glob(os.path.join(APT_SOURCES_DIR, "*.sources")))
        sources_files += sorted(glob.glob(os.path.join(APT_SOURCES_DIR, "*.list")))
        sources_files.append(APT_SOURCES)
    mirrors: dict[str, str] = {}
    for path in sources_files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        mirrors.setdefault(suite, uri.rstrip("/"))
        else:
            for line in text.splitlines():
                match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match:
                    mirrors.setdefault(match.group(2), match.group(1).rstrip("/"))
    return mirrors


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


# The release in a SUSE repository URL: /15-SP5/, /15-SP5-LTSS/ (SLE 15) or /16.0/ (SLE 16).
RELEASE_IN_URL = re.compile(r"/(1\d-SP\d+|1[6-9]\.\d+)(-LTSS)?/")


def host_zypper_repositories(release: str, root: str | None = None, ltss: bool = False
                             ) -> tuple[list[Repository], list[str]]:
    """A registered SUSE host's enabled zypper repositories for ``release`` (e.g. "15-SP5",
    "16.0"); its LTSS repositories only when asked for (``ltss``).

    Reads ``/etc/zypp/repos.d/*.repo`` (INI: ``[alias]``, ``baseurl=``, ``enabled=``,
    ``type=``) the way ``debian`` reads the host's apt sources.  SUSEConnect writes SCC
    repositories with an access token as the URL's query, and RMT/SMT ones with
    ``?credentials=NAME``, naming ``/etc/zypp/credentials.d/NAME`` (``username=``/``password=``).
    Returns the matching repositories (those with credentials first: KIWI pairs credentials
    with the leading --add-repo values) and the releases the other repositories are for.
    """
    root = root if root is not None else os.environ.get(ZYPP_ROOT_ENV, "/")
    zypp = Path(root) / "etc" / "zypp"
    matching: list[Repository] = []
    others: set[str] = set()
    for repo_file in sorted((zypp / "repos.d").glob("*.repo")):
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            parser.read_string(repo_file.read_text(), source=str(repo_file))
        except (OSError, UnicodeDecodeError, configparser.Error) as error:
            raise InputError(f"cannot read zypper repository file {repo_file}: {error}")
        for alias in parser.sections():
            section = parser[alias]
            urls = section.get("baseurl", "").split()
            url = urls[0] if urls else ""
            if not url or section.get("enabled", "1").strip() != "1":
                continue
            release_match = RELEASE_IN_URL.search(url)
            if not release_match or release_match.group(1) != release:
                if release_match:
                    others.add(release_match.group(1))
                continue
            if release_match.group(2) and not ltss:
                continue
            base, _, query = url.partition("?")
            parts = [part for part in query.split("&") if part]
            names = [part.partition("=")[2] for part in parts if part.startswith("credentials=")]
            token = "&".join(part for part in parts if not part.startswith("credentials="))
            credentials = (load_credentials(str(zypp / "credentials.d" / os.path.basename(names[0])),
                                            private=False)  # the host's own, root's to keep
                           if names else None)
            matching.append(Repository(
                alias=re.sub(r"[^A-Za-z0-9._-]+", "-", alias), url=base, type="rpm-md",
                token=token, credentials=credentials, authenticated=credentials is not None))
    matching.sort(key=lambda repo: repo.credentials is None)
    return matching, sorted(others)


def suse_signing_keys() -> tuple[str, ...]:
    """The build host's SUSE package signing keys, to pin for a zypper target's repositories the
    way Debian's repositories are pinned to the host's archive keyring.  KIWI imports them into
    the image's rpm database before it installs (kiwi/system/prepare.py, import_trusted_keys);
    its zypper still runs with --gpg-auto-import-keys (kiwi/repository/zypper.py), so a key
    not pinned here is trusted on first use.  Empty off a SUSE host."""
    return tuple(str(key) for key in sorted(SUSE_KEYS_DIR.glob("gpg-pubkey-*.asc")))


def load_credentials(path: str | None, environ=os.environ, private: bool = True) -> Credentials | None:
    """Repository credentials from a file or the environment, never from the command line.

    The file is SUSEConnect's format (``/etc/zypp/credentials.d/SCCcredentials``):
    ``username=...`` and ``password=...`` lines; a ``private`` one (the user's) must be readable
    by its owner only, as OpenSSH wants private keys.  The environment alternative is ``TDX_IMAGE_REPO_USER`` +
    ``TDX_IMAGE_REPO_PASSWORD``.
    """
    if path:
        text = read_text(Path(path), "credentials file", CREDENTIALS_MAX_BYTES, CredentialsError)
        mode = Path(path).stat().st_mode
        if private and mode & 0o077:
            raise CredentialsError(
                f"credentials file {path} is readable by group or others (mode {mode & 0o777:o})",
                f"chmod 600 {path}")
        values = dict(
            line.split("=", 1) for line in text.splitlines() if "=" in line
        )
        username, password = values.get("username", "").strip(), values.get("password", "").strip()
        if not username or not password:
            raise CredentialsError(
                f"credentials file {path} lacks a username= or password= line",
                "use the format of /etc/zypp/credentials.d/SCCcredentials")
        return Credentials(username, password)
    username, password = environ.get(USER_VARIABLE), environ.get(PASSWORD_VARIABLE)
    if username and password:
        return Credentials(username, password)
    if username or password:
        given, missing = ((USER_VARIABLE, PASSWORD_VARIABLE) if username
                          else (PASSWORD_VARIABLE, USER_VARIABLE))
        raise CredentialsError(f"{given} is set but {missing} is not", f"set {missing} too")
    return None


def metadata_request(repo: Repository, credentials: Credentials | None,
                     headers: dict[str, str] | None = None) -> urllib.request.Request:
    """A GET of the repository's metadata file (``probe_url``), with the build's credentials if it needs them."""
    request = urllib.request.Request(repo.probe_url(), method="GET", headers=headers or {})
    if repo.authenticated and credentials:
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode())
        request.add_header("Authorization", "Basic " + token.decode())
    return request


def check_reachable(repositories: list[Repository], credentials: Credentials | None,
                    timeout: float = 15) -> None:
    """Fail early, naming the repository, instead of deep inside a KIWI run."""
    for repo in repositories:
        if repo.url.startswith("file://"):
            path = repo.probe_url()[len("file://"):]
            if not os.path.exists(path):
                raise RepositoryError(f"repository {repo.alias} has no {path}",
                                      "check the --repo/--mirror path")
            continue
        request = metadata_request(repo, credentials, headers={"Range": "bytes=0-0"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except urllib.error.HTTPError as error:
            if error.code in (401, 403) and repo.authenticated:
                raise CredentialsError(
                    f"repository {repo.alias} refused the credentials (HTTP {error.code})",
                    "check --credentials or TDX_IMAGE_REPO_USER/TDX_IMAGE_REPO_PASSWORD")
            raise RepositoryError(
                f"repository {repo.alias} answered HTTP {error.code} for {repo.probe_url()}",
                "check the URL, or point --mirror/--repo at a reachable copy")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RepositoryError(
                f"repository {repo.alias} is unreachable at {repo.url}: {reason}",
                "point --mirror (or --repo) at a reachable copy")
