"""A loopback token service for docker-registry's ``auth: token``, and an htpasswd writer.

The registry trusts a self-signed certificate (``rootcertbundle``); :func:`serve_tokens` makes
the RSA key and certificate with ``cryptography`` and answers ``GET /token?service=&scope=`` the
way Docker Hub's auth service does: ``{"token", "access_token", "expires_in", "issued_at"}``
with a JWT (RS256, the certificate in the ``x5c`` header) granting the requested actions —
``pull`` to anyone when ``anonymous`` is on, ``pull`` and ``push`` to a user whose Basic
password matches. A wrong password is a 401.

``expire_next`` makes the next token's ``exp`` that many seconds from now (it can be in the
past) while ``expires_in`` still says 300 s: the registry starts refusing a token the client
believes valid, which is what an expired token mid-pull looks like to a client.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "lifecycle-test-registry"
ISSUER = "lifecycle-test-issuer"


@dataclass
class TokenService:
    url: str = ""
    bundle: Path = Path()
    users: dict[str, str] = field(default_factory=dict)
    anonymous: bool = True
    expire_next: float | None = None
    issued: list[tuple[str, list[str]]] = field(default_factory=list)  # (user or "", scopes)
    refused: int = 0
    authorization_headers: list[str] = field(default_factory=list)
    key: rsa.RSAPrivateKey | None = None
    cert_der: bytes = b""

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_auth(self) -> str:
        """The ``auth:`` section of a docker-registry config trusting this service."""
        return (
            "  token:\n"
            f"    realm: {self.realm}\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.bundle}\n"
        )

    def sign(self, subject: str, access: list[dict[str, object]], exp: float) -> str:
        assert self.key is not None
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": int(exp),
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header))}.{_b64url(json.dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


@contextmanager
def serve_tokens(workdir: Path, users: dict[str, str] | None = None) -> Iterator[TokenService]:
    """Run the token service on a free loopback port for the duration of the block."""
    service = TokenService(users=dict(users or {}))
    service.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    service.cert_der = _self_signed(service.key)
    service.bundle = workdir / "token-bundle.pem"
    cert = x509.load_der_x509_certificate(service.cert_der)
    service.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = True
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """An htpasswd file with bcrypt hashes (the only kind docker-registry accepts)."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for user, password in users.items()
    ]
    path.write_text("".join(lines), encoding="utf-8")


def _handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._send(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            user = self._user()
            if user is None:
                service.refused += 1
                self._send(401, {"details": "bad credentials"}, challenge=True)
                return
            if user == "" and not service.anonymous:
                service.refused += 1
                self._send(401, {"details": "authentication required"}, challenge=True)
                return
            scopes = query.get("scope", [])
            access = [self._grant(scope, user) for scope in scopes if scope.count(":") >= 2]
            exp = time.time() + 300
            if service.expire_next is not None:
                exp, service.expire_next = time.time() + service.expire_next, None
            token = service.sign(user or "anonymous", access, exp)
            service.issued.append((user, scopes))
            issued_at = datetime.datetime.now(datetime.UTC).isoformat()
            body = {"token": token, "access_token": token, "expires_in": 300}
            self._send(200, {**body, "issued_at": issued_at})

        def _user(self) -> str | None:
            """ "" for anonymous, the user name for good credentials, None for bad ones."""
            header = self.headers.get("Authorization")
            if not header:
                return ""
            service.authorization_headers.append(header)
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if service.users.get(user) == password else None

        def _grant(self, scope: str, user: str) -> dict[str, object]:
            kind, rest = scope.split(":", 1)
            name, _, actions = rest.rpartition(":")
            allowed = {"pull", "push"} if user else {"pull"}
            granted = [a for a in actions.split(",") if a in allowed]
            return {"type": kind, "name": name, "actions": granted}

        def _send(self, status: int, body: dict[str, object], *, challenge: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if challenge:
                self.send_header("WWW-Authenticate", 'Basic realm="token service"')
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lifecycle test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _b64url(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
