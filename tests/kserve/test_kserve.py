"""The Open Inference Protocol (KServe v2 gRPC) endpoint through Triton's
own client, tritonclient.grpc, against a real server process: every RPC,
inference equal to a local computation (exact) or to the scatterbrain.v1
client's answer for the same inputs and seed (the approximations), the
three dtypes, KEY_LENGTHS, typed contents, streaming with in-band errors,
system shared memory, statistics, error cases, tokens and batching
together with scatterbrain.v1 requests. Shapes are small: the suite takes
seconds on a 2-core machine."""

import os
import threading

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import kserve_server  # also puts client/python on sys.path
import scatterbrain_client as sb

_NP = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16}
MODELS = ["scatterbrain", "exact", "performer", "lsh", "local"]
B, H, N, D = 2, 2, 64, 16


@pytest.fixture(scope="module")
def server():
    s = kserve_server.start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.target)
    yield c
    c.close()


def _qkv(seed=0, shape=(B, H, N, D)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]


def _exact(q, k, v, key_lengths=None):
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if key_lengths is not None:
        for b, n in enumerate(key_lengths):
            s[b, :, :, n:] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v


def _inputs(q, k, v, datatype="FP32", key_lengths=None):
    ins = []
    for name, a in (("Q", q), ("K", k), ("V", v)):
        i = grpcclient.InferInput(name, list(a.shape), datatype)
        if datatype in _NP:
            a = a.astype(_NP[datatype])
        i.set_data_from_numpy(a)
        ins.append(i)
    if key_lengths is not None:
        i = grpcclient.InferInput("KEY_LENGTHS", [len(key_lengths)], "INT32")
        i.set_data_from_numpy(np.asarray(key_lengths, dtype=np.int32))
        ins.append(i)
    return ins


def _code(exc):
    return exc.status()  # "StatusCode.INVALID_ARGUMENT"


def test_health_metadata_and_config(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "scatterbrain"
    assert {"system_shared_memory", "statistics",
            "model_configuration"} <= set(md["extensions"])
    for model in MODELS:
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model, as_json=True)
        assert meta["name"] == model and meta["versions"] == ["1"]
        assert [t["name"] for t in meta["inputs"]] == ["Q", "K", "V",
                                                      "KEY_LENGTHS"]
        assert meta["inputs"][0]["shape"] == ["-1"] * 4
        assert [t["name"] for t in meta["outputs"]] == ["OUT"]
        cfg = client.get_model_config(model).config
        assert cfg.name == model and cfg.max_batch_size == 0
        assert cfg.backend == "scatterbrain"
        assert [i.name for i in cfg.input] == ["Q", "K", "V", "KEY_LENGTHS"]
        assert cfg.input[3].optional and list(cfg.input[0].dims) == [-1] * 4
        assert [o.name for o in cfg.output] == ["OUT"]
    assert not client.is_model_ready("nope")
    for call in (lambda: client.get_model_metadata("nope"),
                 lambda: client.get_model_config("nope"),
                 lambda: client.get_model_metadata("exact", "2")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert _code(e.value) == "StatusCode.NOT_FOUND"
        assert "scatterbrain, exact, performer, lsh, local" in str(e.value) \
            or "only version 1" in str(e.value)


def test_unsupported_rpcs_are_unimplemented_with_a_message(client):
    calls = [client.get_model_repository_index,
             lambda: client.load_model("exact"),
             lambda: client.unload_model("exact"),
             client.get_cuda_shared_memory_status,
             lambda: client.unregister_cuda_shared_memory("x"),
             client.get_trace_settings,
             client.get_log_settings]
    for call in calls:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert _code(e.value) == "StatusCode.UNIMPLEMENTED"
        assert "not implemented by this server" in str(e.value)


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16"])
def test_exact_equals_numpy(client, datatype):
    q, k, v = _qkv(1)
    if datatype in _NP:  # the reference sees what travelled
        q, k, v = (a.astype(_NP[datatype]).astype(np.float32)
                   for a in (q, k, v))
    r = client.infer("exact", _inputs(q, k, v, datatype), request_id="req-7")
    out = r.as_numpy("OUT")
    assert r.get_response().id == "req-7"
    assert r.get_output("OUT").datatype == "FP32"
    assert out.shape == (B, H, N, D) and out.dtype == np.float32
    np.testing.assert_allclose(out, _exact(q, k, v), atol=1e-5, rtol=0)


def test_output_dtype_parameter(client):
    q, k, v = _qkv(2)
    r = client.infer("exact", _inputs(q, k, v),
                     parameters={"output_dtype": "FP16"})
    assert r.get_output("OUT").datatype == "FP16"
    out = r.as_numpy("OUT")
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), _exact(q, k, v),
                               atol=2e-3, rtol=0)


