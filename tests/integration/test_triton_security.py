"""The gateway's link to real Triton servers: gRPC over (mutual) TLS, and circuit breaking.

- TLS: ``tritonserver`` serves gRPC with ``--grpc-use-ssl`` and requires client
  certificates; a gateway with ``triton_tls`` and the throwaway CA's client certificate
  serves through it, one without them cannot reach it.
- Circuit breaker: two servers hold ``digits__fp32``; on one, the model fails every run
  while a flag file exists (liveness stays fine, so only the breaker can notice). Its
  circuit opens after ``circuit_failures`` errors in a row and requests go to the other
  server; trials while it still fails open it again for longer; once the flag is gone a
  trial succeeds and both serve again.
"""

from __future__ import annotations

import time

import pytest
import tritonclient.grpc as grpcclient
from certs import CertificateAuthority
from tritonclient.utils import InferenceServerException

from tests.support.triton import python_flavour, subset
from tests.support.wire import Wire, image_input, metric

FAULT = """
        if os.path.exists(os.path.join(os.path.dirname(__file__), "FAIL")):
            error = pb_utils.TritonError("injected fault: the model fails on this server")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
"""


def faulty_model(original: str) -> str:
    """The flavour's ``model.py``, failing every run while a flag file beside it exists."""
    anchor = "        responses = []\n"  # the first line of execute()
    assert original.count(anchor) == 1
    return original.replace(anchor, FAULT.lstrip("\n") + anchor)


def _wait(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_gateway_reaches_triton_over_mutual_tls(
    repo, tmp_path, triton_factory, gateway_factory
):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("triton", server=True)
    client = ca.issue("gateway", server=False)
    models = subset(repo, tmp_path / "repo", ("digits",))
    tls_args = (
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={server.cert_file}",
        f"--grpc-server-key={server.key_file}",
        f"--grpc-root-cert={ca.cert_file}",
        "--grpc-use-ssl-mutual=true",
    )
    triton = triton_factory(
        python_flavour(models, tmp_path / "flavour"), explicit=True, extra_args=tls_args
    )
    common = {"backend": "triton", "triton_urls": [triton.grpc_url], "triton_probe_interval_s": 0.5}
    gw = gateway_factory(
        models,
        triton_tls=True,
        triton_tls_ca_file=ca.cert_file,
        triton_tls_cert_file=client.cert_file,
        triton_tls_key_file=client.key_file,
        **common,
    )
    wire = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))
    result = wire.infer("digits__fp32", image_input(255))
    assert result.outputs["labels"][0][0] == b"9"
    runs = metric(
        gw.scrape(),
        "gateway_triton_runs_total",
        server=triton.grpc_url,
        model="digits",
        variant="fp32",
        outcome="ok",
    )
    assert runs >= 1

    # Without TLS settings the same server is unreachable: the gateway says so.
    plain = gateway_factory(models, **common)
    client_of_plain = grpcclient.InferenceServerClient(plain.grpc_url)
    assert not client_of_plain.is_server_ready()
    with pytest.raises(InferenceServerException) as info:
        Wire("grpc", client_of_plain).infer("digits__fp32", image_input(0))
    assert "UNAVAILABLE" in str(info.value.status())


def test_a_server_failing_its_runs_is_cut_off_by_its_circuit(
    repo, tmp_path, triton_factory, gateway_factory, caplog
):
    models = subset(repo, tmp_path / "repo", ("digits",))
    healthy = python_flavour(models, tmp_path / "healthy")
    faulty = python_flavour(models, tmp_path / "faulty")
    version = faulty / "digits__fp32" / "1"
    model_py = version / "model.py"
    model_py.write_text(faulty_model(model_py.read_text(encoding="utf-8")), encoding="utf-8")
    flag = version / "FAIL"
    flag.touch()
    good = triton_factory(healthy, explicit=True, load_models=("digits__fp32",))
    bad = triton_factory(faulty, explicit=True, load_models=("digits__fp32",))
    gw = gateway_factory(
        models,
        backend="triton",
        triton_urls=[bad.grpc_url, good.grpc_url],  # idle servers tie: the first is chosen
        triton_explicit_model_control=False,
        triton_probe_interval_s=0.5,
        circuit_failures=3,
        circuit_open_s=1.0,
        circuit_max_open_s=2.0,
    )
    wire = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))

    def call() -> str:
        try:
            wire.infer("digits__fp32", image_input(0))
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode.")
        return "OK"

    def state(server: str) -> float:
        return metric(gw.scrape(), "gateway_circuit_state", server=server)

    outcomes = [call() for _ in range(40)]
    failures = [o for o in outcomes if o != "OK"]
    assert set(failures) <= {"INTERNAL"}
    assert 3 <= len(failures) <= 6  # the ones before the circuit opened (and a trial)
    assert state(bad.grpc_url) in (1.0, 2.0) and state(good.grpc_url) == 0.0
    tail = outcomes[-15:]
    assert tail.count("OK") >= 14  # afterwards the good server takes the traffic

    opens = lambda: metric(gw.scrape(), "gateway_circuit_opens_total", server=bad.grpc_url)  # noqa: E731
    _wait(lambda: bool(call()) and opens() >= 2)  # requests keep coming: one is the trial
    assert state(bad.grpc_url) in (1.0, 2.0)

    flag.unlink()  # the fault clears: the next trial closes the circuit
    _wait(lambda: call() == "OK" and state(bad.grpc_url) == 0.0)
    samples = gw.scrape()
    assert metric(samples, "gateway_circuit_opens_total", server=bad.grpc_url) >= 2
    assert metric(samples, "gateway_circuit_opens_total", server=good.grpc_url) == 0
    ok_on_bad = metric(
        samples,
        "gateway_triton_runs_total",
        server=bad.grpc_url,
        model="digits",
        variant="fp32",
        outcome="ok",
    )
    for _ in range(20):
        assert call() == "OK"
    after = metric(
        gw.scrape(),
        "gateway_triton_runs_total",
        server=bad.grpc_url,
        model="digits",
        variant="fp32",
        outcome="ok",
    )
    assert after > ok_on_bad  # it takes requests again
    opened = [r.getMessage() for r in caplog.records if "circuit open" in r.getMessage()]
    assert opened and "injected fault" in opened[0]
