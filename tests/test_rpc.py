"""Hogwild views over llama.cpp's RPC backend: a model split across two `rpc-server`s on loopback and
the local CPU keeps every view exact (the same checks as tests/test_cache.py).

Registering RPC devices is process-wide in llama.cpp (and a dead server aborts the process), so the
checks run in a child process; the servers are `hogwild rpc-server` (llama.cpp's own RPC loop), started
and stopped here, bound to 127.0.0.1 only.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc server on {port} exited: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"rpc server on {port} did not start in {timeout} s")


@pytest.fixture(scope="module")
def servers():
    from hogwild_cpp import native

    try:
        native._rpc_proc("ggml_backend_rpc_add_server", None, [])
    except native.NativeError as exc:
        pytest.skip(str(exc))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs, ports = [], []
    try:
        for _ in range(2):
            port = free_port()
            cmd = [sys.executable, "-m", "cli", "rpc-server", "--host", "127.0.0.1", "-p", str(port), "-t", "1",
                   "--device", "cpu"]
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
            ports.append(port)
        for port, proc in zip(ports, procs):
            wait_listening(port, proc)
        yield [f"127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def run_child(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    res = subprocess.run([sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_views_are_exact_on_a_model_split_over_two_rpc_servers_and_the_cpu(servers, tmp_path):
    """Layer split (llama.cpp's row split needs CUDA's split buffers: RPC devices refuse it)."""
    out = run_child("views", ",".join(servers), "layer", str(tmp_path))
    # the layers really went to both servers (llama.cpp's load log), and to the CPU
    assert "assigned to device RPC0" in out and "assigned to device RPC1" in out, out
    assert "assigned to device CPU" in out, out
    assert "views: ok" in out, out


def test_a_run_over_rpc_servers_matches_a_local_run(servers, tmp_path):
    """`hogwild run --rpc` (layers on the two servers, the rest on the CPU) against the same run on the CPU
    alone: the same tokens, log-probabilities within float noise."""
    from hogwild_cpp.trace import read_trace
    from models import gguf_gen

    model = gguf_gen.write_family_gguf(tmp_path / "m.gguf", "qwen2", n_layer=3, seed=5, weight_std=0.3)
    prompt = tmp_path / "p.txt"
    prompt.write_text("Add 12 and 5.")
    common = [str(model), str(prompt), "-np", "3", "-n", "16", "--temp", "0", "-t", "1", "-c", "4096",
              "--protocol", str(tmp_path / "short.toml"), "--quiet"]
    (tmp_path / "short.toml").write_text('[prompt]\nteam = "{n} of you ({names}) share one workspace."\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for name, extra in [("local", []), ("rpc", ["--rpc", ",".join(servers), "-ngl", "99"])]:
        trace = tmp_path / f"{name}.jsonl"
        res = subprocess.run([sys.executable, "-m", "cli", "run", *common, *extra, "--trace", str(trace)],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode in (0, 3), res.stderr[-2000:]  # 3: --quiet and no answer (random weights)
        runs[name] = [r for r in read_trace(trace)[2]]
    local, remote = runs["local"], runs["rpc"]
    assert [(r["worker"], r["token"]) for r in local] == [(r["worker"], r["token"]) for r in remote]
    assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(local, remote)) < 1e-3


def test_rpc_server_refuses_a_busy_port_in_one_line(servers):
    port = servers[0].rsplit(":", 1)[1]
    res = subprocess.run([sys.executable, "-m", "cli", "rpc-server", "-p", port], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "cannot listen on 127.0.0.1:" in res.stderr and "Traceback" not in res.stderr


def test_an_unreachable_rpc_server_is_a_clear_error():
    from hogwild_cpp import errors, native

    port = free_port()  # nothing listens there
    with pytest.raises(errors.BadInput, match=f"cannot reach the RPC server at 127.0.0.1:{port}"):
        native.add_rpc_servers([f"127.0.0.1:{port}"], timeout=1)
    with pytest.raises(errors.BadInput, match="HOST:PORT"):
        native.add_rpc_servers(["localhost"])


def _child_views(endpoints: str, split_mode: str, tmp: str) -> None:
    """In a child process: add the servers, load the models split over them (three quarters of the layers on
    the servers, the rest and the output on the CPU), run the view checks."""
    from hogwild_cpp import native
    from models import gguf_gen
    from test_cache import CACHE_TYPES, check_shared_prefix_at_offsets, check_views_match_fresh_decodes

    n = native.add_rpc_servers(endpoints.split(","))
    assert n == 2, n
    assert native.add_rpc_servers(endpoints.split(",")) == 0  # a second Hogwild with the same --rpc adds nothing
    one = gguf_gen.write_family_gguf(Path(tmp) / "one.gguf", "llama", n_layer=1, seed=5, weight_std=0.3)
    deep = gguf_gen.write_family_gguf(Path(tmp) / "deep.gguf", "qwen2", n_layer=4, seed=5, weight_std=0.3)
    for path, n_gpu in [(one, 1), (deep, 3)]:
        native.set_verbose(True)  # llama.cpp's load log, to stderr: which device each layer went to
        m = native.Model(path, n_gpu_layers=n_gpu, split_mode=split_mode, tensor_split=[1, 1])
        native.set_verbose(False)
        if path == one:
            for layout in ("combined", "stepwise", "contiguous"):
                check_views_match_fresh_decodes(m, 4, layout, "f32", seed=7)
        else:
            check_shared_prefix_at_offsets(m, 4, "f32", "f32", CACHE_TYPES["f32"][2])
            check_shared_prefix_at_offsets(m, 2, "f16", "f16", CACHE_TYPES["f16"][2], flash="on", noise_floor=True)
        m.close()
    print("views: ok")


if __name__ == "__main__":
    if sys.argv[1] == "views":
        _child_views(*sys.argv[2:])
