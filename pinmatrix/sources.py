"""Where packages come from: index, extra indexes, a find-links wheelhouse, a CA bundle, torch's
backend.

Built from the command line, then `PINMATRIX_*` variables, then the host's pip settings
(docs/CONTRACTS.md §9). An index URL may hold credentials (`https://user:token@host/simple`): such a
URL never goes on a command line (which gets logged), only into the child's environment, and
`repr()` redacts it.
"""
from __future__ import annotations

import base64
import hashlib
import html.parser
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from pinmatrix.errors import IndexUnreachable

PYPI_SIMPLE = "https://pypi.org/simple"
# Where each source comes from when its command-line option is absent, in order: pinmatrix's own
# variable, then the host's pip settings. The option table (pinmatrix/run/options.py) shows these in
# --help.
SOURCE_ENV = {
    "index_url": ("PINMATRIX_INDEX_URL", "PIP_INDEX_URL"),
    "extra_index_urls": ("PINMATRIX_EXTRA_INDEX_URLS", "PIP_EXTRA_INDEX_URL"),
    "find_links": ("PINMATRIX_FIND_LINKS", "PIP_FIND_LINKS"),
    "ca_bundle": ("PINMATRIX_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE"),
    "torch_backend": ("PINMATRIX_TORCH_BACKEND",),
}


@dataclass(frozen=True)
class PackageSources:
    index_url: str | None = None                 # None: uv's default (PyPI)
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()             # wheelhouse folders or URLs
    ca_bundle: str | None = None                 # PEM file for TLS to the indexes
    # uv --torch-backend: "auto", "cpu", "cu130", ...; None: off
    torch_backend: str | None = None
    # --offline: resolve from the find-links folders alone (uv --offline --no-index); an air-gapped
    # host such as the lent H200s has no index to ask
    offline: bool = False

    @classmethod
    def from_env(cls, *, index_url: str | None = None,
                 extra_index_urls: tuple[str, ...] | list[str] | None = None,
                 find_links: tuple[str, ...] | list[str] | None = None,
                 ca_bundle: str | None = None,
                 torch_backend: str | None = None,
                 environ: Mapping[str, str] | None = None) -> PackageSources:
        """Command-line values (the arguments) win over PINMATRIX_* variables, which win over
        pip's."""
        env = os.environ if environ is None else environ

        def pick(cli: str | None, *names: str) -> str | None:
            if cli is not None:
                return cli
            for name in names:
                if env.get(name):
                    return env[name]
            return None

        def many(cli: Sequence[str] | None, *names: str) -> tuple[str, ...]:
            if cli is not None:
                return tuple(cli)
            raw = pick(None, *names)
            return tuple(raw.split()) if raw else ()

        backend = pick(torch_backend, *SOURCE_ENV["torch_backend"])
        return cls(
            index_url=pick(index_url, *SOURCE_ENV["index_url"]),
            extra_index_urls=many(extra_index_urls, *SOURCE_ENV["extra_index_urls"]),
            find_links=many(find_links, *SOURCE_ENV["find_links"]),
            ca_bundle=pick(ca_bundle, *SOURCE_ENV["ca_bundle"]),
            torch_backend=None if backend in (None, "", "none", "off") else backend,
        )

    # --- for uv
    # ---------------------------------------------------------------------------------------------
    def uv_args(self, torch_pin: str | None = None) -> list[str]:
        """Arguments safe to log. URLs with credentials travel in `uv_env()` instead."""
        args: list[str] = []
        if self.offline:
            return [*(a for link in self.find_links for a in ("--find-links", link)),
                    "--no-index", "--offline"]
        if self.index_url and not has_credentials(self.index_url):
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            if not has_credentials(url):
                args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        backend = self.backend_for(torch_pin)
        if backend:
            args += ["--torch-backend", backend]
        return args

    def uv_env(self) -> dict[str, str]:
        """Environment additions for a uv child process (credentialed URLs, the CA bundle)."""
        env: dict[str, str] = {}
        if self.index_url and has_credentials(self.index_url):
            env["UV_INDEX_URL"] = self.index_url
        secret_extras = [u for u in self.extra_index_urls if has_credentials(u)]
        if secret_extras:
            env["UV_EXTRA_INDEX_URL"] = " ".join(secret_extras)
        if self.ca_bundle:
            # uv's bundled roots ignore a corporate CA; SSL_CERT_FILE makes uv trust this bundle.
            env["SSL_CERT_FILE"] = self.ca_bundle
        return env

    def backend_for(self, torch_pin: str | None) -> str | None:
        """uv's torch backend for a cell: 'auto' follows the pin's variant (2.11.0+cu130 ->
        cu130)."""
        if not self.torch_backend:
            return None
        if self.torch_backend == "auto" and torch_pin and "+" in torch_pin:
            return torch_pin.split("+", 1)[1]
        return self.torch_backend

    def index_urls(self) -> list[str]:
        """The simple-API indexes to query for live axes, in order."""
        return [self.index_url or PYPI_SIMPLE, *self.extra_index_urls]

    def identity(self) -> str:
        """A digest of everything that changes what resolves; keys caches without holding
        secrets."""
        payload = json.dumps([self.index_url, list(self.extra_index_urls), list(self.find_links),
                              self.torch_backend, *(["offline"] if self.offline else [])],
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def ssl_context(self) -> ssl.SSLContext:
        return (
            ssl.create_default_context(cafile=self.ca_bundle)
            if self.ca_bundle
            else ssl.create_default_context()
        )

    def __repr__(self) -> str:
        return (f"PackageSources(index_url={redact(self.index_url)!r}, "
                f"extra_index_urls={tuple(redact(u) for u in self.extra_index_urls)!r}, "
                f"find_links={tuple(redact(u) for u in self.find_links)!r}, "
                f"ca_bundle={self.ca_bundle!r}, "
                f"torch_backend={self.torch_backend!r})")

    __str__ = __repr__


def has_credentials(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return bool(parts.username or parts.password)


def redact(url: str | None) -> str | None:
    """`https://user:secret@host/x` -> `https://***@host/x`."""
    if url is None or not has_credentials(url):
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query,
                                    parts.fragment))


