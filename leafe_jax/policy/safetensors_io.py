"""Minimal safetensors reader / writer on numpy (+ ml_dtypes for bf16); no torch needed.

Format: little-endian u64 header length, a JSON header ``{name: {dtype, shape,
data_offsets}}``, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    pass


def read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (too short)")
        n = struct.unpack("<Q", raw)[0]
        if n > 100_000_000:
            raise SafetensorsError(f"{path}: implausible header length {n}")
        try:
            header = json.loads(fh.read(n))
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{path}: corrupt header ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read(path: str) -> dict[str, np.ndarray]:
    """All tensors of one file, memory-mapped (zero-copy until used)."""
    header, base = read_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, meta in header.items():
        if meta["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        a, b = meta["data_offsets"]
        if base + b > len(raw):
            raise SafetensorsError(f"{path}: truncated - tensor {name} needs bytes up to {base + b}, "
                                   f"the file has {len(raw)}")
        try:
            out[name] = raw[base + a: base + b].view(_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        except ValueError as e:
            raise SafetensorsError(f"{path}: tensor {name}: data does not fit shape {meta['shape']} "
                                   f"({e})") from None
    return out


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write atomically (temp file + rename): an existing file is never half overwritten."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _NAMES:
            raise SafetensorsError(f"tensor {name}: unsupported dtype {arr.dtype}")
        b = arr.tobytes()
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            fh.write(b)
    os.replace(tmp, path)
