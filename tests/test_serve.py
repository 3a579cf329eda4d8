"""`hogwild serve`: the OpenAI API over runs of collaborating workers, in-process on loopback.

Servers run in this process (uvicorn on 127.0.0.1, an ephemeral port) and are stopped at the end of
each test or module; every wait is bounded. Models: a tiny random llama (it never writes an answer:
the finisher's text is the content) and, once, the default model.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

import cli
from hogwild_cpp import Hogwild
from hogwild_cpp.default_model import default_model
from hogwild_cpp.server import Server, create_app, listen
from models import gguf_gen

ROOT = Path(__file__).resolve().parent.parent
HOGWILD = str(Path(sys.executable).with_name("hogwild"))
CHAT = "/v1/chat/completions"
PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"
BASE = dict(workers=2, max_steps=6, n_ctx=4096, threads=1, temp=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("serve") / "tiny.gguf", n_embd=64, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3)


@contextmanager
def serving(model_path, api_key=None, max_queue=8, model_id=None, **settings):
    """A server on 127.0.0.1 (an ephemeral port) for the block; its own model and engine thread."""
    hw = Hogwild(model_path, **{**BASE, **settings})
    app = create_app(hw, model_id=model_id, api_key=api_key, max_queue=max_queue)
    sock = listen("127.0.0.1", 0)
    server = Server(app, log_level="warning", timeout_graceful_shutdown=5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"
        sock.close()
        hw.close()


@pytest.fixture(scope="module")
def url(tiny):
    with serving(tiny, model_id="tiny") as u:
        yield u


def client(url, key="none", **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def health(url):
    return httpx.get(url + "/health", timeout=10).json()


def wait_idle(url, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        h = health(url)
        if not h["running"] and not h["waiting"]:
            return h
        assert time.monotonic() < deadline, f"the server is still busy: {h}"
        time.sleep(0.05)


def sse_events(lines):
    """The JSON objects of an SSE stream, up to [DONE]."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return out, True
            out.append(json.loads(line[len("data: "):]))
    return out, False


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert err["param"] == param, err
    return err


# --- the openai client ---------------------------------------------------------------------------

def test_health_and_models(url):
    h = health(url)
    assert h["status"] == "ok" and h["model"] == "tiny" and h["max_queue"] == 8 and h["running"] is False
    models = client(url).models.list().data
    assert [m.id for m in models] == ["tiny"] and models[0].owned_by == "hogwild_cpp"


def test_chat_with_the_openai_client(url):
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}],
        extra_body={"hogwild": {"workers": 3, "names": ["Ann", "Ben", "Cy"], "max_steps": 5}})
    h = r.model_extra["hogwild"]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert list(h["workers"]) == ["Ann", "Ben", "Cy"] == h["settings"]["names"]
    assert all(h["workers"][n].strip() for n in h["workers"])
    assert h["reason"] == "budget" and h["steps"] == 5
    assert set(h["generated"]) == {"Ann", "Ben", "Cy"} and all(1 <= n <= 5 for n in h["generated"].values())
    # a random model writes no answer: the content is what the finisher wrote
    content = r.choices[0].message.content
    assert content == (h["answer"] if h["answer"] is not None else h["finisher"].strip())
    assert r.choices[0].finish_reason == ("stop" if h["answer"] is not None else "length")
    assert h["answer_source"] in (None, "finisher")
    u = r.usage
    assert u.prompt_tokens > 100 and u.completion_tokens >= 15
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    t = h["timings"]
    assert 0 <= t["queued_s"] and 0 < t["prompt_s"] and 0 < t["generate_s"] and t["total_s"] >= t["prompt_s"]


