"""System shared memory (Triton's extension) through tritonclient against a
real server: register / status / unregister with Triton's semantics,
inference whose inputs and outputs live in shared memory equal to the
network path (bit for bit: same inputs, same CPU backend), regions at
offsets and mixed with network tensors, the errors (a region too small,
unregistered, out of bounds, a bad key) as INVALID_ARGUMENT without the
server reading outside a region, and regions scoped by the caller's token.
"""

import os
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import kserve_server

SHAPE = (1, 2, 64, 16)  # batch, heads, seq, dim: small, answers in ms
NBYTES = int(np.prod(SHAPE)) * 4
PARAMS = {"window": 4}


@pytest.fixture(scope="module")
def server():
    s = kserve_server.start()
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    c = grpcclient.InferenceServerClient(server.target)
    yield c
    c.unregister_system_shared_memory()  # all of this caller's regions
    c.close()


class Regions:
    """Shared-memory objects made for one test, unlinked at its end."""

    def __init__(self):
        self.handles = []

    def make(self, size, name=None):
        name = name or f"r_{uuid.uuid4().hex[:12]}"
        key = f"/sbt_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        h = shm.create_shared_memory_region(name, key, size)
        self.handles.append(h)
        return name, key, h

    def close(self):
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture()
def regions():
    r = Regions()
    yield r
    r.close()


def _qkv(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(SHAPE).astype(np.float32)
            for n in ("Q", "K", "V")}


def _network_out(client, t, model="local"):
    inputs = []
    for n, a in t.items():
        i = grpcclient.InferInput(n, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    r = client.infer(model, inputs, parameters=PARAMS)
    return r.as_numpy("OUT")


def _code(excinfo):
    return excinfo.value.status()


def _shm_inputs(t, region, offsets):
    inputs = []
    for n, a in t.items():
        i = grpcclient.InferInput(n, list(a.shape), "FP32")
        i.set_shared_memory(region, a.nbytes, offset=offsets[n])
        inputs.append(i)
    return inputs


def test_register_status_unregister(client, regions):
    name, key, _ = regions.make(4096)
    client.register_system_shared_memory(name, key, 1000, offset=96)
    st = client.get_system_shared_memory_status(region_name=name)
    assert len(st.regions) == 1
    r = st.regions[name]
    assert (r.name, r.key, r.offset, r.byte_size) == (name, key, 96, 1000)

    # Triton's semantics: a duplicate name is ALREADY_EXISTS, an unknown
    # name's status NOT_FOUND, unregistering an unknown name a no-op.
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory(name, key, 8)
    assert _code(e) == "StatusCode.ALREADY_EXISTS"
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status(region_name="nope")
    assert _code(e) == "StatusCode.NOT_FOUND"
    client.unregister_system_shared_memory("nope")

    other, key2, _ = regions.make(64)
    client.register_system_shared_memory(other, key2, 64)
    assert set(client.get_system_shared_memory_status().regions) == {
        name, other}
    client.unregister_system_shared_memory(name)
    assert set(client.get_system_shared_memory_status().regions) == {other}
    client.unregister_system_shared_memory()  # all
    assert len(client.get_system_shared_memory_status().regions) == 0


def test_register_errors_are_invalid_argument(client, regions):
    name, key, _ = regions.make(64)
    for args in [(name, "/sbt_no_such_object", 8),  # no such object
                 (name, key, 65),                   # past its end
                 (name, "/../etc/passwd", 8)]:      # not a shm name
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory(*args)
        assert _code(e) == "StatusCode.INVALID_ARGUMENT", args
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory(name, key, 60, offset=8)
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    assert "past the end" in str(e.value)
    assert len(client.get_system_shared_memory_status().regions) == 0


def test_inputs_and_output_in_shared_memory_equal_network(client, regions):
    t = _qkv()
    want = _network_out(client, t)
    # Q, K, V back to back after a 40-byte header (offsets not page
    # aligned), the output in its own region.
    offsets = {"Q": 40, "K": 40 + NBYTES, "V": 40 + 2 * NBYTES}
    in_name, in_key, h_in = regions.make(40 + 3 * NBYTES)
    for n, a in t.items():
        shm.set_shared_memory_region(h_in, [a], offset=offsets[n])
    out_name, out_key, h_out = regions.make(NBYTES)
    client.register_system_shared_memory(in_name, in_key, 40 + 3 * NBYTES)
    client.register_system_shared_memory(out_name, out_key, NBYTES)

    out = grpcclient.InferRequestedOutput("OUT")
    out.set_shared_memory(out_name, NBYTES)
    r = client.infer("local", _shm_inputs(t, in_name, offsets),
                     outputs=[out], parameters=PARAMS)
    # The answer carries no tensor bytes, only where they were written.
    assert sum(len(b) for b in r.get_response().raw_output_contents) == 0
    o = r.get_output("OUT")
    assert list(o.shape) == list(SHAPE)
    assert o.parameters["shared_memory_region"].string_param == out_name
    got = shm.get_contents_as_numpy(h_out, np.float32, SHAPE)
    np.testing.assert_array_equal(got, want)

    # A second request into the same output region overwrites it.
    t2 = _qkv(seed=1)
    for n, a in t2.items():
        shm.set_shared_memory_region(h_in, [a], offset=offsets[n])
    client.infer("local", _shm_inputs(t2, in_name, offsets), outputs=[out],
                 parameters=PARAMS)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(h_out, np.float32, SHAPE),
        _network_out(client, t2))


