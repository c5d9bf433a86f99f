"""Header-only GGUF reading: the metadata key/values and the tensor table, never tensor data.

The file is memory-mapped and only the pages holding the header are touched,
so reading a 100 GB model costs the same as reading a 1 GB one (field notes
B: header reads are cheap; the expensive part of the ``gguf`` package is
importing numpy, which is why this module uses the standard library only and
``infersup inspect`` stays fast).

Format (GGUF v2/v3, little- or big-endian): magic ``GGUF``, u32 version, u64
tensor count, u64 metadata count, the metadata key/values, one info record per
tensor (name, n_dims, dims, ggml type, offset relative to the data section),
then padding to ``general.alignment`` (default 32) and the tensor data.

Big metadata arrays (a 150k-entry ``tokenizer.ggml.tokens``) are skipped and
kept as a ``SkippedArray`` with their length; walking a string array still
costs one length read per entry, which is the dominant cost of a header read.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from infersup.errors import InfersupError

__all__ = [
    "DEFAULT_ALIGNMENT",
    "GGML_TYPES",
    "MAX_KEPT_ARRAY",
    "GGMLType",
    "GGUFError",
    "GGUFHeader",
    "MetaValue",
    "SkippedArray",
    "TensorInfo",
    "ggml_type_by_name",
    "read_header",
    "row_bytes",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# Arrays longer than this keep only their length (per-layer arrays are a few hundred at most).
MAX_KEPT_ARRAY = 1024
_IMPLAUSIBLE_COUNT = 1 << 32


class GGUFError(InfersupError):
    """A GGUF file is missing, not a GGUF, corrupt or truncated. The message names the file."""

    exit_code = 1

    def __init__(self, path: Path | str, what: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {what}", hint)
        self.path = Path(path)
        self.what = what


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: ``block_size`` elements take ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int


_QK_K = 256
# id: (name, block size, type size), from ggml/include/ggml.h and ggml/src/ggml-common.h
# (llama.cpp b11434; the same numbers as gguf-py's GGML_QUANT_SIZES).
_TYPE_TABLE: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 4 + 4 + 32),
    10: ("Q2_K", 256, 2 + 2 + _QK_K // 16 + _QK_K // 4),
    11: ("Q3_K", 256, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + _QK_K // 2 + 12),
    13: ("Q5_K", 256, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
    14: ("Q6_K", 256, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
    15: ("Q8_K", 256, 4 + _QK_K + _QK_K // 8),
    16: ("IQ2_XXS", 256, 2 + _QK_K // 4),
    17: ("IQ2_XS", 256, 2 + _QK_K // 4 + _QK_K // 32),
    18: ("IQ3_XXS", 256, 2 + _QK_K // 4 + _QK_K // 8),
    19: ("IQ1_S", 256, 2 + _QK_K // 8 + _QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
    22: ("IQ2_S", 256, 2 + _QK_K // 4 + _QK_K // 16),
    23: ("IQ4_XS", 256, 2 + 2 + _QK_K // 2 + _QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, _QK_K // 8 + _QK_K // 16 + _QK_K // 32),
    30: ("BF16", 1, 2),
    # 31-33 and 36-38: repacked Q4_0/IQ4_NL layouts that current llama.cpp refuses to
    # load; kept so that `inspect` can still size an old file and say what it holds.
    31: ("Q4_0_4_4", 32, 2 + 16),
    32: ("Q4_0_4_8", 32, 2 + 16),
    33: ("Q4_0_8_8", 32, 2 + 16),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    36: ("IQ4_NL_4_4", 32, 2 + 16),
    37: ("IQ4_NL_4_8", 32, 2 + 16),
    38: ("IQ4_NL_8_8", 32, 2 + 16),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 + 32),
    41: ("Q1_0", 128, 2 + 16),
    42: ("Q2_0", 64, 2 + 16),
}

GGML_TYPES: Mapping[int, GGMLType] = {
    i: GGMLType(i, name, block, size) for i, (name, block, size) in _TYPE_TABLE.items()
}
_BY_NAME = {t.name.lower(): t for t in GGML_TYPES.values()}


def ggml_type_by_name(name: str) -> GGMLType:
    """The ggml type called ``name`` (case-insensitive: ``q8_0``, ``F16``); KeyError if none."""
    return _BY_NAME[name.lower()]


def row_bytes(gtype: GGMLType, n: int) -> int:
    """Bytes of ``n`` consecutive elements (``ggml_row_size``); ValueError if not whole blocks."""
    if n % gtype.block_size:
        raise ValueError(f"{n} elements are not a whole number of {gtype.name} blocks")
    return n // gtype.block_size * gtype.type_size


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array too long to keep (e.g. ``tokenizer.ggml.tokens``): its length only."""

    item_type: int  # GGUF value type of the items (8 = string)
    length: int

    def __len__(self) -> int:
        return self.length


