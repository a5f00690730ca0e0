"""Fuzz the safetensors header reader: N mutated files, each must give a clean error or a valid model.

Every case is a small file built from a valid header by one to three random
mutations (dtypes of the wrong type, lying shapes and offsets, huge empty
dimensions, duplicate or control-character names, deep JSON, bad length
prefixes, truncation, trailing bytes, scalar "embeddings" ...). Each is read
the way ``mothertree index`` reads a model (header, every tensor, statistics,
fingerprints) and classified:

``ok``        accepted, and safetensors' own loader accepts the file too;
``error``     refused with a mothertree error (one line);
``unhandled`` any other exception (a bug);
``garbage``   accepted by mothertree but refused by safetensors (a bug);
``hang``      over the per-case time limit (a bug).

Peak memory is the worker's maximum resident set size.

Run::

    python -m mothertree.bench.bench_fuzz --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["make_case", "run_case"]

_BASE = [
    ("model.embed_tokens.weight", "F32", [16, 8]),
    ("model.layers.0.self_attn.q_proj.weight", "F32", [8, 8]),
    ("model.layers.0.mlp.up_proj.weight", "F16", [12, 8]),
    ("model.layers.0.mlp.down_proj.weight", "BF16", [8, 12]),
    ("model.layers.0.input_layernorm.weight", "F32", [8]),
    ("lm_head.weight", "I8", [16, 8]),
]
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}
_WEIRD = [None, True, 1, 1.5, -3, "", "F33", "f32", [], {}, ["F32"], {"dtype": "F32"}, "\x1b[31mF32", "x" * 500]
_SHAPES = [[], [0], [0, 5], [5, 0], [1 << 40, 0], [0, 1 << 40], [-1, 8], [True, 8], [8.0, 8], "8", None,
           [[8], [8]], [1 << 64], [1] * 20, [1 << 20, 1 << 20], [3, 3, 3, 3, 3, 3, 3, 3, 3]]
_NAMES = ["", "\x1b[2J\x1b[31mred", "a" * 5000, "model.embed_tokens.weight", "__metadata__", "../../etc/passwd",
          "model.layers.99999999999999999999.mlp.up_proj.weight", "model.layers.-1.mlp.up_proj.weight", "\u202etxt"]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _encode(pairs) -> bytes:
    """JSON object text from ``(key, value)`` pairs, duplicates kept (``json.dumps`` would merge them)."""
    body = ",".join(json.dumps(k) + ":" + (v if isinstance(v, _Raw) else json.dumps(v)) for k, v in pairs)
    return ("{" + body + "}").encode()


class _Raw(str):
    """A value already encoded as JSON text."""


def _begin(entry: dict) -> int:
    """The entry's begin offset, whatever earlier mutations did to it (0 when unusable)."""
    off = entry.get("data_offsets")
    return off[0] if isinstance(off, list) and off and isinstance(off[0], int) else 0


@dataclass
class _Case:
    """A file being mutated: its header entries (``[name, entry]``), data bytes, metadata and framing."""

    entries: list[list]
    data: bytearray
    meta: object = field(default_factory=lambda: {"format": "pt"})
    prefix_delta: int | None = None
    raw_flip: bool = False


#: Mutation kinds that change the file (metadata, length prefix, data, raw header bytes), not one entry.
_FILE_KINDS = frozenset({6, 7, 8, 9, 10, 13})


def make_case(rnd: random.Random) -> bytes:
    """One mutated safetensors file's bytes."""
    case = _valid_case(rnd)
    for _ in range(rnd.randint(1, 3)):
        kind = rnd.randrange(16)
        e = rnd.choice(case.entries)  # drawn for every kind, so that a seed always gives the same case
        if kind in _FILE_KINDS:
            _mutate_file(rnd, kind, case)
        else:
            _mutate_entry(rnd, kind, e, case.entries)
    return _serialise(rnd, case)


def _valid_case(rnd: random.Random) -> _Case:
    """The valid file every case starts from: :data:`_BASE` tiled in order, random data bytes."""
    entries = []
    offset = 0
    for name, dtype, shape in _BASE:
        size = _numel(shape) * _SIZES[dtype]
        entries.append([name, {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}])
        offset += size
    return _Case(entries, bytearray(rnd.getrandbits(8) for _ in range(offset)))