def test_shared_memory_mixed_with_network_tensors(client, regions):
    t = _qkv(seed=2)
    want = _network_out(client, t, model="exact")
    name, key, h = regions.make(NBYTES)
    shm.set_shared_memory_region(h, [t["K"]])
    client.register_system_shared_memory(name, key, NBYTES)
    inputs = []
    for n, a in t.items():
        i = grpcclient.InferInput(n, list(a.shape), "FP32")
        if n == "K":
            i.set_shared_memory(name, NBYTES)
        else:
            i.set_data_from_numpy(a)
        inputs.append(i)
    r = client.infer("exact", inputs, parameters=PARAMS)  # OUT on the wire
    np.testing.assert_array_equal(r.as_numpy("OUT"), want)


def _infer_error(client, inputs, outputs=None):
    with pytest.raises(InferenceServerException) as e:
        client.infer("local", inputs, outputs=outputs, parameters=PARAMS)
    assert _code(e) == "StatusCode.INVALID_ARGUMENT", str(e.value)
    return str(e.value)


def test_shared_memory_errors_are_invalid_argument(client, regions):
    t = _qkv()
    name, key, h = regions.make(3 * NBYTES)
    for i, a in enumerate(t.values()):
        shm.set_shared_memory_region(h, [a], offset=i * NBYTES)
    client.register_system_shared_memory(name, key, 3 * NBYTES)
    good = {"Q": 0, "K": NBYTES, "V": 2 * NBYTES}

    # An unregistered region, named in the message with its tensor.
    inputs = _shm_inputs(t, name, good)
    inputs[0].set_shared_memory("never_registered", NBYTES)
    msg = _infer_error(client, inputs)
    assert "never_registered" in msg and "not registered" in msg

    # Offset + size past the region's end (by one float).
    inputs = _shm_inputs(t, name, dict(good, V=2 * NBYTES + 4))
    assert "past the region" in _infer_error(client, inputs)

    # A byte size that is not the tensor's.
    inputs = _shm_inputs(t, name, good)
    inputs[1].set_shared_memory(name, NBYTES - 4, offset=NBYTES)
    _infer_error(client, inputs)

    # An output region too small for OUT.
    small, small_key, _ = regions.make(NBYTES // 2)
    client.register_system_shared_memory(small, small_key, NBYTES // 2)
    out = grpcclient.InferRequestedOutput("OUT")
    out.set_shared_memory(small, NBYTES // 2)
    _infer_error(client, _shm_inputs(t, name, good), [out])

    # The server still answers correctly afterwards.
    r = client.infer("local", _shm_inputs(t, name, good), parameters=PARAMS)
    np.testing.assert_array_equal(r.as_numpy("OUT"), _network_out(client, t))


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    (d / "tokens.txt").write_text("tok-alice\ntok-bob\n")
    s = kserve_server.start([f"--auth_token_file={d / 'tokens.txt'}"])
    yield s
    s.stop()


def test_regions_are_scoped_by_token(token_server, regions):
    alice = {"authorization": "Bearer tok-alice"}
    bob = {"authorization": "Bearer tok-bob"}
    c = grpcclient.InferenceServerClient(token_server.target)
    try:
        t = _qkv()
        name, key, h = regions.make(3 * NBYTES, name="shared_name")
        for i, a in enumerate(t.values()):
            shm.set_shared_memory_region(h, [a], offset=i * NBYTES)
        c.register_system_shared_memory(name, key, 3 * NBYTES, headers=alice)
        offsets = {"Q": 0, "K": NBYTES, "V": 2 * NBYTES}

        # Bob sees nothing of alice's region, exactly as of an unknown one.
        assert len(c.get_system_shared_memory_status(
            headers=bob).regions) == 0
        with pytest.raises(InferenceServerException) as e:
            c.get_system_shared_memory_status(region_name=name, headers=bob)
        assert _code(e) == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as e:
            c.infer("local", _shm_inputs(t, name, offsets),
                    parameters=PARAMS, headers=bob)
        assert _code(e) == "StatusCode.INVALID_ARGUMENT"
        assert "not registered" in str(e.value)
        # ... and unregistering everything of his leaves alice's in place.
        c.unregister_system_shared_memory(headers=bob)
        # He may use the same name for his own region.
        c.register_system_shared_memory(name, key, NBYTES, headers=bob)

        r = c.infer("local", _shm_inputs(t, name, offsets),
                    parameters=PARAMS, headers=alice)
        assert r.as_numpy("OUT").shape == SHAPE

        # Without a token, no region calls at all.
        with pytest.raises(InferenceServerException) as e:
            c.get_system_shared_memory_status()
        assert _code(e) == "StatusCode.UNAUTHENTICATED"
    finally:
        for who in (alice, bob):
            c.unregister_system_shared_memory(headers=who)
        c.close()
