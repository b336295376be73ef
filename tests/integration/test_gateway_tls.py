"""TLS and mutual TLS on both servers with a throwaway CA, stock tritonclient (ssl=True)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from certs import CertificateAuthority, Issued
from cryptography import x509
from tritonclient.utils import InferenceServerException

from gateway.auth import hash_key, new_key
from tests.support.wire import Wire, image_input, metric, parse_samples


class PKI:
    """A CA, the server's certificate (copied to the files the gateway reads) and a client's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority(root / "ca")
        issued = self.ca.issue("server", server=True, out=root / "issued")
        self.live = root / "live"
        self.live.mkdir()
        self.cert_file, self.key_file = self.live / "tls.crt", self.live / "tls.key"
        self.client_ca_file = self.live / "ca.crt"
        self.install(issued)
        shutil.copy(self.ca.cert_file, self.client_ca_file)
        self.server_serial = issued.serial
        self.client = self.ca.issue("client", server=False)

    def install(self, issued: Issued) -> None:
        """Replace the served certificate and key, each file atomically."""
        for source, target in (
            (issued.cert_file, self.cert_file),
            (issued.key_file, self.key_file),
        ):
            tmp = target.with_suffix(".tmp")
            shutil.copy(source, tmp)
            tmp.replace(target)

    def settings(self, mutual: bool = True) -> dict:
        values = {
            "tls_cert_file": self.cert_file,
            "tls_key_file": self.key_file,
            "secrets_reload_interval_s": 0.05,
        }
        if mutual:
            values["tls_client_ca_file"] = self.client_ca_file
        return values

    def grpc_client(
        self, url: str, client: Issued | None = None
    ) -> grpcclient.InferenceServerClient:
        client = client or self.client
        return grpcclient.InferenceServerClient(
            url,
            ssl=True,
            root_certificates=str(self.ca.cert_file),
            private_key=str(client.key_file),
            certificate_chain=str(client.cert_file),
        )

    def http_client(
        self, url: str, client: Issued | None = None
    ) -> httpclient.InferenceServerClient:
        client = client or self.client
        options = {
            "ca_certs": str(self.ca.cert_file),
            "certfile": str(client.cert_file),
            "keyfile": str(client.key_file),
        }
        return httpclient.InferenceServerClient(url, ssl=True, ssl_options=options)

    def presented_serial(self, port: int, client: Issued | None = None) -> int:
        """The serial of the certificate a server presents to a new connection."""
        client = client or self.client
        context = ssl.create_default_context(cafile=str(self.ca.cert_file))
        context.load_cert_chain(client.cert_file, client.key_file)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def local(url: str) -> str:
    """The same address by name, as the certificate names it (it also holds 127.0.0.1)."""
    return url.replace("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tgw(repo, pki, module_gateway_factory):
    return module_gateway_factory(repo, **pki.settings(mutual=True))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stock_clients_infer_over_mutual_tls(tgw, pki, protocol):
    if protocol == "grpc":
        client = pki.grpc_client(local(tgw.grpc_url))
    else:
        client = pki.http_client(local(tgw.http_url))
    assert client.is_server_ready()
    result = Wire(protocol, client).infer("digits", image_input(255))
    assert result.variant == "fp32"
    assert result.outputs["labels"][0][0] in (b"9", "9")


def test_without_a_client_certificate_there_is_no_connection(tgw, pki):
    plain_grpc = grpcclient.InferenceServerClient(
        local(tgw.grpc_url), ssl=True, root_certificates=str(pki.ca.cert_file)
    )
    with pytest.raises(InferenceServerException) as info:
        plain_grpc.is_server_live(client_timeout=5)
    assert "UNAVAILABLE" in str(info.value.status()) or "DEADLINE" in str(info.value.status())
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(f"https://{local(tgw.http_url)}/v2/health/live", verify=context, timeout=5)


def test_a_client_certificate_of_another_ca_is_refused(tgw, pki, tmp_path):
    stranger = CertificateAuthority(tmp_path / "other", "other-ca").issue("mallory", server=False)
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    context.load_cert_chain(stranger.cert_file, stranger.key_file)
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(f"https://{local(tgw.http_url)}/v2/health/live", verify=context, timeout=5)
    with pytest.raises(InferenceServerException):
        pki.grpc_client(local(tgw.grpc_url), stranger).is_server_live(client_timeout=5)


def test_plaintext_clients_get_nothing_from_tls_ports(tgw):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{tgw.http_url}/v2/health/live", timeout=5)
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(tgw.grpc_url).is_server_live(client_timeout=5)


def test_server_tls_with_api_keys_and_no_client_certificates(repo, pki, tmp_path, gateway_factory):
    key = new_key()
    keys = tmp_path / "keys.json"
    entry = {"id": "ci", "sha256": hash_key(key), "scopes": ["inference"]}
    keys.write_text(json.dumps({"keys": [entry]}), encoding="utf-8")
    gw = gateway_factory(repo, auth_keys_file=keys, **pki.settings(mutual=False))
    grpc_client = grpcclient.InferenceServerClient(
        local(gw.grpc_url), ssl=True, root_certificates=str(pki.ca.cert_file)
    )
    http_client = httpclient.InferenceServerClient(
        local(gw.http_url), ssl=True, ssl_options={"ca_certs": str(pki.ca.cert_file)}
    )
    for protocol, client in (("grpc", grpc_client), ("http", http_client)):
        assert client.is_server_live()
        wire = Wire(protocol, client)
        headers = {"authorization": f"Bearer {key}"}
        assert wire.infer("digits", image_input(0), headers=headers).variant == "fp32"
        with pytest.raises(InferenceServerException, match="needs an API key"):
            wire.infer("digits", image_input(0))


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def test_certificates_reload_when_their_files_change(repo, tmp_path, gateway_factory):
    pki = PKI(tmp_path)
    gw = gateway_factory(repo, **pki.settings(mutual=True))
    ports = (gw.gateway.grpc_port, gw.gateway.http_port)
    assert [pki.presented_serial(p) for p in ports] == [pki.server_serial] * 2
    before = pki.grpc_client(local(gw.grpc_url))  # a channel opened before the rotation
    assert before.is_server_live()

    renewed = pki.ca.issue("server-renewed", server=True, out=tmp_path / "renewed")
    pki.install(renewed)
    _wait_for(lambda: [pki.presented_serial(p) for p in ports] == [renewed.serial] * 2)
    assert Wire("grpc", before).infer("digits", image_input(0)).variant == "fp32"
    after = pki.http_client(local(gw.http_url))
    assert Wire("http", after).infer("digits", image_input(0)).variant == "fp32"

    # A key that is not the certificate's: refused, the renewed pair keeps serving.
    wrong = pki.ca.issue("wrong", server=True, out=tmp_path / "wrong")
    shutil.copy(wrong.key_file, pki.key_file)
    _wait_for(
        lambda: (
            metric(_scrape(pki, gw), "gateway_secret_reloads_total", kind="tls", outcome="failed")
            >= 1
        )
    )
    assert [pki.presented_serial(p) for p in ports] == [renewed.serial] * 2

    # A new client CA replaces the old one: old clients are refused from then on.
    new_ca = CertificateAuthority(tmp_path / "ca2", "ca-2")
    new_client = new_ca.issue("client-2", server=False)
    pki.install(renewed)  # a good pair again
    shutil.copy(new_ca.cert_file, pki.client_ca_file.with_suffix(".tmp"))
    pki.client_ca_file.with_suffix(".tmp").replace(pki.client_ca_file)
    _wait_for(lambda: _handshakes(pki, gw.gateway.http_port, new_client))
    assert not _handshakes(pki, gw.gateway.http_port, pki.client)
    assert pki.grpc_client(local(gw.grpc_url), new_client).is_server_live()


def _handshakes(pki: PKI, port: int, client: Issued) -> bool:
    try:
        context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
        context.load_cert_chain(client.cert_file, client.key_file)
        with httpx.Client(verify=context, timeout=5) as http:
            return http.get(f"https://localhost:{port}/v2/health/live").status_code == 200
    except (httpx.HTTPError, ssl.SSLError):
        return False


def _scrape(pki: PKI, gw) -> dict:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    context.load_cert_chain(pki.client.cert_file, pki.client.key_file)
    text = httpx.get(f"https://{local(gw.http_url)}/metrics", verify=context, timeout=10).text
    return parse_samples(text)