def test_key_lengths(client):
    q, k, v = _qkv(3)
    lengths = [N, 17]
    out = client.infer("exact", _inputs(q, k, v, key_lengths=lengths)) \
        .as_numpy("OUT")
    np.testing.assert_allclose(out, _exact(q, k, v, lengths), atol=1e-5,
                               rtol=0)


SETTINGS = {
    "scatterbrain": {"num_features": 32, "bucket_size": 16, "num_hashes": 2,
                     "sparse": "both", "window": 8, "seed": 5},
    "performer": {"num_features": 64, "seed": 9},
    "lsh": {"bucket_size": 16, "num_hashes": 2, "seed": 3},
    "local": {"window": 16, "causal": True},
}


@pytest.mark.parametrize("model", sorted(SETTINGS))
def test_approximations_equal_the_v1_client(server, client, model):
    q, k, v = _qkv(4)
    settings = SETTINGS[model]
    out = client.infer(model, _inputs(q, k, v), parameters=settings) \
        .as_numpy("OUT")
    ref = sb.attend(q, k, v, method=model, target=server.target, **settings)
    # The same server, backend, settings and seed: the same computation.
    np.testing.assert_array_equal(out, ref)


def test_auto_support_and_error_target_parameters(server, client):
    """sparse=auto, global_keys and target_error (a double parameter, or a
    string as perf_analyzer sends) reach the planner as on scatterbrain.v1."""
    q, k, v = _qkv(6)
    settings = {"sparse": "auto", "global_keys": 2, "target_error": 0.3,
                "seed": 5}
    ref = sb.attend(q, k, v, method="scatterbrain", target=server.target,
                    **settings)
    for target_error in (0.3, "0.3"):
        params = dict(settings, target_error=target_error)
        out = client.infer("scatterbrain", _inputs(q, k, v),
                           parameters=params).as_numpy("OUT")
        np.testing.assert_array_equal(out, ref)
    _expect_invalid(client, "scatterbrain", _inputs(q, k, v),
                    "parameter 'target_error'",
                    parameters={"target_error": "lots"})


def test_typed_contents(server):
    """Inputs in InferTensorContents (fp32_contents, int_contents) instead
    of raw_input_contents; tritonclient always sends raw, so the request
    is built with its generated stubs."""
    import grpc
    q, k, v = _qkv(5)
    req = service_pb2.ModelInferRequest(model_name="exact", id="typed")
    for name, a in (("Q", q), ("K", k), ("V", v)):
        t = req.inputs.add(name=name, datatype="FP32", shape=list(a.shape))
        t.contents.fp32_contents.extend(a.ravel().tolist())
    t = req.inputs.add(name="KEY_LENGTHS", datatype="INT32", shape=[B])
    t.contents.int_contents.extend([N, 9])
    with grpc.insecure_channel(server.target) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req)
    assert resp.id == "typed" and resp.outputs[0].name == "OUT"
    assert list(resp.outputs[0].shape) == [B, H, N, D]
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(
        B, H, N, D)
    np.testing.assert_allclose(out, _exact(q, k, v, [N, 9]), atol=1e-5,
                               rtol=0)


def _expect_invalid(client, model, ins, match, parameters=None,
                    code="StatusCode.INVALID_ARGUMENT", outputs=None):
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, ins, parameters=parameters, outputs=outputs)
    assert _code(e.value) == code, str(e.value)
    assert match in str(e.value), str(e.value)


def test_errors_name_what_is_wrong(client):
    q, k, v = _qkv(6)
    ins = _inputs(q, k, v)
    _expect_invalid(client, "performer", ins, "parameter 'num_features'",
                    {"num_features": 3})  # odd: the core's check
    _expect_invalid(client, "local", ins, "parameter 'window'",
                    {"window": -1})
    _expect_invalid(client, "scatterbrain", ins, "parameter 'sparse'",
                    {"sparse": "everything"})
    _expect_invalid(client, "exact", ins, "parameter 'colour'",
                    {"colour": "blue"})
    _expect_invalid(client, "exact", ins, "parameter 'output_dtype'",
                    {"output_dtype": "INT8"})
    _expect_invalid(client, "nope", ins, "model 'nope'",
                    code="StatusCode.NOT_FOUND")
    kbad = np.zeros((B, H, N, D + 1), np.float32)
    _expect_invalid(client, "exact", _inputs(q, kbad, v), "input 'K'")
    _expect_invalid(client, "exact", _inputs(q, k, v)[:2], "input 'V'")
    _expect_invalid(client, "exact",
                    _inputs(q, k, v, key_lengths=[1, 2, 3]),
                    "input 'KEY_LENGTHS'")
    _expect_invalid(client, "exact", _inputs(q, k, v, key_lengths=[N + 1, 1]),
                    "input 'KEY_LENGTHS'[0]")
    _expect_invalid(client, "exact", ins, "output 'PROBS'",
                    outputs=[grpcclient.InferRequestedOutput("PROBS")])
    i8 = grpcclient.InferInput("Q", [B, H, N, D], "INT8")
    i8.set_data_from_numpy(np.zeros((B, H, N, D), np.int8))
    _expect_invalid(client, "exact", [i8] + ins[1:], "input 'Q'")


