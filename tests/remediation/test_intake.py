"""The webhook intake: status codes, durable acceptance, dedupe, truncatedAlerts, fuzzing."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuwarden.scheduler_agent.remediation.errors import IntakeError
from gpuwarden.scheduler_agent.remediation.intake import Credentials
from gpuwarden.scheduler_agent.remediation.payload import normalise_time, parse_notification
from tests.remediation.conftest import TOKEN, post
from tests.remediation.fakes import alert, notification


def test_accepts_with_202_and_stores_before_answering(make_rem, serve):
    rem = make_rem()
    url = serve(rem) + "/webhook/alertmanager"
    status, body = post(url, notification(alert("GPU-1"), alert("GPU-2")))
    assert status == 202 and body["new"] == 2
    # On disk already, read through a separate connection, before the worker ran at all.
    conn = sqlite3.connect(rem.intake._conn.execute("PRAGMA database_list").fetchone()[2])
    assert conn.execute("SELECT count(*) FROM remediation_events WHERE processed_at IS NULL").fetchone()[0] == 2
    assert rem.intake._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync


@pytest.mark.parametrize(
    "headers,token",
    [
        ({}, None),
        ({}, "wrong"),
        ({}, TOKEN + "x"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, None),
    ],
)
def test_wrong_or_missing_credentials_get_401(make_rem, serve, headers, token):
    rem = make_rem()
    status, body = post(
        serve(rem) + "/webhook/alertmanager", notification(alert("GPU-1")), token=token, headers=headers
    )
    assert status == 401 and "credentials" in body["error"]
    assert rem.intake._conn.execute("SELECT count(*) FROM remediation_events").fetchone()[0] == 0


def test_basic_auth_alternative(make_rem, serve):
    rem = make_rem(credentials=Credentials(None, b"am", b"pw"))
    url = serve(rem) + "/webhook/alertmanager"
    good = "Basic " + base64.b64encode(b"am:pw").decode()
    bad = "Basic " + base64.b64encode(b"am:px").decode()
    assert post(url, notification(alert("GPU-1")), None, {"Authorization": good})[0] == 202
    assert post(url, notification(alert("GPU-1")), None, {"Authorization": bad})[0] == 401
    assert post(url, notification(alert("GPU-1")), "pw")[0] == 401


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda d: d.update(version="3"), "version"),
        (lambda d: d.pop("alerts"), "alerts: expected a list"),
        (lambda d: d["alerts"][0].update(status="pending"), "alerts[0].status"),
        (lambda d: d["alerts"][0].update(startsAt="yesterday"), "alerts[0].startsAt"),
        (lambda d: d["alerts"][0].pop("fingerprint"), "alerts[0].fingerprint: missing"),
        (lambda d: d["alerts"][0]["labels"].update(gpu=0), "alerts[0].labels.gpu"),
        (lambda d: d.update(truncatedAlerts=-1), "truncatedAlerts"),
    ],
)
def test_invalid_body_gets_400_naming_the_field(make_rem, serve, mutate, reason):
    doc = notification(alert("GPU-1"))
    mutate(doc)
    status, body = post(serve(make_rem()) + "/webhook/alertmanager", doc)
    assert status == 400 and reason in body["error"]


def test_malformed_json_gets_400(make_rem, serve):
    status, body = post(serve(make_rem()) + "/webhook/alertmanager", b"{not json")
    assert status == 400 and "not JSON" in body["error"]


def test_oversized_body_gets_413_and_nothing_stored(make_rem, serve):
    rem = make_rem({"max_body_bytes": 4096})
    doc = notification(*[alert(f"GPU-{i}", fingerprint=f"f{i}") for i in range(40)])
    status, body = post(serve(rem) + "/webhook/alertmanager", doc)
    assert status == 413 and "remediation.max_body_bytes" in body["error"]
    assert rem.intake._conn.execute("SELECT count(*) FROM remediation_events").fetchone()[0] == 0


def test_max_body_bytes_above_one_mebibyte_is_honoured(make_rem, serve):
    """A storm's notification of 5,000 alerts (about 2 MB) is accepted when max_body_bytes allows
    it (413 would be final: Alertmanager drops the notification), and refused when it does not."""
    doc = notification(*[alert(f"GPU-{i}", fingerprint=f"f{i}") for i in range(5000)])
    data = json.dumps(doc).encode()
    assert len(data) > 1 << 20
    big = make_rem({"max_body_bytes": 4 << 20})
    status, body = post(serve(big) + "/webhook/alertmanager", data)
    assert (status, body["alerts"]) == (202, 5000)
    small = make_rem({"max_body_bytes": 1 << 20})
    assert post(serve(small) + "/webhook/alertmanager", data)[0] == 413


def test_chunked_notification_is_read_within_the_same_limit(make_rem, serve):
    """Transfer-Encoding: chunked (no Content-Length) is decoded, and counted against the limit."""
    import http.client
    from urllib.parse import urlsplit

    rem = make_rem({"max_body_bytes": 4096})
    url = urlsplit(serve(rem))
    small = json.dumps(notification(alert("GPU-1"))).encode()
    big = json.dumps(notification(*[alert(f"GPU-{i}", fingerprint=f"f{i}") for i in range(40)])).encode()
    answers = []
    for data in (small, big):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request(
            "POST",
            "/webhook/alertmanager",
            body=iter([data[:100], data[100:]]),
            headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        answers.append(conn.getresponse().status)
        conn.close()
    assert answers == [202, 413]
    assert rem.intake._conn.execute("SELECT count(*) FROM remediation_events").fetchone()[0] == 1


def test_unknown_fields_are_ignored(make_rem, serve):
    doc = notification(alert("GPU-1"))
    doc["somethingNew"] = {"x": 1}
    doc["alerts"][0]["silencedBy"] = ["abc"]
    assert post(serve(make_rem()) + "/webhook/alertmanager", doc)[0] == 202


def test_same_instance_redelivered_is_stored_once_and_counted(make_rem):
    rem = make_rem()
    body = json.dumps(notification(alert("GPU-1"))).encode()
    # The same instant written two ways (as two Alertmanagers of a pair might): one key.
    other = json.dumps(notification(alert("GPU-1", starts_at="2024-05-01T12:00:00.000+02:00"))).encode()
    firsts = [rem.intake.accept(b).new_events for b in (body, body, other)]
    assert firsts == [1, 0, 0]
    assert [tuple(r) for r in rem.intake._conn.execute("SELECT deliveries FROM remediation_events")] == [(3,)]


def test_firing_and_resolved_of_one_instance_are_two_events(make_rem):
    rem = make_rem()
    a = rem.intake.accept(json.dumps(notification(alert("GPU-1"))).encode())
    b = rem.intake.accept(json.dumps(notification(alert("GPU-1", status="resolved"))).encode())
    assert (a.new_events, b.new_events) == (1, 1)


def test_truncated_alerts_recorded_logged_and_counted(make_rem, caplog):
    rem = make_rem()
    with caplog.at_level("WARNING", logger="gpuwarden.scheduler_agent.remediation"):
        acc = rem.intake.accept(json.dumps(notification(alert("GPU-1"), truncated=7)).encode())
    assert acc.truncated_alerts == 7 and acc.new_events == 1
    assert any(getattr(r, "truncated_alerts", None) == 7 for r in caplog.records)
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(rem.collector)
    assert reg.get_sample_value("remediation_truncated_alerts_total") == 7


def test_time_normalisation():
    assert normalise_time("2024-05-01T10:00:00Z", "t") == "2024-05-01T10:00:00.000000000Z"
    assert normalise_time("2024-05-01T12:00:00.123456789+02:00", "t") == "2024-05-01T10:00:00.123456789Z"
    with pytest.raises(IntakeError) as e:
        normalise_time("2024-13-01T00:00:00Z", "alerts[0].startsAt")
    assert e.value.status == 400 and "alerts[0].startsAt" in e.value.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
alert_like = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved", "x"]) | json_values,
        "labels": st.dictionaries(st.text(max_size=8), st.text(max_size=8) | json_values, max_size=4),
        "startsAt": st.sampled_from(
            ["2024-05-01T10:00:00Z", "2024-02-30T10:00:00Z", "9999-12-31T23:59:59.999999999-23:59"]
        )
        | st.text(max_size=30),
        "fingerprint": st.text(max_size=16) | json_values,
    },
    optional={"endsAt": st.text(max_size=30), "annotations": json_values},
)
bodies = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["4", "3", 4]),
        "status": st.sampled_from(["firing", "resolved"]),
        "alerts": st.lists(alert_like, max_size=5) | json_values,
    },
    optional={
        "truncatedAlerts": json_values,
        "groupKey": json_values,
        "receiver": json_values,
        "externalURL": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=bodies | json_values, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_fuzzed_bodies_never_get_5xx(doc, raw, use_raw, fuzz_target):
    url, rem = fuzz_target
    status, _ = post(url, raw if use_raw else json.dumps(doc).encode())
    assert status in (202, 400), status


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """One server for the whole fuzz run (hypothesis calls the test many times)."""
    from gpuwarden.scheduler_agent.remediation.config import parse
    from gpuwarden.scheduler_agent.remediation.service import Remediation
    from gpuwarden.scheduler_agent.web import App
    from tests.remediation.fakes import FakeActuator, FakeScheduler

    rem = Remediation.create(
        str(tmp_path_factory.mktemp("fuzz") / "a.db"),
        parse(None),
        FakeScheduler(["GPU-1"]),
        FakeActuator(),
        credentials=Credentials(TOKEN.encode()),
    )
    app = App(lambda req: False)
    rem.register_routes(app)
    server = app.serve("127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}/webhook/alertmanager", rem
    app.shutdown()
    rem.stop()


def test_parse_rejects_bool_truncated():
    doc = notification(alert("GPU-1"))
    doc["truncatedAlerts"] = True
    with pytest.raises(IntakeError):
        parse_notification(json.dumps(doc).encode())