MetaValue: TypeAlias = "str | int | float | bool | tuple[MetaValue, ...] | SkippedArray"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-table entry. ``shape`` is in ggml order (ne[0] first, the contiguous dim)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int  # relative to the header's data_offset
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file except the tensor data."""

    path: Path
    version: int
    metadata: Mapping[str, MetaValue]
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # absolute file offset of the tensor data section
    file_size: int
    alignment: int = DEFAULT_ALIGNMENT
    big_endian: bool = False

    @property
    def data_end(self) -> int:
        """The file size the tensor table needs (end of the last tensor's data)."""
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Truncated(Exception):
    """Internal: a read ran past the end of the file."""


# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
# 9 array, 10 u64, 11 i64, 12 f64
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALAR_FORMATS.update({10: "Q", 11: "q", 12: "d"})
_STRING = 8
_ARRAY = 9


class _Parser:
    """A bounds-checked cursor over the mapped header."""

    def __init__(self, buf: mmap.mmap | bytes, size: int, endian: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.endian = endian
        self.u32 = struct.Struct(endian + "I")
        self.u64 = struct.Struct(endian + "Q")
        self.scalars = {t: struct.Struct(endian + f) for t, f in _SCALAR_FORMATS.items()}
        self.where = "the header"

    def _need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated

    def read_u32(self) -> int:
        self._need(4)
        (v,) = self.u32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def read_u64(self) -> int:
        self._need(8)
        (v,) = self.u64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def read_str(self) -> str:
        n = self.read_u64()
        self._need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def read_value(self, vtype: int) -> MetaValue:
        fmt = self.scalars.get(vtype)
        if fmt is not None:
            self._need(fmt.size)
            (v,) = fmt.unpack_from(self.buf, self.pos)
            self.pos += fmt.size
            return v  # type: ignore[no-any-return]
        if vtype == _STRING:
            return self.read_str()
        if vtype == _ARRAY:
            return self.read_array()
        raise ValueError(f"unknown metadata value type {vtype} in {self.where}")

    def read_array(self) -> MetaValue:
        item_type = self.read_u32()
        count = self.read_u64()
        fmt = self.scalars.get(item_type)
        if count > MAX_KEPT_ARRAY:
            self.skip_items(item_type, count)
            return SkippedArray(item_type, count)
        if fmt is not None:
            n = fmt.size * count
            self._need(n)
            values = struct.unpack_from(f"{self.endian}{count}{fmt.format[-1]}", self.buf, self.pos)
            self.pos += n
            return tuple(values)
        return tuple(self.read_value(item_type) for _ in range(count))

    def skip_items(self, item_type: int, count: int) -> None:
        fmt = self.scalars.get(item_type)
        if fmt is not None:
            self._need(fmt.size * count)
            self.pos += fmt.size * count
        elif item_type == _STRING:
            # The hot loop of a header read (one iteration per vocab entry): locals only.
            unpack, buf, pos = self.u64.unpack_from, self.buf, self.pos
            try:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
            except struct.error:
                raise _Truncated from None
            self.pos = pos
            self._need(0)
        else:  # nested arrays: rare, walk them item by item
            for _ in range(count):
                self.read_value(item_type)


def read_header(path: Path) -> GGUFHeader:
    """Parse the header and tensor table of the GGUF file at ``path``.

    Raises GGUFError (naming the file) when the file is missing, unreadable,
    not a GGUF, of an unsupported version, corrupt, has a truncated header or
    tensor table, or is shorter than its tensor table needs ("truncated: needs
    N bytes, has M": a partial download).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFError(path, _short_file(f.read(), size))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size)
    except FileNotFoundError:
        raise GGUFError(path, "file not found") from None
    except IsADirectoryError:
        raise GGUFError(path, "is a directory, not a GGUF file") from None
    except OSError as err:
        raise GGUFError(path, f"cannot read: {err.strerror or err}") from None


def _short_file(head: bytes, size: int) -> str:
    if head[:4] != GGUF_MAGIC[: len(head[:4])]:
        return f"not a GGUF file ({size} bytes, no GGUF magic)"
    return f"truncated header: the file is only {size} bytes"


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    (version,) = struct.unpack_from("<I", buf, 4)
    endian = "<"
    if version & 0xFFFF == 0:  # a big-endian file read as little-endian (as gguf-py detects it)
        endian = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(path, f"unsupported GGUF version {version} (infersup reads 2 and 3)")

    p = _Parser(buf, size, endian)
    p.pos = 8
    try:
        n_tensors = p.read_u64()
        n_kv = p.read_u64()
        # Real files have thousands at most; a count this big is garbage, not a truncation.
        if max(n_kv, n_tensors) >= _IMPLAUSIBLE_COUNT:
            raise GGUFError(path, f"corrupt header: {n_kv} metadata entries, {n_tensors} tensors")
        metadata: dict[str, MetaValue] = {}
        for i in range(n_kv):
            p.where = f"metadata entry {i + 1} of {n_kv}"
            key = p.read_str()
            p.where = f"metadata entry {i + 1} of {n_kv} ({key!r})"
            metadata[key] = p.read_value(p.read_u32())

        alignment = _alignment(path, metadata)
        tensors = []
        seen: set[str] = set()
        for i in range(n_tensors):
            p.where = f"tensor info {i + 1} of {n_tensors}"
            tensors.append(_tensor_info(path, p, alignment))
            if tensors[-1].name in seen:
                raise GGUFError(
                    path, f"corrupt tensor table: duplicate tensor {tensors[-1].name!r}"
                )
            seen.add(tensors[-1].name)
        p.where = "the padding before the tensor data"
        data_offset = -(-p.pos // alignment) * alignment
    except _Truncated:
        raise GGUFError(
            path,
            f"truncated header: {p.where} runs past the end of the file ({size} bytes)",
        ) from None
    except ValueError as err:
        raise GGUFError(path, f"corrupt header: {err}") from None

    header = GGUFHeader(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tuple(tensors),
        data_offset=data_offset,
        file_size=size,
        alignment=alignment,
        big_endian=endian == ">",
    )
    needed = header.data_end if tensors else p.pos
    if needed > size:
        raise GGUFError(
            path,
            f"truncated: needs {needed} bytes, has {size}",
            hint="a partial download or copy; fetch the file again",
        )
    return header


def _alignment(path: Path, metadata: Mapping[str, MetaValue]) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise GGUFError(path, f"corrupt header: general.alignment {value!r} is not a power of 2")
    return value


def _tensor_info(path: Path, p: _Parser, alignment: int) -> TensorInfo:
    name = p.read_str()
    p.where += f" ({name!r})"
    n_dims = p.read_u32()
    if n_dims > MAX_DIMS:
        raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    shape = tuple(p.read_u64() for _ in range(n_dims))
    type_id = p.read_u32()
    offset = p.read_u64()
    gtype = GGML_TYPES.get(type_id)
    if gtype is None:
        raise GGUFError(
            path,
            f"tensor {name!r} has ggml type {type_id}, which this infersup does not know",
            hint="a newer GGUF than infersup understands; update infersup",
        )
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % gtype.block_size:
        raise ValueError(
            f"tensor {name!r}: row of {shape[0]} is not a whole number of "
            f"{gtype.name} blocks ({gtype.block_size})"
        )
    if offset % alignment:
        raise ValueError(f"tensor {name!r}: data offset {offset} is not aligned to {alignment}")
    return TensorInfo(
        name=name,
        shape=shape,
        ggml_type=type_id,
        type_name=gtype.name,
        offset=offset,
        n_bytes=n // gtype.block_size * gtype.type_size,
    )