def test_stream_answers_in_band_and_goes_on(client):
    q, k, v = _qkv(7)
    results, done = [], threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 4:
            done.set()

    client.start_stream(callback=callback)
    try:
        client.async_stream_infer("exact", _inputs(q, k, v), request_id="a")
        client.async_stream_infer("local", _inputs(q, k, v), request_id="b",
                                  parameters={"window": -5})
        client.async_stream_infer("exact", _inputs(q, k, v), request_id="c")
        client.async_stream_infer("performer", _inputs(q, k, v),
                                  request_id="d",
                                  parameters={"num_features": 16, "seed": 1})
        # Generous: four small requests take milliseconds.
        assert done.wait(60), results
    finally:
        client.stop_stream()
    errors = [e for r, e in results if e is not None]
    oks = {r.get_response().id: r for r, e in results if e is None}
    assert len(errors) == 1 and "parameter 'window'" in str(errors[0])
    assert "INVALID_ARGUMENT" in str(errors[0])
    assert sorted(oks) == ["a", "c", "d"]
    for rid in ("a", "c"):
        np.testing.assert_allclose(oks[rid].as_numpy("OUT"), _exact(q, k, v),
                                   atol=1e-5, rtol=0)


def test_system_shared_memory(client):
    q, k, v = _qkv(8)
    nbytes = q.nbytes
    tag = f"sbk{os.getpid()}"
    regions = {}
    try:
        for name, a in (("q", q), ("k", k), ("v", v)):
            h = shm.create_shared_memory_region(f"{tag}_{name}",
                                                f"/{tag}_{name}", nbytes)
            shm.set_shared_memory_region(h, [a])
            regions[name] = h
            client.register_system_shared_memory(f"{tag}_{name}",
                                                 f"/{tag}_{name}", nbytes)
        # The output region: 64 bytes of slack in front, used via offset.
        regions["out"] = shm.create_shared_memory_region(
            f"{tag}_out", f"/{tag}_out", nbytes + 64)
        client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out",
                                             nbytes + 64)
        status = client.get_system_shared_memory_status(as_json=True)
        assert {f"{tag}_{n}" for n in ("q", "k", "v", "out")} <= \
            set(status["regions"])

        def shm_inputs(q_size=nbytes, q_offset=0, q_region=f"{tag}_q"):
            ins = []
            for name, region, size, off in (("Q", q_region, q_size, q_offset),
                                            ("K", f"{tag}_k", nbytes, 0),
                                            ("V", f"{tag}_v", nbytes, 0)):
                i = grpcclient.InferInput(name, [B, H, N, D], "FP32")
                i.set_shared_memory(region, size, off)
                ins.append(i)
            return ins

        out = grpcclient.InferRequestedOutput("OUT")
        out.set_shared_memory(f"{tag}_out", nbytes, offset=64)
        r = client.infer("exact", shm_inputs(), outputs=[out])
        meta = r.get_output("OUT")  # described, its bytes not in the reply
        assert list(meta.shape) == [B, H, N, D] and meta.datatype == "FP32"
        assert not r.get_response().raw_output_contents
        got = shm.get_contents_as_numpy(regions["out"], np.float32,
                                        [B, H, N, D], offset=64)
        np.testing.assert_allclose(got, _exact(q, k, v), atol=1e-5, rtol=0)

        # Shared-memory inputs with the output in the response.
        r = client.infer("exact", shm_inputs())
        np.testing.assert_allclose(r.as_numpy("OUT"), _exact(q, k, v),
                                   atol=1e-5, rtol=0)

        # Out of bounds, too small, unregistered: INVALID_ARGUMENT, no read.
        _expect_invalid(client, "exact", shm_inputs(q_offset=64), "input 'Q'")
        _expect_invalid(client, "exact", shm_inputs(q_size=nbytes - 4),
                        "input 'Q'")
        small = grpcclient.InferRequestedOutput("OUT")
        small.set_shared_memory(f"{tag}_out", nbytes - 4)
        _expect_invalid(client, "exact", shm_inputs(), "output 'OUT'",
                        outputs=[small])
        client.unregister_system_shared_memory(f"{tag}_q")
        _expect_invalid(client, "exact", shm_inputs(), "input 'Q'")
    finally:
        client.unregister_system_shared_memory()
        for h in regions.values():
            shm.destroy_shared_memory_region(h)
    assert client.get_system_shared_memory_status(as_json=True).get(
        "regions", {}) == {}