def open_url(url: str, sources: PackageSources, accept: str,
             timeout_s: float = 30.0) -> http.client.HTTPResponse:
    """GET a URL with the sources' CA bundle; credentials in the URL become a Basic header, not a
    log line."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Accept": accept, "User-Agent": "pinmatrix"}
    if parts.username or parts.password:
        user = urllib.parse.unquote(parts.username or "")
        token = f"{user}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    request = urllib.request.Request(url, headers=headers)
    response: http.client.HTTPResponse
    if parts.scheme == "https":
        response = urllib.request.urlopen(request, timeout=timeout_s,
                                          context=sources.ssl_context())
    else:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    return response


# --- releases on the index (for live axes)
# ---------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    version: str
    yanked: bool        # every file of the release is yanked


def list_releases(package: str, sources: PackageSources, timeout_s: float = 30.0) -> list[Release]:
    """Every release of `package` on the sources' indexes (simple API, PEP 691 JSON or PEP 503
    HTML).

    A release is yanked only when all its files are. Unparseable file names are skipped.
    """

    name = canonicalize_name(package)
    files: dict[str, list[bool]] = {}
    for index in sources.index_urls():
        url = index.rstrip("/") + f"/{name}/"
        try:
            with open_url(url, sources, "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
                          timeout_s) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "") if hasattr(resp, "headers") else ""
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                continue  # this index does not carry the package
            raise IndexUnreachable(f"{redact(url)}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise IndexUnreachable(f"{redact(url)}: {exc}") from exc
        for filename, yanked in _simple_files(body, ctype):
            version = _version_of(filename, name)
            if version is not None:
                files.setdefault(version, []).append(yanked)
    return [Release(v, all(flags)) for v, flags in files.items()]


def _simple_files(body: bytes, content_type: str) -> list[tuple[str, bool]]:
    text = body.decode("utf-8", "replace")
    if "json" in content_type or text.lstrip().startswith("{"):
        data = json.loads(text)
        return [(f["filename"], bool(f.get("yanked"))) for f in data.get("files", [])]

    found: list[tuple[str, bool]] = []

    class Anchors(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                attributes = dict(attrs)
                href = attributes.get("href") or ""
                filename = urllib.parse.unquote(href.split("#",
                                                           1)[0].rstrip("/").rsplit("/", 1)[-1])
                found.append((filename, "data-yanked" in attributes))

    Anchors().feed(text)
    return found


def _version_of(filename: str, name: str) -> str | None:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        if filename.endswith((".tar.gz", ".zip")):
            parsed_name, version = parse_sdist_filename(filename)
            return str(version) if parsed_name == name else None
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None
    return None