def test_streaming_chat_matches_the_plain_response(url):
    """Greedy workers: the stream and the plain response of one request agree; the stream sends each
    worker's tokens as they come, then the answer as content, then usage."""
    c = client(url)
    kw = dict(model="tiny", messages=[{"role": "user", "content": PROBLEM}],
              extra_body={"hogwild": {"max_steps": 6}})
    plain = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed: dict[str, str] = {}
    for ch in chunks:
        assert ch.id == chunks[0].id and ch.object == "chat.completion.chunk"
        for name, text in ((ch.model_extra or {}).get("hogwild") or {}).get("delta", {}).items():
            streamed[name] = streamed.get(name, "") + text
    assert set(streamed) == {"Alice", "Bob"} and all(streamed.values())
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == plain.choices[0].message.content
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == plain.choices[0].finish_reason
    summary = final[0].model_extra["hogwild"]
    assert summary["workers"] == plain.model_extra["hogwild"]["workers"]
    assert summary["reason"] == plain.model_extra["hogwild"]["reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_completions_with_the_openai_client(url):
    c = client(url)
    r = c.completions.create(model="tiny", prompt=PROBLEM, max_tokens=4, temperature=0.7, seed=5, top_p=0.9,
                             extra_body={"top_k": 20, "min_p": 0.1})
    h = r.model_extra["hogwild"]
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert h["steps"] == 4 and h["settings"]["temperature"] == 0.7 and h["settings"]["seed"] == 5
    assert h["settings"]["top_k"] == 20 and h["settings"]["min_p"] == 0.1 and h["settings"]["top_p"] == 0.9
    assert r.choices[0].text == (h["answer"] if h["answer"] is not None else h["finisher"].strip())
    chunks = list(c.completions.create(model="tiny", prompt=[PROBLEM], max_tokens=4, temperature=0.7, seed=5,
                                       top_p=0.9, stream=True, extra_body={"top_k": 20, "min_p": 0.1}))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert any("delta" in ((ch.model_extra or {}).get("hogwild") or {}) for ch in chunks)
    assert chunks[-1].model_extra["hogwild"]["workers"] == h["workers"]  # same seed, same run


def test_a_chats_system_messages_are_its_system_prompt_over_the_servers(tiny, run_prompts):
    """As llama.cpp's server: a chat request's system messages (and OpenAI's "developer" ones), joined,
    open the workers' prompt in place of the server's -sys; without one, and on /v1/completions, the
    server's -sys does."""
    prompts = run_prompts
    with serving(tiny, system_prompt="Server rule.", max_steps=2) as u:
        c = client(u)
        c.chat.completions.create(model="tiny", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "In French."}]},
            {"role": "system", "content": "  "}, {"role": "user", "content": PROBLEM}])
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROBLEM}])
        c.completions.create(model="tiny", prompt=PROBLEM)
    assert len(prompts) == 3  # the tiny model has no chat template: the system prompt opens the text
    assert prompts[0].startswith("Be brief.\n\nIn French.\n\n") and "Server rule." not in prompts[0]
    assert prompts[1].startswith("Server rule.\n\n") and prompts[2].startswith("Server rule.\n\n")


def test_the_default_model_answers(tmp_path):
    """A real model: the content is an answer, written by a worker or forced by the finisher, and
    every worker's streamed tokens are its text (the last one sampled is never written to the cache)."""
    with serving(default_model(), max_steps=8, n_ctx=2048) as u:
        chunks = list(client(u).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "What is 17 + 25?"}], stream=True))
    streamed: dict[str, list[str]] = {}
    for ch in chunks:
        for name, text in ((ch.model_extra or {}).get("hogwild") or {}).get("delta", {}).items():
            streamed.setdefault(name, []).append(text)
    summary = chunks[-1].model_extra["hogwild"]
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content.strip()  # an answer, or the finisher's unclosed one
    assert summary["answer_source"] in ("worker", "finisher", None)
    assert (summary["answer_source"] is None) == (summary["answer"] is None)
    assert set(streamed) == set(summary["workers"])
    for name, pieces in streamed.items():
        text, pos = summary["workers"][name], 0
        for piece in pieces[:-1]:  # in order in the worker's text (step headers come between)
            pos = text.index(piece, pos) + len(piece)


# --- malformed requests: raw HTTP ----------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path, body, param", [
    (CHAT, "{not json", None),
    (CHAT, "[1, 2]", None),
    (CHAT, '"a string"', None),
    (CHAT, {}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    (CHAT, {"messages": [{"role": "user", "content": 42}]}, None),
    (CHAT, {"messages": [{"role": "system", "content": "only rules"}]}, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": "   "}]}, "messages"),
    (CHAT, {"messages": USER, "temperature": "hot"}, "temperature"),
    (CHAT, {"messages": USER, "temperature": -1}, "temperature"),
    (CHAT, {"messages": USER, "stream": "yes"}, "stream"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 2.5}, "max_tokens"),
    (CHAT, {"messages": USER, "n": 2}, "n"),
    (CHAT, {"messages": USER, "seed": -1}, "seed"),
    (CHAT, {"messages": USER, "hogwild": {"workers": "2"}}, "hogwild.workers"),
    (CHAT, {"messages": USER, "hogwild": {"workers": 0}}, "hogwild.workers"),
    (CHAT, {"messages": USER, "hogwild": {"workers": 1.5}}, "hogwild.workers"),
    (CHAT, {"messages": USER, "hogwild": {"layout": "zigzag"}}, "hogwild"),
    (CHAT, {"messages": USER, "hogwild": {"workers": 3, "names": ["A", "B"]}}, "hogwild"),
    (CHAT, {"messages": USER, "hogwild": {"names": ["A", "A"]}}, "hogwild"),
    (CHAT, {"messages": USER, "hogwild": {"wrkers": 2}}, "hogwild.wrkers"),
    (CHAT, {"messages": USER, "hogwild": [2]}, "hogwild"),
    ("/v1/completions", {"prompt": ["one", "two"]}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, None),
    ("/v1/completions", {"messages": USER}, "prompt"),
])
def test_malformed_requests_get_openai_errors(url, path, body, param):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=10)
    assert_openai_error(r, 400, param)