def _mutate_entry(rnd: random.Random, kind: int, e: list, entries: list[list]) -> None:
    """One mutation of the tensor entry ``e``: its dtype, shape, offsets, name or keys."""
    if kind == 0:
        e[1]["dtype"] = rnd.choice(_WEIRD + list(_SIZES))
    elif kind == 1:
        e[1]["shape"] = rnd.choice(_SHAPES)
    elif kind == 2:
        off = e[1].get("data_offsets")
        b, en = off if isinstance(off, list) and len(off) == 2 and all(type(o) is int for o in off) else (0, 4)
        e[1]["data_offsets"] = rnd.choice([[en, b], [-1, en], [b, en + rnd.randint(1, 64)], [b, 1 << 62], [b],
                                           [b, en, 1], [str(b), en], [float(b), en], None, [b + 1, en + 1]])
    elif kind == 3:
        e[0] = rnd.choice(_NAMES)
    elif kind == 4:
        other = rnd.choice(entries)
        e[0] = other[0]  # duplicate name
    elif kind == 5:
        e[1].pop(rnd.choice(["dtype", "shape", "data_offsets"]), None)
    elif kind == 11:  # a scalar where a matrix belongs
        e[1]["shape"] = []
        e[1]["dtype"] = "F32"
        b = _begin(e[1])
        e[1]["data_offsets"] = [b, b + 4]
    elif kind == 12:  # zero-size tensor with a consistent empty span
        e[1]["shape"] = rnd.choice([[0, 8], [1 << 40, 0], [0], [0, 1 << 20], [(1 << 31) - 1, 0]])
        b = _begin(e[1])
        e[1]["data_offsets"] = [b, b]
    elif kind == 14:
        e[1]["extra"] = rnd.choice([1, "x", [1, 2], {"k": "v"}])
    else:  # scale a shape, keep the offsets: a lying size
        shape = e[1].get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            e[1]["shape"] = [d * rnd.choice([2, 3, 1000]) for d in shape]


def _mutate_file(rnd: random.Random, kind: int, case: _Case) -> None:
    """One mutation of the file around the entries: metadata, length prefix, data length or a header byte."""
    if kind == 6:
        depth = rnd.choice([50, 2000, 100_000])
        case.meta = _Raw("[" * depth + "]" * depth)
    elif kind == 7:
        case.meta = rnd.choice([[], "x", 1, {"a": 1}, {"a": {"b": "c"}}, None])
    elif kind == 8:
        case.prefix_delta = rnd.choice([-9, -1, 1, 1000, 1 << 40, 1 << 63])
    elif kind == 9:
        case.data = case.data[: rnd.randrange(len(case.data) + 1)]
    elif kind == 10:
        case.data += bytes(rnd.randint(1, 64))
    else:
        case.raw_flip = True


def _serialise(rnd: random.Random, case: _Case) -> bytes:
    """The case's bytes: entries in random order, a flipped header byte and a wrong length prefix if asked."""
    pairs = [("__metadata__", case.meta)] + [(n, v) for n, v in case.entries]
    rnd.shuffle(pairs)
    header = _encode(pairs)
    if case.raw_flip and header:
        i = rnd.randrange(len(header))
        header = header[:i] + bytes([rnd.getrandbits(8)]) + header[i + 1:]
    n = len(header) if case.prefix_delta is None else max(0, min(len(header) + case.prefix_delta, (1 << 64) - 1))
    return struct.pack("<Q", n) + header + bytes(case.data)


def run_case(data: bytes, folder: Path) -> str:
    """Read one file as ``mothertree index`` would; returns ok, error, garbage or ``unhandled:<Type>``."""
    from mothertree.indexer import scan_model
    from mothertree.indexer.fingerprints import Fingerprinter
    from mothertree.registry.errors import MothertreeError

    path = folder / "case.safetensors"
    path.write_bytes(data)
    try:
        fp = Fingerprinter(device="cpu")
        scan_model(path, visit=fp.visit)
        fp.finish()
    except MothertreeError as exc:
        return "error" if "\n" not in str(exc) else "unhandled:multiline"
    except Exception as exc:  # anything else is a bug the fuzzer reports
        return f"unhandled:{type(exc).__name__}"
    try:
        from safetensors.torch import load_file

        load_file(str(path))
    except Exception:
        return "garbage"
    return "ok"


class _Hang(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Hang()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-s", type=float, default=10.0, help="per-case time limit (a hang beyond it)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rnd = random.Random(args.seed)
    counts: Counter[str] = Counter()
    examples: dict[str, bytes] = {}
    slowest = 0.0
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports are not a hang
        run_case(make_case(random.Random(-1)), Path(tmp))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.cases):
            data = make_case(rnd)
            start = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, args.limit_s)
            try:
                outcome = run_case(data, Path(tmp))
            except _Hang:
                outcome = "hang"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.monotonic() - start)
            key = outcome.split(":")[0]
            counts[key] += 1
            if key not in ("ok", "error"):
                examples.setdefault(outcome, data[:300])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "cases": args.cases, "seed": args.seed, "ok": counts["ok"], "error": counts["error"],
        "unhandled": counts["unhandled"], "garbage": counts["garbage"], "hang": counts["hang"],
        "slowest_case_s": round(slowest, 3), "peak_rss_mib": round(peak_mib, 1),
        "wall_s": round(time.monotonic() - t0, 1), "bad_examples": {k: repr(v) for k, v in examples.items()},
    }
    print(json.dumps(result, indent=2))
    return 0 if not (counts["unhandled"] or counts["garbage"] or counts["hang"]) else 1


if __name__ == "__main__":
    sys.exit(main())