def test_statistics(client):
    q, k, v = _qkv(9)
    before = client.get_inference_statistics("local", as_json=True)
    s0 = before["model_stats"][0]["inference_stats"]
    n0 = int(s0.get("success", {}).get("count", 0))
    f0 = int(s0.get("fail", {}).get("count", 0))
    for _ in range(3):
        client.infer("local", _inputs(q, k, v), parameters={"window": 8})
    with pytest.raises(InferenceServerException):
        client.infer("local", _inputs(q, k, v), parameters={"window": -1})
    st = client.get_inference_statistics("local", as_json=True)
    m = st["model_stats"][0]
    s = m["inference_stats"]
    assert m["name"] == "local" and m["version"] == "1"
    assert int(s["success"]["count"]) == n0 + 3
    assert int(s["fail"]["count"]) == f0 + 1
    assert int(s["queue"]["ns"]) > 0 and int(s["compute_infer"]["ns"]) > 0
    assert int(m["inference_count"]) >= 3 * B
    every = client.get_inference_statistics(as_json=True)
    assert [x["name"] for x in every["model_stats"]] == MODELS
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert _code(e.value) == "StatusCode.NOT_FOUND"


def test_both_protocols_batch_together():
    """A batch closes at 2 requests or after 20 s: a v1 and a KServe
    request with the same settings sent together run as one batch (the
    20 s bound only matters if the two arrive that far apart)."""
    s = kserve_server.start(["--max_batch_requests=2",
                        "--max_queue_delay_us=20000000"])
    try:
        q, k, v = _qkv(10)
        got = {}

        def v1():
            got["v1"] = sb.attend(q, k, v, method="exact", target=s.target,
                                  return_stats=True)[1]["batch_size"]

        t = threading.Thread(target=v1)
        t.start()
        c = grpcclient.InferenceServerClient(s.target)
        r = c.infer("exact", _inputs(q, k, v))
        t.join(60)
        c.close()
        assert r.get_response().parameters["batch_size"].int64_param == 2
        assert got["v1"] == 2
    finally:
        s.stop()


def test_tokens_and_region_owners(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("tok-a\ntok-b\n")
    s = kserve_server.start([f"--auth_token_file={tokens}"])
    tag = f"sbo{os.getpid()}"
    h = shm.create_shared_memory_region(tag, f"/{tag}", 64)
    try:
        c = grpcclient.InferenceServerClient(s.target)
        assert c.is_server_live()  # health checks take no token
        q, k, v = _qkv(11, (1, 1, 4, 4))
        with pytest.raises(InferenceServerException) as e:
            c.infer("exact", _inputs(q, k, v))
        assert _code(e.value) == "StatusCode.UNAUTHENTICATED"
        a = {"authorization": "Bearer tok-a"}
        b = {"authorization": "Bearer tok-b"}
        out = c.infer("exact", _inputs(q, k, v), headers=a).as_numpy("OUT")
        np.testing.assert_allclose(out, _exact(q, k, v), atol=1e-5, rtol=0)
        c.register_system_shared_memory(tag, f"/{tag}", 64, headers=a)
        assert tag in c.get_system_shared_memory_status(
            as_json=True, headers=a)["regions"]
        # Another identity sees nothing and cannot use the region.
        assert tag not in c.get_system_shared_memory_status(
            as_json=True, headers=b).get("regions", {})
        i = grpcclient.InferInput("Q", [1, 1, 4, 4], "FP32")
        i.set_shared_memory(tag, 64)
        with pytest.raises(InferenceServerException) as e:
            c.infer("exact", [i] + _inputs(q, k, v)[1:], headers=b)
        assert _code(e.value) == "StatusCode.INVALID_ARGUMENT"
        c.unregister_system_shared_memory(headers=a)
        c.close()
    finally:
        shm.destroy_shared_memory_region(h)
        s.stop()
