"""Random request bodies never crash the API: every answer is an envelope, never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.client import ApiClient

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
urlish = st.sampled_from(
    [
        "http://a.example/x.png",
        "https://a.example/y.jpg",
        "ftp://x/y",
        "http://",
        "",
        "javascript:1",
        "http://[::1",
        "http://user:pw@h/x",
        "http://a.example/" + "x" * 3000,
    ]
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "images": st.lists(urlish | json_scalars, max_size=25) | json_values,
        "mask": urlish | st.text(max_size=60) | json_values,
        "priority": st.integers(-5, 15) | json_values,
        "engine": st.sampled_from(["auto", "opencv", "lama", "restore", "x"]) | json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_random_bodies_get_envelopes(client: ApiClient, body: dict[str, object]) -> None:
    r = client.http.post("/v3/pic/rw/batch", content=json.dumps(body))
    payload = r.json()
    assert set(payload) == {"code", "msg", "data"}
    assert r.status_code in (200, 400), (r.status_code, payload, body)
    assert r.status_code == (200 if payload["code"] == 0 else payload["code"] // 100)
    if r.status_code == 400:
        assert payload["msg"] and payload["data"] == {}
    else:
        client.http.post(f"/v3/pic/rw/close/{payload['data']['task_id']}")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_random_bytes_get_envelopes(client: ApiClient, raw: bytes) -> None:
    r = client.http.post("/v3/pic/rw/batch", content=raw)
    assert r.status_code in (200, 400), r.text
    assert set(r.json()) == {"code", "msg", "data"}
