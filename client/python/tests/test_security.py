"""The Python client's TLS and token options against a real server started
with --tls_cert_file, --tls_key_file, --tls_client_ca_file and
--auth_token_file (conftest's ServerProcess). Certificates are made here
with the openssl CLI: a CA, a server certificate for localhost and
127.0.0.1, a client certificate, and an unrelated CA."""

import pathlib
import shutil
import subprocess

import grpc
import numpy as np
import pytest

import scatterbrain_client as sb
from conftest import ServerProcess, _server_bin
from test_client import qkv, reference

_CONFIG = """[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[server]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = clientAuth
"""
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    openssl = shutil.which("openssl")
    assert openssl, "no openssl on PATH (scripts/test installs it)"
    d = tmp_path_factory.mktemp("certs")
    (d / "openssl.cnf").write_text(_CONFIG)

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True,
                       capture_output=True)

    def ca(name):
        run("req", "-x509", "-new", *_EC, "-keyout", f"{name}.key", "-out",
            f"{name}.pem", "-days", "3", "-subj", f"/CN={name}", "-config",
            "openssl.cnf", "-extensions", "ca")

    def leaf(name, issuer, ext, serial):
        run("req", "-new", *_EC, "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}", "-config", "openssl.cnf")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem",
            "-CAkey", f"{issuer}.key", "-set_serial", str(serial),
            "-days", "3", "-out", f"{name}.pem", "-extfile", "openssl.cnf",
            "-extensions", ext)

    ca("ca")
    leaf("server", "ca", "server", 2)
    leaf("client", "ca", "client", 3)
    ca("other_ca")
    (d / "tokens.txt").write_text("# service accounts\ntok-py\n")
    (d / "token.txt").write_text("\n# mine\ntok-py\n")
    return d


@pytest.fixture(scope="module")
def tls_server(certs):
    binary = _server_bin()
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    s = ServerProcess(binary, [
        "--backend=cpu", f"--tls_cert_file={certs / 'server.pem'}",
        f"--tls_key_file={certs / 'server.key'}",
        f"--tls_client_ca_file={certs / 'ca.pem'}",
        f"--auth_token_file={certs / 'tokens.txt'}"])
    try:
        s.wait_serving(**_mtls(certs))
    except Exception:
        s.stop()
        raise
    yield s
    assert s.stop() == 0


def _mtls(certs: pathlib.Path, **extra):
    """A client's mutual-TLS options; `extra` adds to or replaces them."""
    return {"tls_ca_file": str(certs / "ca.pem"),
            "tls_cert_file": str(certs / "client.pem"),
            "tls_key_file": str(certs / "client.key"), **extra}


def test_mutual_tls_and_token(tls_server, certs):
    q, k, v = qkv()
    with sb.Client(tls_server.target, **_mtls(certs, auth_token="tok-py")) as c:
        np.testing.assert_allclose(c.attend(q, k, v, method="exact"),
                                   reference(q, k, v), atol=1e-4)
        np.testing.assert_allclose(
            c.attend(q, k, v, method="exact", unary=True),
            reference(q, k, v), atol=1e-4)
        assert c.info().backend == "cpu"
    token_file = str(certs / "token.txt")
    with sb.Client(tls_server.target,
                   **_mtls(certs, auth_token_file=token_file)) as c:
        assert c.info().backend == "cpu"


def test_missing_or_wrong_token_is_unauthenticated(tls_server, certs):
    with sb.Client(tls_server.target, **_mtls(certs)) as c:
        assert c.health() == "SERVING"  # health needs no token
        with pytest.raises(sb.AttendError) as e:
            c.attend(*qkv(), method="exact")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in e.value.details()
    with sb.Client(tls_server.target,
                   **_mtls(certs, auth_token="tok-wrong")) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.info()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "tok-wrong" not in e.value.details()


def test_handshake_refusals(tls_server, certs):
    cases = {
        "no client certificate": dict(tls_ca_file=str(certs / "ca.pem")),
        "server not trusted": _mtls(certs, tls_ca_file=str(
            certs / "other_ca.pem")),
        "plaintext": {},
    }
    for name, kwargs in cases.items():
        with sb.Client(tls_server.target, max_attempts=1,
                       auth_token="tok-py", **kwargs) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.info(timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, name


def test_bad_options_name_the_option(certs):
    with pytest.raises(ValueError, match="tls_cert_file: set without"):
        sb.Client("127.0.0.1:1", tls_cert_file=str(certs / "client.pem"))
    with pytest.raises(ValueError, match="tls_ca_file: .* holds no PEM"):
        sb.Client("127.0.0.1:1", tls_ca_file=str(certs / "client.key"))
    with pytest.raises(ValueError, match="auth_token: "):
        sb.Client("127.0.0.1:1", auth_token="two words")
    with pytest.raises(ValueError, match="auth_token_file: cannot read"):
        sb.Client("127.0.0.1:1", auth_token_file=str(certs / "nope.txt"))
