"""Device policy: what the devices behind an edge gateway may reach, how fast, and with what token.

Owns `DevicePolicy` (selected by site and device class: which cloud services, paths and methods a
class may reach through its gateway, a per-device rate limit, and the JWTs mobile apps must carry
to some services), the rule that decides what one class at one site gets (`SiteDevicePolicy`,
`site_device_policy`), and their validation. Policies come from the policy files (`device_policies`)
or DevicePolicy objects. Must not do I/O or know Envoy: the edge gateway's translator
(`xds/translate/edge_authorization.py`) enforces what this module decides.

The meaning, in one place:
- A site is *governed* when some policy selects it (its `sites`, or every site when it names none).
  A site no policy selects is served as before device policy existed: nothing is checked.
- At a governed site, a class that some selecting policy restricts (`allow` given) may reach only
  the union of those policies' `allow` entries. A class no policy restricts may reach every service,
  unless a selecting policy says `default: deny`, which makes the site zero trust: classes no policy
  restricts, and callers that are no live device of the site, reach nothing.
- At a governed site a request's `x-device-class` header must be absent or the calling device's
  registered class (`CLASS_HEADER`); so a cloud service may trust it as the gateway's verification.
- `rate_limit` is per device: each device of a selected class has a bucket of its own. When several
  policies limit one class at one site, the strictest (lowest sustained rate) holds.
- `require_jwt` applies to every request at the policy's sites, whoever sends it (a mobile app is no
  device identity), so a policy holding it selects no classes.
- What a request may do is decided by the services it reaches, not by the host it names: a request
  to a route table's own host, or to a service whose route table sends it elsewhere, needs what
  every service its route reaches needs (each allowed to the caller's class; a token for each that
  requires one).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshplane.model.devices import is_device_class
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.routes import HTTP_METHODS, MAX_RATE_LIMIT_INTERVAL, MAX_RATE_LIMIT_TOKENS, MIN_RATE_LIMIT_INTERVAL
from meshplane.model.services import ServiceRef
from meshplane.model.sites import is_site_id

# The canary header a device's app sends; verified by the gateway at governed sites.
CLASS_HEADER = "x-device-class"
MAX_SELECTED = 64  # sites or classes a policy names
MAX_ACCESS = 64  # allow or require_jwt entries of a policy
MAX_PATHS = 32  # paths of one entry
MAX_PROVIDERS = 8  # JWT providers of a policy
MAX_AUDIENCES = 16
MAX_JWKS_BYTES = 64 * 1024
MAX_PATH_LENGTH = 1024
_PROVIDER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class DefaultAccess(StrEnum):
    """What a class no policy restricts may reach at a governed site."""

    ALLOW = "allow"  # every service: compatible with sites before device policy
    DENY = "deny"  # nothing: zero trust, every class must be allowed by name


class PathKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"


@dataclass(frozen=True, slots=True, order=True)
class PathRule:
    """A request path, exactly or as a prefix (`/rides` matches `/rides` and `/rides/1`, not
    `/ridesx`: a prefix is matched whole segments at a time, as Envoy's `path_separated_prefix`)."""

    kind: PathKind
    value: str


@dataclass(frozen=True, slots=True)
class ServiceAccess:
    """A cloud service by reference, optionally only some paths and methods of it (none: all)."""

    service: ServiceRef
    paths: tuple[PathRule, ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceRateLimit:
    """`requests` every `interval` seconds, up to `burst` at once (None: `requests`), per device."""

    requests: int
    interval: float = 1.0
    burst: int | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.interval


@dataclass(frozen=True, slots=True)
class JwksUri:
    """A JWKS served over plain HTTP by a mesh service: `host` is one of its names (`name.namespace`
    …), the gateway reaching it over the service's cluster of `port`."""

    host: str
    port: int
    path: str

    @staticmethod
    def parse(uri: str) -> JwksUri | None:
        """`http://host[:port]/path` (port 80 when not given), or None when it is not one."""
        try:
            parts = urlsplit(uri)
            port = parts.port or 80
        except ValueError:
            return None
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            return None
        return JwksUri(parts.hostname, port, parts.path or "/")

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """Who issues the tokens a policy accepts: `issuer` (the `iss` claim), `audiences` (one must be
    in `aud`; none: any), and the keys: `jwks` (a JWKS document, JSON) or `jwks_uri` (fetched by the
    gateway from a mesh service). `jwks_file` (a path as written, relative to its policy file) is
    read into `jwks` by the policy files' loader; nothing else reads files, so a provider naming
    one whose `jwks` is still empty (a DevicePolicy object, an unreadable file) is refused."""

    name: str
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str = ""
    jwks_uri: JwksUri | None = None
    jwks_file: str = ""


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """One policy; see the module docstring for what its parts mean together. `allow` None: the
    policy does not restrict its classes (an empty tuple: they may reach nothing)."""

    name: str
    sites: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    default: DefaultAccess | None = None
    allow: tuple[ServiceAccess, ...] | None = None
    rate_limit: DeviceRateLimit | None = None
    jwt_providers: tuple[JwtProvider, ...] = ()
    require_jwt: tuple[ServiceAccess, ...] = ()
    origin: str = ""

    def selects_site(self, site: str) -> bool:
        return not self.sites or site in self.sites

    def selects(self, site: str, device_class: str) -> bool:
        return self.selects_site(site) and (not self.classes or device_class in self.classes)

    def unenforced(self) -> list[str]:
        """What this policy says that is accepted but not enforced as written (shown by `meshplane
        validate` and with the gateways' warnings): a `require_jwt` entry's paths and methods,
        since a token is required on every request to its service."""
        where = f"{self.origin}: " if self.origin else ""
        return [
            f"{where}device policy {self.name}: require_jwt {index + 1} ({entry.service}): a token is required on "
            "every path and method of the service; its paths and methods are not used"
            for index, entry in enumerate(self.require_jwt)
            if entry.paths or entry.methods
        ]

    def problems(self) -> list[Problem]:
        """Every reason this policy cannot be served, each naming it."""
        about = Subject(f"device policy {self.name}", self.origin)
        found: list[Problem] = []
        if not self.name:
            found.append(about.invalid("needs a name"))
        for what, values, valid in (
            ("sites", self.sites, is_site_id),
            ("classes", self.classes, is_device_class),
        ):
            if len(values) > MAX_SELECTED:
                found.append(about.invalid(f"{what}: at most {MAX_SELECTED}, not {len(values)}"))
            found += [about.invalid(f"{what}: {value!r} is not a valid name") for value in values if not valid(value)]
        if self.default is not None and self.classes:
            found.append(about.invalid("default applies to a whole site: a policy with classes cannot set it"))
        for what, entries in (("allow", self.allow or ()), ("require_jwt", self.require_jwt)):
            if len(entries) > MAX_ACCESS:
                found.append(about.invalid(f"{what}: at most {MAX_ACCESS} entries, not {len(entries)}"))
            for index, entry in enumerate(entries):
                found += _access_problems(about.within(f"{what} {index + 1}"), entry)
        if self.rate_limit is not None:
            found += _rate_limit_problems(about, self.rate_limit)
        found += self._jwt_problems(about)
        return found

    def _jwt_problems(self, about: Subject) -> list[Problem]:
        found: list[Problem] = []
        if self.require_jwt and not self.jwt_providers:
            found.append(about.invalid("require_jwt needs jwt_providers to accept tokens from"))
        if self.require_jwt and self.classes:
            found.append(
                about.invalid("require_jwt applies to every caller at the sites: a policy with classes cannot hold it")
            )
        if len(self.jwt_providers) > MAX_PROVIDERS:
            found.append(about.invalid(f"jwt_providers: at most {MAX_PROVIDERS}, not {len(self.jwt_providers)}"))
        seen: set[str] = set()
        for provider in self.jwt_providers:
            within = about.within(f"jwt provider {provider.name}")
            if not _PROVIDER_NAME.match(provider.name):
                found.append(within.invalid("name must be a lowercase RFC 1123 label"))
            if provider.name in seen:
                found.append(within.problem(ProblemKind.DUPLICATE, "named twice"))
            seen.add(provider.name)
            if not provider.issuer:
                found.append(within.invalid("needs an issuer"))
            if len(provider.audiences) > MAX_AUDIENCES:
                found.append(within.invalid(f"audiences: at most {MAX_AUDIENCES}"))
            if bool(provider.jwks or provider.jwks_file) == (provider.jwks_uri is not None):
                found.append(within.invalid("needs exactly one of jwks, jwks_file and jwks_uri"))
            elif provider.jwks_file and not provider.jwks:
                found.append(
                    within.invalid(
                        f"jwks_file {provider.jwks_file[:200]!r} was not read (only policy files read files)"
                    )
                )
            if provider.jwks and (problem := jwks_problem(provider.jwks)) is not None:
                found.append(within.invalid(problem))
        return found


def jwks_problem(text: str) -> str | None:
    """Why `text` is no JWKS document (a JSON object with a list of `keys`), or None."""
    if len(text.encode()) > MAX_JWKS_BYTES:
        return f"jwks: larger than {MAX_JWKS_BYTES} bytes"
    try:
        document = json.loads(text)
    except ValueError as error:
        return f"jwks: not JSON ({error})"
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        return "jwks: must be a JSON object with a non-empty list `keys`"
    for index, key in enumerate(document["keys"]):
        if (problem := _jwk_problem(key)) is not None:
            return f"jwks: key {index + 1}: {problem}"
    return None


# The key members Envoy needs, by key type, and the decoded lengths of fixed-size ones: Envoy
# refuses a whole listener whose inline JWKS holds a key it cannot parse, so such a key is refused here.
_EC_COORDINATE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66}


def _jwk_problem(key: object) -> str | None:
    if not isinstance(key, dict):
        return "must be a JSON object"
    kty = key.get("kty")
    members: dict[str, int | None]
    if kty == "RSA":
        members = {"n": None, "e": None}
    elif kty == "EC":
        if key.get("crv") not in _EC_COORDINATE_BYTES:
            return f"crv must be one of {', '.join(_EC_COORDINATE_BYTES)}"
        size = _EC_COORDINATE_BYTES[key["crv"]]
        members = {"x": size, "y": size}
    elif kty == "OKP":
        if key.get("crv") != "Ed25519":
            return "crv must be Ed25519"
        members = {"x": 32}
    elif kty == "oct":
        members = {"k": None}
    else:
        return "kty must be RSA, EC, OKP or oct"
    decoded: dict[str, bytes] = {}
    for member, length in members.items():
        value = key.get(member)
        found = _base64url(value) if isinstance(value, str) else None
        if not found or (length is not None and len(found) != length):
            return f"{member} must be base64url" + ("" if length is None else f" of {length} bytes")
        decoded[member] = found
    return _public_key_problem(kty, key.get("crv"), decoded)


def _public_key_problem(kty: str, crv: object, members: dict[str, bytes]) -> str | None:
    """Why the key's numbers make no public key (an EC point off its curve, an RSA modulus that is
    no modulus), as Envoy would find when it parses the JWKS; None when they do."""
    try:
        if kty == "EC":
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[str(crv)]
            x, y = (int.from_bytes(members[name], "big") for name in ("x", "y"))
            ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        elif kty == "RSA":
            e, n = (int.from_bytes(members[name], "big") for name in ("e", "n"))
            rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        return f"not a usable {kty} public key ({error})"
    return None


def _base64url(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return None


def _access_problems(about: Subject, entry: ServiceAccess) -> list[Problem]:
    found = []
    if len(entry.paths) > MAX_PATHS:
        found.append(about.invalid(f"paths: at most {MAX_PATHS}, not {len(entry.paths)}"))
    for path in entry.paths:
        if not path.value.startswith("/") or len(path.value) > MAX_PATH_LENGTH:
            found.append(
                about.invalid(f"path {path.value[:80]!r} must start with / (at most {MAX_PATH_LENGTH} characters)")
            )
        elif any(not " " < character < "\x7f" for character in path.value) or "?" in path.value or "#" in path.value:
            found.append(about.invalid(f"path {path.value[:80]!r} may hold no spaces, control characters, ? or #"))
    found += [
        about.invalid(f"method {method!r} is not one of {', '.join(HTTP_METHODS)}")
        for method in entry.methods
        if method not in HTTP_METHODS
    ]
    return found


def _rate_limit_problems(about: Subject, limit: DeviceRateLimit) -> list[Problem]:
    found = []
    if not 1 <= limit.requests <= MAX_RATE_LIMIT_TOKENS:
        found.append(about.invalid(f"rate_limit requests {limit.requests} is out of range 1-{MAX_RATE_LIMIT_TOKENS}"))
    if limit.burst is not None and not 1 <= limit.burst <= MAX_RATE_LIMIT_TOKENS:
        found.append(about.invalid(f"rate_limit burst {limit.burst} is out of range 1-{MAX_RATE_LIMIT_TOKENS}"))
    if not MIN_RATE_LIMIT_INTERVAL <= limit.interval <= MAX_RATE_LIMIT_INTERVAL:  # NaN fails both comparisons
        found.append(
            about.invalid(
                f"rate_limit interval {limit.interval}s is not within {MIN_RATE_LIMIT_INTERVAL}s and "
                f"{MAX_RATE_LIMIT_INTERVAL:.0f}s"
            )
        )
    return found


def device_policy_problems(policies: tuple[DevicePolicy, ...], site_ids: frozenset[str]) -> list[Problem]:
    """Every policy's problems, names given twice, and sites no policy file declares."""
    found: list[Problem] = []
    seen: dict[str, DevicePolicy] = {}
    for policy in policies:
        found += policy.problems()
        about = Subject(f"device policy {policy.name}", policy.origin)
        if (twin := seen.get(policy.name)) is not None:
            found.append(about.problem(ProblemKind.DUPLICATE, f"also declared in {twin.origin or 'another source'}"))
        seen[policy.name] = policy
        found += [
            about.problem(ProblemKind.UNKNOWN_SITE, f"unknown site {site!r}")
            for site in policy.sites
            if site not in site_ids
        ]
    return found


@dataclass(frozen=True, slots=True)
class ClassAccess:
    """What one device class may reach at one site: `services` None means every service; otherwise
    only those entries (an empty tuple: nothing)."""

    services: tuple[ServiceAccess, ...] | None
    rate_limit: DeviceRateLimit | None


@dataclass(frozen=True, slots=True)
class SiteDevicePolicy:
    """Device policy as one site's gateways apply it (`site_device_policy`). `classes` holds the
    access of every class that some selecting policy restricts or limits, by class; `default` is
    what other classes get (`ClassAccess(None, None)` for allow, `ClassAccess((), None)` for deny),
    `unidentified_allowed` whether a caller that is no live device of the site is served; each of
    `jwt_policies` requires a token of one of its own providers on its `require_jwt` entries."""

    site: str
    default: ClassAccess
    classes: tuple[tuple[str, ClassAccess], ...]
    unidentified_allowed: bool
    jwt_policies: tuple[DevicePolicy, ...]  # the selecting policies with `require_jwt`, by name

    def access(self, device_class: str) -> ClassAccess:
        for name, access in self.classes:
            if name == device_class:
                return access
        return self.default


def site_device_policy(
    policies: tuple[DevicePolicy, ...], site: str, device_classes: set[str]
) -> SiteDevicePolicy | None:
    """What the policies mean at `site` for the device classes seen there (and every class a
    policy names), or None when no policy selects the site (nothing is enforced there). Pure and
    deterministic: classes sorted, entries in policy-name order."""
    selecting = sorted((policy for policy in policies if policy.selects_site(site)), key=lambda policy: policy.name)
    if not selecting:
        return None
    deny = any(policy.default is DefaultAccess.DENY for policy in selecting)
    default = ClassAccess((), None) if deny else ClassAccess(None, None)
    named = {name for policy in selecting for name in policy.classes}
    restricted_everywhere = any(
        not policy.classes and (policy.allow is not None or policy.rate_limit) for policy in selecting
    )
    candidates = named | (device_classes if restricted_everywhere else set())
    classes = []
    for device_class in sorted(candidates):
        applying = [policy for policy in selecting if policy.selects(site, device_class)]
        allowed = [policy.allow for policy in applying if policy.allow is not None]
        services = None if not allowed else tuple(entry for entries in allowed for entry in entries)
        if services is None and deny:
            services = ()
        limits = [policy.rate_limit for policy in applying if policy.rate_limit is not None]
        limit = min(limits, key=lambda limit: (limit.rate, limit.burst or limit.requests)) if limits else None
        classes.append((device_class, ClassAccess(services, limit)))
    jwt_policies = tuple(policy for policy in selecting if policy.require_jwt and policy.jwt_providers)
    return SiteDevicePolicy(site, default, tuple(classes), not deny, jwt_policies)
