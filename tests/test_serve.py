"""``bench serve``: every endpoint in-process (Starlette's TestClient), every hostile upload
answered with a 4xx JSON error while the server stays healthy, the token, ``/predict``'s
numbers equal to ``bench predict``'s, the micro-batcher on a fake predictor, and a bounded
load test plus a graceful stop on a real loopback uvicorn server."""

from __future__ import annotations

import asyncio
import csv
import http.client
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serve_helpers import images, png_claiming, running_server, shared_zoo

LIMIT_MB = 0.25            # small, so the over-size cases cost nothing


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return shared_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(zoo):
    from bench.predict import load_predictor

    return load_predictor(zoo[1])


@pytest.fixture(scope="module")
def files(zoo):
    return images(zoo[0])[:6]


def _ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(predictor):
    from starlette.testclient import TestClient

    from bench.serve import create_app

    app = create_app(predictor, max_batch=4, max_wait_ms=2, max_upload_mb=LIMIT_MB,
                     max_files=3)
    with TestClient(app) as c:
        _ready(c)
        yield c


def _multipart(*named):
    return [("file", (name, data, "image/png")) for name, data in named]


# ---------------------------------------------------------------------------------------------
# Endpoints


def test_page_health_and_model(client, predictor):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="files"' in html and "multiple" in html and "/predict" in html
    # Self-contained: nothing fetched from elsewhere, and the browser is told so.
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert "default-src 'none'" in page.headers["content-security-policy"]
    health = client.get("/health")
    assert health.status_code == 200
    h = health.json()
    assert h["status"] == "ok" and h["model"] == predictor.name
    assert sorted(map(int, h["compile_seconds"])) == [1, 2, 4]
    m = client.get("/model").json()
    assert m["name"] == predictor.name and m["kind"] == "scratch" and m["type"] == "network"
    assert m["classes"] == ["c0", "c1"] and m["input_size"] == [[32, 32]]
    assert set(m["leaderboard"]) == {"rank", "accuracy", "log_loss", "ece", "val_log_loss",
                                     "recommended"}
    assert m["batch_shapes"] == [1, 2, 4] and m["max_files"] == 3 and m["auth"] is False
    assert client.get("/nope").json()["error"].startswith("GET /nope")
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_predict_equals_bench_predict(client, predictor, files, tmp_path):
    from bench.cli import main

    out = tmp_path / "p.csv"
    assert main(["predict", "--from", str(predictor.folder), *map(str, files[:3]),
                 "--out", str(out)]) == 0
    with open(out) as f:
        table = list(csv.reader(f))[1:]
    r = client.post("/predict", files=_multipart(*((p.name, p.read_bytes()) for p in files[:3])))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == [p.name for p in files[:3]]
    assert [p["class"] for p in preds] == [row[1] for row in table]
    got = np.array([[p["probabilities"][c] for c in ("c0", "c1")] for p in preds])
    np.testing.assert_allclose(got, np.array([[float(v) for v in row[2:]] for row in table]),
                               rtol=2e-5)  # the CSV keeps 6 significant digits
    proba, ok, bad = predictor.predict_files(files[:3])
    np.testing.assert_allclose(got, proba, atol=1e-6)
    raw = client.post("/predict?filename=x.png", content=files[0].read_bytes(),
                      headers={"Content-Type": "image/png"})
    one = raw.json()["predictions"]
    assert raw.status_code == 200 and one[0]["filename"] == "x.png"
    np.testing.assert_allclose([one[0]["probabilities"][c] for c in ("c0", "c1")], proba[0],
                               atol=1e-6)


def test_mixed_good_and_bad_files(client, files):
    good = files[0].read_bytes()
    r = client.post("/predict", files=_multipart(("a.png", good), ("junk.png", b"not png"),
                                                 ("b.png", good)))
    assert r.status_code == 200
    body = r.json()
    assert [(p["index"], p["filename"]) for p in body["predictions"]] == [(0, "a.png"),
                                                                           (2, "b.png")]
    assert body["predictions"][0]["probabilities"] == body["predictions"][1]["probabilities"]
    (skip,) = body["skipped"]
    assert skip["index"] == 1 and skip["filename"] == "junk.png" and "not an image" in skip[
        "error"]


