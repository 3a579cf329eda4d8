"""ctypes bindings for the hogwild additions to llama.h, on the library llama-cpp-python loads.

Everything else comes from llama-cpp-python's own low-level bindings (`llama_cpp.llama_cpp`).
Importing this module refuses an unpatched library with a clear message.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import os
import struct
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import errors
from .cpu import physical_cores
from .settings import CACHE_TYPES, FLASH_ATTN, SPLIT_MODES, parse_endpoint

ABI_VERSION = 4


class NativeError(errors.RunFailure):
    """The llama.cpp library is missing, unpatched, or refused an operation."""


class ModelLoadError(NativeError, errors.BadInput):
    """llama.cpp could not load the model file (llama.cpp's reason quoted)."""


class Unsupported(NativeError, errors.Unsupported):
    """The patched llama.cpp cannot give this model or context per-view positions (the reason says why)."""


class ContextFull(NativeError):
    """The KV cache has no room for a batch (its tokens, or the per-view copies attention needs); nothing changed."""


# --- hogwild operations: struct llama_hogwild_op, one constructor per operation of llama.h -------

OP_SHARE, OP_SHIFT, OP_FOLD, OP_TAIL, OP_FOLLOW = 0, 1, 2, 3, 4
ALL = -1  # p0 or p1: from the start, or to the end


class Op(NamedTuple):
    """One struct llama_hogwild_op (positions are view positions of `seq`)."""
    kind: int
    seq: int
    dst: int = -1
    p0: int = ALL
    p1: int = ALL
    delta: int = 0


# the constructors below build an Op with tuple.__new__: the same tuple, without the NamedTuple's Python-level
# __new__ (a step at 8 workers builds some 200 of them)
_new = tuple.__new__


def share(seq: int, dst: int, p0: int, p1: int, delta: int) -> Op:
    """dst also sees the cells seq sees at [p0, p1), at p + delta (no data copied)."""
    return _new(Op, (OP_SHARE, seq, dst, p0, p1, delta))


def shift(seq: int, p0: int, p1: int, delta: int) -> Op:
    """seq sees its cells at [p0, p1) at p + delta; other views and K untouched."""
    return _new(Op, (OP_SHIFT, seq, -1, p0, p1, delta))


def fold(seq: int, p0: int = ALL, p1: int = ALL) -> Op:
    """seq's view of [p0, p1) becomes where K is stored (rotated at the next decode); no view changes."""
    return _new(Op, (OP_FOLD, seq, -1, p0, p1, 0))


def tail(seq: int, delta: int) -> Op:
    """seq's next tokens, decoded at view position p, are stored for position p - delta."""
    return _new(Op, (OP_TAIL, seq, -1, ALL, ALL, delta))


def follow(seq: int, dst: int = -1, delta: int = 0) -> Op:
    """dst sees the tokens seq decodes from now on at p + delta, as they are stored (dst -1: no followers)."""
    return _new(Op, (OP_FOLLOW, seq, dst, ALL, ALL, delta))


try:
    import llama_cpp.llama_cpp as ll
except Exception as exc:  # pragma: no cover - depends on the installation
    raise NativeError(
        f"cannot load llama-cpp-python ({exc}); run `make build` to build the patched library") from exc

_lib = ll._lib

if not hasattr(_lib, "llama_hogwild_abi_version"):
    raise NativeError(
        f"the llama.cpp library at {getattr(_lib, '_name', '?')} is not the hogwild-patched build "
        "(no llama_hogwild_* symbols); run `make build`")


class HogwildOp(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("seq", ctypes.c_int32), ("dst", ctypes.c_int32),
                ("p0", ctypes.c_int32), ("p1", ctypes.c_int32), ("delta", ctypes.c_int32)]


assert ctypes.sizeof(HogwildOp) == 6 * 4


def _bind(name, argtypes, restype):
    fn = getattr(_lib, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_abi_version = _bind("llama_hogwild_abi_version", [], ctypes.c_int32)
_check = _bind("llama_hogwild_check", [ll.llama_context_p_ctypes], ctypes.c_int32)
_apply = _bind("llama_hogwild_apply",
               [ll.llama_context_p_ctypes, ctypes.POINTER(HogwildOp), ctypes.c_int32], ctypes.c_int32)
_used_cells = _bind("llama_hogwild_used_cells", [ll.llama_context_p_ctypes], ctypes.c_int32)
_flash_attn = _bind("llama_hogwild_flash_attn", [ll.llama_context_p_ctypes], ctypes.c_int32)
_last_shadows = _bind("llama_hogwild_last_shadows", [ll.llama_context_p_ctypes, ctypes.POINTER(ctypes.c_int32),
                                                     ctypes.POINTER(ctypes.c_int32)], None)
_last_error = _bind("llama_hogwild_last_error", [], ctypes.c_char_p)
_sample = _bind("llama_hogwild_sample", [ll.llama_context_p_ctypes, ctypes.POINTER(ctypes.c_int32),
                                         ctypes.POINTER(ll.llama_sampler_p_ctypes), ctypes.POINTER(ctypes.c_int32),
                                         ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)], ctypes.c_int32)

if _abi_version() != ABI_VERSION:
    raise NativeError(f"hogwild ABI {_abi_version()} in the library, {ABI_VERSION} expected; run `make build`")

# llama.cpp logs go to a ring buffer (shown with -v); errors quote the last lines
_log_lines: collections.deque[str] = collections.deque(maxlen=64)
_log_echo = bool(os.environ.get("HOGWILD_VERBOSE"))


@ll.llama_log_callback
def _log_callback(level, text, user_data):
    msg = text.decode("utf-8", errors="replace")
    _log_lines.append(msg)
    if _log_echo:
        print(msg, end="", file=__import__("sys").stderr)


ll.llama_log_set(_log_callback, ctypes.c_void_p(0))
ll.llama_backend_init()


def gpu_offload_supported() -> bool:
    """Whether layers can go anywhere but the CPU: a GPU of this build, or a device of an RPC server added
    (llama_supports_gpu_offload says yes for every build with the RPC backend, servers or not)."""
    return bool(gpu_memory(remote=True))


def set_verbose(on: bool) -> None:
    global _log_echo
    _log_echo = on


def recent_log(n: int = 8) -> str:
    """The last llama.cpp log lines."""
    return "".join(list(_log_lines)[-n:]).strip()


_PROBLEM = ("error", "fail", "invalid", "bad_alloc", "out of memory", "cannot", "unable", "not ")


def reason(n: int = 4) -> str:
    """llama.cpp's reason for the last failure, on one line: its last log lines that name a problem."""
    lines = [ln.strip() for ln in "".join(list(_log_lines)[-n:]).splitlines() if ln.strip()]
    problems = [ln for ln in lines if any(w in ln.lower() for w in _PROBLEM)]
    return "; ".join(problems or lines[-1:]) or "no reason given"


# --- several devices: local GPUs and llama.cpp's RPC backend -------------------------------------

_GGML_FUNCTIONS = {  # name: (restype, argtypes), the few ggml-backend calls made from here
    "ggml_backend_reg_by_name": (ctypes.c_void_p, [ctypes.c_char_p]),
    "ggml_backend_reg_get_proc_address": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "ggml_backend_reg_dev_count": (ctypes.c_size_t, [ctypes.c_void_p]),
    "ggml_backend_reg_dev_get": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
    "ggml_backend_device_register": (None, [ctypes.c_void_p]),
    "ggml_backend_dev_count": (ctypes.c_size_t, []),
    "ggml_backend_dev_get": (ctypes.c_void_p, [ctypes.c_size_t]),
    "ggml_backend_dev_type": (ctypes.c_int, [ctypes.c_void_p]),
    "ggml_backend_dev_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "ggml_backend_dev_memory": (None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                       ctypes.POINTER(ctypes.c_size_t)]),
}
_DEVICE_TYPE_CPU, _DEVICE_TYPE_GPU = 0, 1  # enum ggml_backend_dev_type


def gpu_memory(remote: bool = False) -> list[tuple[str, int, int]]:
    """(name, bytes free, bytes total) of each GPU with memory of its own that llama.cpp's backends see (CUDA,
    Vulkan, ...), and with remote=True the RPC servers' devices too; [] on a CPU-only build."""
    g, found = _ggml(), []
    for dev in map(g.ggml_backend_dev_get, range(g.ggml_backend_dev_count())):
        name = g.ggml_backend_dev_name(dev)
        if g.ggml_backend_dev_type(dev) != _DEVICE_TYPE_GPU or (name.startswith(b"RPC") and not remote):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append((name.decode(errors="replace"), free.value, total.value))
    return found


@functools.cache
def _ggml():
    """The libggml that libllama uses, found by its soname (a copy opened by path would be a second instance,
    with a device registry of its own), with the signatures of _GGML_FUNCTIONS."""
    for name in ("libggml.so.0", "libggml.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
            break
        except OSError:
            continue
    else:
        raise NativeError("libggml is not loaded")
    for fn, (restype, argtypes) in _GGML_FUNCTIONS.items():
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = restype, argtypes
    return lib


def _rpc_proc(name: str, restype, argtypes):
    """A function of llama.cpp's RPC backend (built with GGML_RPC=ON), found through its registry."""
    g = _ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC")
    addr = g.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not addr:
        raise NativeError("this llama.cpp build has no RPC backend (build with GGML_RPC=ON: `make build`)")
    return ctypes.CFUNCTYPE(restype, *argtypes)(addr)


_rpc_added: set[tuple[str, int]] = set()  # servers whose devices are registered (once a process)


def add_rpc_servers(endpoints: list[str], timeout: float = 5.0) -> int:
    """Make the devices of llama.cpp RPC servers (`hogwild rpc-server`) available to models loaded from now
    on, as llama.cpp's `--rpc` does; returns how many devices they add (none for a server added before).
    llama.cpp aborts the process when it cannot reach a server, so each is reached here first and a dead
    one is a clear error."""
    import socket

    add, g, n = _rpc_proc("ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p]), _ggml(), 0
    for ep in endpoints:
        host, port = parse_endpoint(ep)
        if (host, port) in _rpc_added:  # registering its devices again would give a model each one twice
            continue
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise errors.BadInput(f"cannot reach the RPC server at {ep}: {exc.strerror or exc}") from None
        reg = add(f"{host}:{port}".encode())
        if not reg:
            raise errors.BadInput(f"the RPC server at {ep} offers no device")
        for i in range(g.ggml_backend_reg_dev_count(reg)):
            g.ggml_backend_device_register(g.ggml_backend_reg_dev_get(reg, i))
            n += 1
        _rpc_added.add((host, port))
    return n


def gpu_free_memory() -> int:
    """Free bytes on every device with memory of its own (GPUs, RPC servers' devices): where -ngl puts layers."""
    return sum(free for _, free, _ in gpu_memory(remote=True))


def serve_rpc(host: str, port: int, n_threads: int, devices: str = "cpu", cache_dir: str | None = None) -> None:
    """Run llama.cpp's own RPC server loop (ggml_backend_rpc_start_server) on this build's devices until the
    process ends: `devices` "cpu" (the CPU backend) or "all" (every local accelerator; the CPU when there is
    none, as llama.cpp's rpc-server does)."""
    start = _rpc_proc("ggml_backend_rpc_start_server", None,
                      [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p])
    g = _ggml()
    local = [d for d in map(g.ggml_backend_dev_get, range(g.ggml_backend_dev_count()))
             if not g.ggml_backend_dev_name(d).startswith(b"RPC")]
    cpu = [d for d in local if g.ggml_backend_dev_type(d) == _DEVICE_TYPE_CPU]
    accelerators = [d for d in local if g.ggml_backend_dev_type(d) != _DEVICE_TYPE_CPU]
    devs = cpu if devices == "cpu" else accelerators or cpu
    if not devs:
        raise NativeError(f"no local device to serve ({devices})")
    arr = (ctypes.c_void_p * len(devs))(*devs)
    start(f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, n_threads, len(devs), arr)


class Model:
    """A loaded GGUF model and its vocabulary.

    Layers go to the GPUs and RPC devices as llama.cpp places them: n_gpu_layers (-1: all; "auto": what
    fits with a KV cache as `fit_for` = (n_ctx, type_k, type_v) describes, see offload.py), split_mode (none,
    layer, row), tensor_split (a proportion per device), main_gpu (the device of split mode none).
    """

    def __init__(self, path: str, n_gpu_layers: int | str = 0, split_mode: str = "layer",
                 tensor_split: list[float] | None = None, main_gpu: int = 0,
                 fit_for: tuple[int, str, str] = (0, "f16", "f16")):
        self.path, self.ptr = str(path), None
        self._contexts: weakref.WeakSet[Context] = weakref.WeakSet()
        if n_gpu_layers == "auto":
            from .offload import fit_gpu_layers
            n_gpu_layers = fit_gpu_layers(path, *fit_for)
        self.n_gpu_layers = n_gpu_layers
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.split_mode = SPLIT_MODES[split_mode]
        params.main_gpu = main_gpu
        if tensor_split:
            n = ll.llama_max_devices()
            if len(tensor_split) > n:
                raise errors.BadInput(f"--tensor-split has {len(tensor_split)} parts; this build has {n} devices at most")
            self._tensor_split = (ctypes.c_float * n)(*tensor_split)
            params.tensor_split = self._tensor_split
        _log_lines.clear()
        self.ptr = ll.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ModelLoadError(f"llama.cpp could not load {path}: {reason()}")
        self.vocab = ll.llama_model_get_vocab(self.ptr)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = ll.llama_model_n_ctx_train(self.ptr)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        buf = (ll.llama_token * (len(data) + 8))()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, parse_special)
        if n < 0:
            buf = (ll.llama_token * -n)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The token's text (special tokens too), as bytes: kept once looked up (every step looks up W)."""
        got = self._pieces.get(token)
        if got is not None:
            return got
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        self._pieces[token] = got = buf.raw[:n]
        return got

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        t = ll.llama_model_chat_template(self.ptr, None)
        return t.decode("utf-8", errors="replace") if t else None

    def apply_chat_template(self, messages: list[tuple[str, str]]) -> str | None:
        """llama.cpp's built-in rendering of the model's template; None if it does not know it."""
        msgs = (ll.llama_chat_message * len(messages))(
            *[ll.llama_chat_message(role.encode(), text.encode()) for role, text in messages])
        tmpl = self.chat_template().encode()
        size = 4096 + sum(len(t) for _, t in messages) * 2
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_chat_apply_template(tmpl, msgs, len(messages), True, buf, size)
        if n < 0:
            return None
        if n > size:
            buf = ctypes.create_string_buffer(n)
            n = ll.llama_chat_apply_template(tmpl, msgs, len(messages), True, buf, n)
        return buf.raw[:n].decode("utf-8", errors="replace")

    def special_tokens(self) -> dict[str, int]:
        ids = {"bos": ll.llama_vocab_bos(self.vocab), "eos": ll.llama_vocab_eos(self.vocab),
               "eot": ll.llama_vocab_eot(self.vocab)}
        return {k: v for k, v in ids.items() if v >= 0}

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        # a context uses its model until it is freed
        for ctx in list(self._contexts):
            ctx.close()
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


@dataclass
class ContextConfig:
    n_ctx: int = 2048
    n_batch: int = 512
    n_seq_max: int = 1
    n_threads: int = 0          # 0: the physical cores (cpu.physical_cores)
    type_k: str = "f16"         # a key of CACHE_TYPES
    type_v: str = "f16"         # quantized V needs flash attention (as in llama.cpp)
    flash_attn: str = "auto"    # on | off | auto (on where the backend supports it)
    hogwild: bool = True        # unified KV cache, views checked supported


class Context:
    """A llama.cpp context with a unified KV cache shared by n_seq_max sequences."""

    def __init__(self, model: Model, cfg: ContextConfig):
        self.model, self.cfg = model, cfg
        p = ll.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = cfg.n_ctx, cfg.n_batch, cfg.n_batch
        p.n_seq_max = cfg.n_seq_max
        self.n_threads = cfg.n_threads or physical_cores()  # as llama.cpp's -t default (read from /sys: once)
        p.n_threads = p.n_threads_batch = self.n_threads
        p.type_k, p.type_v = CACHE_TYPES[cfg.type_k], CACHE_TYPES[cfg.type_v]
        p.flash_attn_type = FLASH_ATTN[cfg.flash_attn]
        p.kv_unified = True
        p.swa_full = cfg.hogwild  # sliding-window models: views keep every cell (see llama.h, hogwild)
        p.no_perf = True
        _log_lines.clear()
        _check_room(model, cfg)
        self.ptr = ll.llama_init_from_model(model.ptr, p)
        if not self.ptr:
            raise NativeError(f"llama.cpp could not create a context (n_ctx={cfg.n_ctx}): "
                              f"{reason()}")
        model._contexts.add(self)
        self.n_ctx = ll.llama_n_ctx(self.ptr)
        self.flash_attn = bool(_flash_attn(self.ptr))  # what "auto" resolved to
        self.memory = ll.llama_get_memory(self.ptr)
        self._batch = ll.llama_batch_init(cfg.n_batch, 0, max(1, cfg.n_seq_max))
        if cfg.hogwild and _check(self.ptr) != 0:
            why = _last_error().decode()
            self.close()
            raise Unsupported(why)

    # --- hogwild operations -------------------------------------------------

    def apply(self, ops: list[Op]) -> None:
        """Apply operations in order, in one call (all checked first: nothing is applied on a refusal)."""
        if not ops:
            return
        # the layout of struct llama_hogwild_op: six int32 a row, packed in one struct.pack call (about twice
        # as fast as array.array over the chained rows, and than numpy, for the ~200 rows of a step at W=8)
        n = len(ops)
        rows = (HogwildOp * n).from_buffer_copy(struct.pack(f"{6 * n}i", *itertools.chain.from_iterable(ops)))
        if _apply(self.ptr, rows, n) != 0:
            raise NativeError(_last_error().decode())

    def used_cells(self) -> int:
        return _used_cells(self.ptr)

    def synchronize(self) -> None:
        """Wait for the last decode to finish on the device (llama_decode returns once it is queued)."""
        ll.llama_synchronize(self.ptr)

    def graphs_reused(self) -> int:
        """How many decodes reused the previous compute graph (llama.cpp builds a new one otherwise)."""
        return ll.llama_perf_context(self.ptr).n_reused

    def last_shadows(self) -> tuple[int, int]:
        """The per-view copies the last decode needed: (real, with padding) — scratch cells after the used ones."""
        real, padded = ctypes.c_int32(), ctypes.c_int32()
        _last_shadows(self.ptr, ctypes.byref(real), ctypes.byref(padded))
        return real.value, padded.value

    # --- stock operations ---------------------------------------------------

    def clear(self) -> None:
        ll.llama_memory_clear(self.memory, True)  # tails and followers go too

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        ll.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int) -> None:
        """Stock llama.cpp: dst also holds every cell src holds."""
        ll.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def state_size(self) -> int:
        """Bytes a state save would take (0 when llama.cpp refuses to save)."""
        return ll.llama_state_get_size(self.ptr)

    def decode(self, items: list[tuple[int, int, int, bool]], copy_logits: bool = True) -> list:
        """Decode (token, pos, seq, want_logits) items, in chunks of n_batch.

        Returns the logits of each item that asked for them, in order; with copy_logits=False, their
        output indices in this decode instead (for `sample` and `logits`: no vocabulary-sized copy), which
        needs the items that ask for logits to be in the last chunk.
        """
        logits: list = []
        n_batch = self.cfg.n_batch
        for c0 in range(0, len(items), n_batch):
            chunk = items[c0:c0 + n_batch]
            b = self._batch
            for i, (tok, pos, seq, want) in enumerate(chunk):
                b.token[i], b.pos[i] = tok, pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = want
            b.n_tokens = len(chunk)
            rc = ll.llama_decode(self.ptr, b)
            if rc == 1:
                raise ContextFull(f"the KV cache is full ({self.n_ctx} cells): {reason()}")
            if rc != 0:
                raise NativeError(f"llama_decode failed ({rc}): {reason()}")
            last = c0 + n_batch >= len(items)
            for i, (_, _, _, want) in enumerate(chunk):
                if want and copy_logits:
                    logits.append(self.logits(i))
                elif want:
                    if not last:
                        raise NativeError("outputs without a copy of their logits must be in the last batch")
                    logits.append(i)
        return logits

    def logits(self, output: int) -> np.ndarray:
        """A copy of the logits of output `output` of the last decode."""
        ptr = ll.llama_get_logits_ith(self.ptr, output)
        if not ptr:
            raise NativeError(f"output {output} of the last decode has no logits")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def sample(self, outputs: list[int], samplers: list[Sampler], n_threads: int | None = None,
               whole_vocab: bool = False) -> list[int]:
        """One token for each output of the last decode, with its sampler, in one native call (a thread for every
        8 chains, up to n_threads; default: the context's threads); each sampler accepts its token.
        A chain sees only the candidates it can keep (Sampler.n_keep), not the whole vocabulary: the same
        token, sooner (whole_vocab: every candidate, as llama_sampler_sample does)."""
        n = len(outputs)
        if n == 0:
            return []
        idxs = (ctypes.c_int32 * n)(*outputs)
        chains = (ll.llama_sampler_p_ctypes * n)(*[s.chain for s in samplers])
        keep = (ctypes.c_int32 * n)(*[0 if whole_vocab else s.n_keep for s in samplers])
        tokens = (ctypes.c_int32 * n)()
        threads = n_threads or self.n_threads
        if _sample(self.ptr, idxs, chains, keep, n, threads, tokens) != 0:
            raise NativeError(_last_error().decode())
        return list(tokens)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            ll.llama_batch_free(self._batch)
            ll.llama_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


# bytes of llama.cpp's bookkeeping per KV cell (position, shift, sequence bitset, hogwild deltas), roughly
CELL_BYTES = 48


def _check_room(model: Model, cfg: ContextConfig) -> None:
    """Refuse a context whose KV cache (and cell bookkeeping) is larger than this machine's memory and all its
    GPUs' together: llama.cpp would try, filling the memory before its allocation fails (a one-layer model at
    -c 1000000000 reached 19 GB of RSS before std::bad_alloc)."""
    from .offload import kv_cache_bytes

    kv = kv_cache_bytes(model, cfg.n_ctx, cfg.type_k, cfg.type_v)
    if kv is None:
        return
    need = kv + CELL_BYTES * cfg.n_ctx
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not known here: let llama.cpp try
        return
    have += sum(total for _, _, total in gpu_memory(remote=True))
    if need > have:
        raise NativeError(f"llama.cpp could not create a context (n_ctx={cfg.n_ctx}): its KV cache needs about "
                          f"{need / 2**30:.1f} GiB, more than this machine's memory and GPUs ({have / 2**30:.1f} GiB)")


class Sampler:
    """A llama.cpp sampler chain applied to logits we already hold (one per worker)."""

    def __init__(self, n_vocab: int, temp: float = 0.0, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, seed: int = 0, banned: list[int] = ()):
        self.n_vocab = n_vocab
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        add = lambda smpl: ll.llama_sampler_chain_add(self.chain, smpl)  # noqa: E731
        if banned:
            bias = (ll.llama_logit_bias * len(banned))(*[ll.llama_logit_bias(t, float("-inf")) for t in banned])
            add(ll.llama_sampler_init_logit_bias(n_vocab, len(banned), bias))
        # the candidates that can matter (Context.sample): the chain keeps the best (greedy) or the top_k of the
        # tokens not banned; 0 = all of them (top-k off)
        kept = 1 if temp <= 0 else max(top_k, 0)
        self.n_keep = kept + len(banned) if kept else 0
        if temp <= 0:
            add(ll.llama_sampler_init_greedy())
        else:
            add(ll.llama_sampler_init_top_k(top_k))
            add(ll.llama_sampler_init_top_p(top_p, 1))
            add(ll.llama_sampler_init_min_p(min_p, 1))
            add(ll.llama_sampler_init_temp(temp))
            add(ll.llama_sampler_init_dist(seed))
        self._data = np.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self._ids = np.arange(n_vocab, dtype=np.int32)

    def sample(self, logits: np.ndarray) -> int:
        self._data["id"], self._data["logit"], self._data["p"] = self._ids, logits, 0.0
        arr = ll.llama_token_data_array(
            self._data.ctypes.data_as(ll.llama_token_data_p), self.n_vocab, -1, False)
        ll.llama_sampler_apply(self.chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)  # a sampler may sort into a buffer of its own
        ll.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if getattr(self, "chain", None):
            ll.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self):
        self.close()