def test_other_http_errors(url):
    assert_openai_error(httpx.post(url + CHAT, content="hi", headers={"content-type": "text/plain"}), 400)
    assert assert_openai_error(httpx.get(url + "/v1/nothing"), 404)["code"] == "not_found"
    assert assert_openai_error(httpx.get(url + CHAT), 405)["code"] == "method_not_allowed"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_too_long_for_the_context_is_a_400_not_a_broken_stream(url, stream):
    r = httpx.post(url + CHAT, json={"messages": [{"role": "user", "content": "x " * 6000}], "stream": stream},
                   timeout=60)
    assert "do not fit" in assert_openai_error(r, 400)["message"]
    assert wait_idle(url)["failed"] >= 1


# --- many clients ------------------------------------------------------------------------------

def _ask(url, i, stream):
    """Request i: its own worker names, so that a mixed-up answer shows."""
    names = [f"A{i}", f"B{i}"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Problem {i}: {PROBLEM}"}],
            "stream": stream, "hogwild": {"names": names, "max_steps": 3 + i % 3}}
    with httpx.Client(timeout=120) as c:
        r = c.post(url + CHAT, json=body)
        if r.status_code != 200:
            return i, names, r, None
        if stream:
            events, done = sse_events(r.text.splitlines())
            assert done, r.text
            final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
            assert len(final) == 1
            for e in events:
                assert set((e.get("hogwild") or {}).get("delta", {})) <= set(names)
            return i, names, r, final[0]["hogwild"]
        return i, names, r, r.json()["hogwild"]


def _check_answered(i, names, summary):
    assert list(summary["workers"]) == names and summary["settings"]["names"] == names
    assert summary["steps"] == 3 + i % 3
    assert all(n in summary["workers"][n] for n in names)


def test_eight_concurrent_requests_are_all_answered_in_their_own_runs(url):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _ask(url, i, stream=i % 2 == 1), range(8)))
    for i, names, r, summary in results:
        assert r.status_code == 200, r.text
        _check_answered(i, names, summary)
    waited = [s["timings"]["queued_s"] for *_, s in results]
    assert max(waited) > 0  # one ran at a time: the others waited their turn
    assert wait_idle(url)["running"] is False


