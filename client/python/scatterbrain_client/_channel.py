"""The channel and its security: plaintext or TLS (a CA bundle, a client
certificate for mutual TLS, a server-name override), and the bearer token
every call carries.

The token is added by a channel interceptor, not gRPC call credentials:
those are withheld on a plaintext channel, and a server behind a
TLS-terminating proxy (or a test on loopback) still checks tokens. The
token file format is the server's (--auth_token_file): one token per line,
blank lines and '#' lines ignored; the client sends the first.
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import grpc


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}: cannot read '{path}': {e.strerror}") from None


def _pem(path: Optional[str], option: str, label: bytes) -> Optional[bytes]:
    """The PEM file of `option`, checked to hold a `label` block."""
    if not path:
        return None
    data = _read(path, option)
    if b"-----BEGIN " not in data or b" " + label + b"-----" not in data:
        raise ValueError(f"{option}: '{path}' holds no PEM {label.decode()}")
    return data


def _check_token(token: str, option: str) -> str:
    if (not token or len(token) > 4096
            or any(not 0x21 <= ord(c) <= 0x7E for c in token)):
        raise ValueError(f"{option}: a token is one word of visible ASCII "
                         "characters (no spaces)")
    return token


def read_token_file(path: str) -> str:
    """The first token of a token file; ValueError naming the file."""
    for line in _read(path, "auth_token_file").decode(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return _check_token(line, "auth_token_file")
    raise ValueError(f"auth_token_file: '{path}' holds no token")


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials",
                         "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _Authorization(grpc.UnaryUnaryClientInterceptor,
                     grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor,
                     grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, d):
        metadata = list(d.metadata or []) + [self._entry]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials,
                            getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def make_channel(uri: str, options: Sequence, *, tls: bool = False,
                 tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None,
                 auth_token: Optional[str] = None,
                 auth_token_file: Optional[str] = None) -> grpc.Channel:
    """A channel to `uri`: TLS when `tls` or any tls_* option is set (CA
    bundle default: gRPC's roots), the token on every call when given.
    ValueError naming the option for a bad file or token."""
    if auth_token and auth_token_file:
        raise ValueError("auth_token_file: set together with auth_token "
                         "(one of them)")
    token = (_check_token(auth_token, "auth_token") if auth_token else
             read_token_file(auth_token_file) if auth_token_file else None)
    options = list(options)
    if tls or tls_ca_file or tls_cert_file or tls_key_file or tls_server_name:
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ValueError("tls_key_file: set without tls_cert_file"
                             if tls_key_file else
                             "tls_cert_file: set without tls_key_file")
        creds = grpc.ssl_channel_credentials(
            root_certificates=_pem(tls_ca_file, "tls_ca_file", b"CERTIFICATE"),
            private_key=_pem(tls_key_file, "tls_key_file", b"PRIVATE KEY"),
            certificate_chain=_pem(tls_cert_file, "tls_cert_file",
                                   b"CERTIFICATE"))
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        channel = grpc.secure_channel(uri, creds, options=options)
    else:
        channel = grpc.insecure_channel(uri, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _Authorization(token))
    return channel