def _hostile(files):
    png = files[0].read_bytes()
    mp = "multipart/form-data; boundary=xyz"
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    return {
        "not an image": (dict(files=_multipart(("notes.png", b"hello, world"))), 422,
                         ("notes.png", "not an image")),
        "truncated": (dict(files=_multipart(("half.png", png[:len(png) // 2]))), 422,
                      ("half.png", "truncated")),
        "60000x60000 header": (dict(files=_multipart(("bomb.png", png_claiming(60000, 60000)))),
                               422, ("bomb.png", "pixels")),
        "over the decode budget": (dict(files=_multipart(("big.png", png_claiming(9000, 9000)))),
                                   422, ("big.png", "exceed the budget")),
        "empty raw body": (dict(content=b"", headers={"Content-Type": "image/png"}), 400,
                           ("empty body",)),
        "empty multipart": (dict(content=b"", headers={"Content-Type": mp}), 400,
                            ("empty body",)),
        "multipart cut short": (dict(content=part + png[:50], headers={"Content-Type": mp}), 400,
                                ("broken multipart", "closing boundary")),
        "multipart garbage": (dict(content=b"garbage", headers={"Content-Type": mp}), 400,
                              ("broken multipart",)),
        "multipart without boundary": (dict(content=part, headers={
            "Content-Type": "multipart/form-data"}), 400, ("broken multipart", "boundary")),
        "endless part header": (dict(content=b"--xyz\r\nX-Pad: " + b"a" * 20000,
                                     headers={"Content-Type": mp}), 400,
                                ("broken multipart", "header")),
        "no part named file": (dict(files=[("image", ("a.png", png, "image/png"))]), 400,
                               ("no part named 'file'",)),
        "too many files": (dict(files=_multipart(*[(f"{i}.png", png) for i in range(4)])), 413,
                           ("too many files", "--max-files 3")),
        "over --max-upload-mb": (dict(content=b"\0" * 300_000,
                                      headers={"Content-Type": "image/png"}), 413,
                                 ("262,144 bytes", "--max-upload-mb")),
        "not an image type": (dict(content=b"x", headers={"Content-Type": "text/plain"}), 415,
                              ("'text/plain'",)),
    }


def test_hostile_uploads_get_4xx_json_and_the_server_stays_up(client, files):
    for case, (kwargs, status, words) in _hostile(files).items():
        r = client.post("/predict", **kwargs)
        assert r.status_code == status, (case, r.status_code, r.text)
        err = r.json()["error"]
        assert all(w in err for w in words), (case, err)
        assert "Traceback" not in r.text
        assert client.get("/health").status_code == 200, case


def test_body_limit_is_enforced_while_streaming():
    from bench.serve.uploads import BodyReader, Budget, UploadError

    class Streaming:  # what BodyReader reads of a Starlette request, with no Content-Length
        headers = {"content-type": "image/png"}
        query_params: dict = {}
        pulled = 0

        async def stream(self):
            for _ in range(1024):                    # 64 MB in 64 KiB chunks, made lazily
                Streaming.pulled += 1
                yield b"\0" * 65536

    budget = Budget(10 * 2**20)
    reader = BodyReader(Streaming(), max_bytes=2**20, max_files=3, budget=budget)
    with pytest.raises(UploadError) as e:
        asyncio.run(reader.uploads())
    assert e.value.status == 413 and "refused after 1,114,112 bytes" in str(e.value)
    assert Streaming.pulled == 17                    # 1 MiB + one chunk pulled, not 64 MB
    reader.release()
    assert budget.used == 0
    with pytest.raises(UploadError) as e:           # the budget over all requests: 503
        Budget(100).take(101)
    assert e.value.status == 503 and e.value.retry_after == 1


def test_token(predictor, files, monkeypatch):
    from starlette.testclient import TestClient

    from bench.serve import create_app
    from bench.serve.server import TOKEN_ENV, resolve_token

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env" and resolve_token("flag") == "flag"
    monkeypatch.delenv(TOKEN_ENV)
    assert resolve_token(None) is None
    with TestClient(create_app(predictor, max_batch=2, token="s3cret")) as c:
        _ready(c)
        up = _multipart(("a.png", files[0].read_bytes()))
        for path, call in (("/model", lambda **k: c.get("/model", **k)),
                           ("/predict", lambda **k: c.post("/predict", files=up, **k))):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = call(headers=headers)
                assert r.status_code == 401, (path, headers)
                assert "token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
            assert call(headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert c.get("/").status_code == 200 and c.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# The micro-batcher, warming up and a full queue (a fake predictor: no compiling)


class FakePredictor:
    """Predictor's serving surface: one 2x2 input; p(b) = first byte / 255. ``gate``: an
    Event the predictor waits on (to hold a batch, or the warm-up)."""
    name, meta, classes_ = "fake", {"type": "network", "kind": "scratch"}, np.array(["a", "b"])

    def __init__(self, gate=None):
        self.gate = gate
        self.calls: list[tuple[int, int]] = []

    def decode(self, data):
        v = data[0] if isinstance(data, bytes) and data else 0
        return {(2, 2): np.full((2, 2, 3), v, np.uint8)}

    def proba_decoded(self, decoded, batch=None):
        if self.gate is not None:
            assert self.gate.wait(30)
        x = decoded[(2, 2)]
        self.calls.append((len(x), batch))
        m = x[:, 0, 0, 0] / 255.0
        return np.stack([1 - m, m], axis=1)


def test_batcher_groups_pads_and_keeps_order():
    from bench.serve.batcher import MicroBatcher, QueueFull, batch_shapes

    assert batch_shapes(1) == [1] and batch_shapes(6) == [1, 2, 4, 6]
    fake = FakePredictor()
    batcher = MicroBatcher(fake, max_batch=4, max_wait_ms=50, max_queue=8)
    assert batcher.warm_up().keys() == {1, 2, 4} and fake.calls == [(1, 1), (2, 2), (4, 4)]
    fake.calls.clear()

    async def run():
        batcher.start()
        one = [fake.decode(bytes([v])) for v in (10, 20, 30, 40, 50, 60)]
        singles = await asyncio.gather(*(batcher.submit([im]) for im in one))
        three = await batcher.submit(one[:3])
        with pytest.raises(QueueFull):
            await batcher.submit(one + one[:3])
        await batcher.stop()
        return singles, three

    singles, three = asyncio.run(run())
    assert [round(r[0][1] * 255) for r in singles] == [10, 20, 30, 40, 50, 60]
    assert [round(p[1] * 255) for p in three] == [10, 20, 30]
    # Six concurrent images: one full batch, then two padded to shape 2; three padded to 4.
    assert fake.calls == [(4, 4), (2, 2), (3, 4)]
    assert batcher.stats.as_dict() == {"batches": {"2": 1, "4": 2}, "images": 9,
                                       "largest_batch": 4}


@pytest.mark.parametrize("arriving", [0, 1])
def test_a_lone_image_waits_only_while_requests_are_arriving(arriving):
    from bench.serve.batcher import MicroBatcher

    fake = FakePredictor()
    batcher = MicroBatcher(fake, max_batch=4, max_wait_ms=400 if arriving else 5000,
                           arriving=lambda: arriving)

    async def run():
        batcher.start()
        t0 = time.monotonic()
        await batcher.submit([fake.decode(b"\x07")])
        await batcher.stop()
        return time.monotonic() - t0

    took = asyncio.run(run())
    assert (took >= 0.39) if arriving else (took < 2.5), took


def test_warming_up_and_a_full_queue_answer_503():
    from starlette.testclient import TestClient

    from bench.serve import create_app

    gate = threading.Event()
    app = create_app(FakePredictor(gate), max_batch=1, max_queue=1, max_files=1, max_wait_ms=0)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        for r in (c.get("/health"), c.post("/predict", content=b"\x05",
                                           headers={"Content-Type": "image/png"})):
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert c.get("/health").json()["status"] == "warming up"
        gate.set()
        _ready(c)
        gate.clear()                   # hold the next batch: one running, one queued, then full
        post = lambda: c.post("/predict", content=b"\x05", headers={"Content-Type": "image/png"})
        held = [pool.submit(post)]
        time.sleep(0.2)
        held.append(pool.submit(post))
        deadline = time.monotonic() + 10
        while c.get("/health").json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        full = post()
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "busy" in full.json()["error"]
        gate.set()
        assert [f.result(30).status_code for f in held] == [200, 200]


def test_a_failed_warm_up_is_reported():
    from starlette.testclient import TestClient

    from bench.serve import create_app

    class Broken(FakePredictor):
        def proba_decoded(self, decoded, batch=None):
            raise MemoryError("out of memory compiling batch 1\nsecond line")

    app = create_app(Broken(), max_batch=2)
    seen = []
    app.state.service.on_failed = seen.append
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert r.json()["error"] == seen[0] == "MemoryError: out of memory compiling batch 1"
        assert c.post("/predict", content=b"\x01",
                      headers={"Content-Type": "image/png"}).status_code == 503


def test_cli_refuses_bad_flags_in_one_line(zoo, tmp_path, capsys):
    from bench.cli import main
    from bench.serve.server import is_loopback, warn_exposed

    assert main(["serve", "--from", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert main(["serve", "--from", str(zoo[1]), "--max-batch", "0"]) == 2
    assert main(["serve", "--from", str(zoo[1]), "--max-upload-mb", "-1"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--from", str(zoo[1]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("bench serve: error: ") for line in err)
    assert "missing" in err[0] and "--max-batch 0" in err[1] and "--max-upload-mb" in err[2]
    assert f"--port {port}" in err[3] and "cannot listen" in err[3]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    warn_exposed("0.0.0.0", 8000, None)
    warning = capsys.readouterr().err
    assert "anyone who can reach this machine" in warning and "no --token" in warning


# ---------------------------------------------------------------------------------------------
# A real server on loopback: bounded load, the limit on the wire, a graceful stop


def _post_one(base: str, name: str, data: bytes) -> tuple[int, str]:
    host, port = base.rsplit("/", 1)[-1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("POST", f"/predict?filename={name}", body=data,
              headers={"Content-Type": "image/png"})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.status, body["predictions"][0]["class"] if r.status == 200 else body["error"]


def _stream_until_answered(base: str, total: int) -> tuple[int, bytes]:
    """Send a chunked body of ``total`` bytes until the server answers; (bytes sent, reply)."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    sent = 0
    try:
        while sent < total and not select.select([s], [], [], 0)[0]:
            s.sendall(chunk)
            sent += 65536
        reply = s.recv(4096)
    except (BrokenPipeError, ConnectionResetError):
        reply = s.recv(4096) if select.select([s], [], [], 1)[0] else b""
    s.close()
    return sent, reply


def test_load_and_graceful_stop_on_loopback(predictor, files):
    from bench.serve import create_app

    app = create_app(predictor, max_batch=4, max_wait_ms=20, max_upload_mb=LIMIT_MB)
    expected = dict(zip((p.name for p in files),
                        predictor.predict([p.read_bytes() for p in files])))
    jobs = [(files[i % len(files)].name, files[i % len(files)].read_bytes()) for i in range(48)]
    with running_server(app) as (base, server, thread):
        with ThreadPoolExecutor(8) as pool:           # 48 requests, 8 clients at a time
            answers = list(pool.map(lambda job: _post_one(base, *job), jobs, timeout=120))
        assert answers == [(200, expected[name]) for name, _ in jobs]
        stats = app.state.service.batcher.stats
        assert stats.images == 48 and stats.largest > 1, stats   # requests shared batches
        sent, reply = _stream_until_answered(base, 64 * 2**20)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 32 * 2**20, sent                 # refused long before 64 MB arrived
        # A request in flight when the server is told to stop is still answered.
        host, port = base.rsplit("/", 1)[-1].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        data = files[0].read_bytes()
        c.putrequest("POST", "/predict")
        c.putheader("Content-Type", "image/png")
        c.putheader("Content-Length", str(len(data)))
        c.endheaders()
        c.send(data[:10])
        time.sleep(0.2)
        t0 = time.monotonic()
        server.should_exit = True
        time.sleep(0.3)
        c.send(data[10:])
        r = c.getresponse()
        assert r.status == 200 and b"predictions" in r.read()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - t0 < 10