def test_a_full_queue_refuses_cleanly_with_retry_after(tiny):
    with serving(tiny, max_queue=2) as u:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _ask(u, i, stream=i % 2 == 0), range(8)))
        h = wait_idle(u)
    answered = [x for x in results if x[2].status_code == 200]
    refused = [x for x in results if x[2].status_code != 200]
    assert len(answered) + len(refused) == 8 and len(answered) >= 3  # one running and two waiting, at least
    for i, names, r, summary in answered:
        _check_answered(i, names, summary)
    for _, _, r, _ in refused:
        assert assert_openai_error(r, 503)["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
    assert h["refused"] == len(refused) and h["served"] == len(answered)


# --- clients that go away ------------------------------------------------------------------------

LONG = {"max_steps": 100000}  # ends at ctx_full after minutes on this context, unless cancelled


def test_a_client_that_disconnects_mid_stream_cancels_its_run(tiny):
    with serving(tiny, n_ctx=32768) as u:
        t0 = time.monotonic()
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", u + CHAT, json={"messages": USER, "stream": True, "hogwild": LONG}) as r:
                assert r.status_code == 200
                deltas = 0
                for line in r.iter_lines():
                    if '"delta": {"' in line:
                        deltas += 1
                        if deltas == 5:
                            break
        # the run stops within a step, and the server goes on serving
        deadline = time.monotonic() + 20
        while health(u)["cancelled"] < 1:
            assert time.monotonic() < deadline, health(u)
            time.sleep(0.05)
        h = wait_idle(u)
        assert h["cancelled"] == 1 and h["served"] == 0 and time.monotonic() - t0 < 30
        r = httpx.post(u + CHAT, json={"messages": USER, "hogwild": {"max_steps": 3}}, timeout=60)
        assert r.status_code == 200 and r.json()["hogwild"]["steps"] == 3
        assert wait_idle(u)["served"] == 1


def test_a_client_that_gives_up_waiting_or_running_cancels_its_run(tiny):
    """Not streaming: the server notices the closed connection while the run waits or runs."""
    with serving(tiny, n_ctx=32768) as u:
        def give_up(timeout):
            with pytest.raises(httpx.TimeoutException):
                httpx.post(u + CHAT, json={"messages": USER, "hogwild": LONG}, timeout=timeout)

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(give_up, 3.0)
            time.sleep(0.5)
            waiting = pool.submit(give_up, 1.0)  # queued behind the first, gone before its turn
            running.result(30), waiting.result(30)
        deadline = time.monotonic() + 20
        while health(u)["cancelled"] < 2:
            assert time.monotonic() < deadline, health(u)
            time.sleep(0.05)
        assert wait_idle(u)["served"] == 0
        r = httpx.post(u + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200


def test_stopping_the_server_ends_the_runs_in_flight_cleanly(tiny, caplog):
    """A stream ends with a `shutting_down` error event and [DONE], a waiting request gets a 503;
    nothing waits for uvicorn's graceful timeout, nothing is logged as an error."""
    got, plain = [], []

    def read(u):
        with httpx.stream("POST", u + CHAT, json={"messages": USER, "stream": True, "hogwild": LONG},
                          timeout=60) as r:
            got.extend(r.iter_lines())

    t0 = time.monotonic()
    with serving(tiny, n_ctx=32768) as u:
        reader = threading.Thread(target=read, args=(u,), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while not any('"delta"' in line for line in got):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiter = threading.Thread(target=lambda: plain.append(httpx.post(u + CHAT, json={"messages": USER},
                                                                         timeout=60)), daemon=True)
        waiter.start()
        while health(u)["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t_stop = time.monotonic()
    assert time.monotonic() - t_stop < 4  # not uvicorn's graceful timeout (5 s)
    reader.join(10), waiter.join(10)
    events, done = sse_events(got)
    assert done and events[-1]["error"]["code"] == "shutting_down"
    assert plain[0].status_code == 503 and plain[0].json()["error"]["code"] == "shutting_down"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert time.monotonic() - t0 < 40


# --- the API key ---------------------------------------------------------------------------------

def test_the_api_key(tiny):
    with serving(tiny, api_key="s3cret") as u:
        assert httpx.get(u + "/health").status_code == 200  # open, like llama-server's
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for method, path in (("GET", "/v1/models"), ("POST", CHAT), ("POST", "/v1/completions")):
                r = httpx.request(method, u + path, headers=headers, json={"messages": USER, "prompt": "hi"})
                assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
                assert r.headers["WWW-Authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client(u, key="wrong").models.list()
        c = client(u, key="s3cret")
        assert len(c.models.list().data) == 1
        assert c.chat.completions.create(model="m", messages=USER, max_tokens=2).usage.completion_tokens > 0
        # a bad body is still refused after the key, not before
        r = httpx.post(u + CHAT, json={"messages": []}, headers={"Authorization": "Bearer s3cret"})
        assert_openai_error(r, 400, "messages")


# --- the command line ----------------------------------------------------------------------------

def test_serve_has_the_run_commands_settings_options():
    serve = {o for p in cli.main.commands["serve"].params for o in p.opts}
    run = {p.name: p.opts for p in cli.main.commands["run"].params}
    for name in cli._SERVE_SETTINGS:
        if name in run:
            assert set(run[name]) <= serve, name
    assert {"--host", "--port", "--api-key", "--queue", "--alias", "-np", "-n", "-c", "--temp"} <= serve


def _start_cli(*args):
    proc = subprocess.Popen([HOGWILD, "serve", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HOGWILD_API_KEY": ""})
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError("".join(lines))


def test_the_serve_command_serves_and_stops_cleanly_on_ctrl_c(tiny):
    proc, u, _ = _start_cli(str(tiny), "--port", "0", "-n", "3", "-c", "4096", "-t", "1", "--alias", "t")
    try:
        assert health(u)["model"] == "t"
        r = client(u).chat.completions.create(model="t", messages=USER)
        assert r.model_extra["hogwild"]["steps"] == 3
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_the_serve_command_refuses_bad_input_in_one_line(tiny):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        r = subprocess.run([HOGWILD, "serve", str(tiny), "--port", port], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([HOGWILD, "serve", str(tiny), "--names", "A,B,C"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "3 names for 2 workers" in r.stderr
