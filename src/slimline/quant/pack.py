"""Dense bit packing of integer codes, so a 4-bit weight really takes half a byte on disk.

Codes are unsigned (``0 .. 2^bits - 1``, as ``grid.quantize`` produces) and are packed in a flat,
little-endian bit order: value ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of the stream.

* 8 bits: one per byte (a copy).
* 4 bits: two per byte, the even value in the low nibble.
* 2 bits: four per byte, the first value in the two lowest bits.
* 3 bits: eight values in three bytes (24 bits), no padding bits between values.
* 5 bits: eight values in five bytes; 6 bits: four values in three bytes (GGUF Q5 / Q6 grids).

The stream is padded with zero codes to a whole number of bytes (of 3-byte words for 3 bits);
``unpack`` takes the original count and drops the padding, so any length round-trips.
"""

from __future__ import annotations

import math

import torch

from slimline.errors import ConfigError, DataError

_PER_WORD = {8: (1, 1), 4: (2, 1), 2: (4, 1), 3: (8, 3), 5: (8, 5), 6: (4, 3)}  # (values, bytes)


def _check_bits(bits: int) -> tuple[int, int]:
    if bits not in _PER_WORD:
        raise ConfigError(f"cannot pack {bits}-bit codes", f"use one of {sorted(_PER_WORD)}")
    return _PER_WORD[bits]


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes ``pack`` produces for ``numel`` codes."""
    vals, nbytes = _check_bits(bits)
    return math.ceil(numel / vals) * nbytes


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (any shape, values ``0 .. 2^bits-1``) into a flat uint8 tensor."""
    vals, nbytes = _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 2**bits - 1):
        raise DataError(
            f"codes outside 0..{2**bits - 1} cannot be packed in {bits} bits",
            "quantize onto the grid first (slimline.quant.grid.quantize)",
        )
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.clone()
    pad = (-flat.numel()) % vals
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.reshape(-1, vals).to(torch.int64)
    shifts = torch.arange(vals, dtype=torch.int64) * bits
    packed = (words << shifts).sum(1, dtype=torch.int64)  # disjoint bits: sum == bitwise or
    if nbytes > 1:  # 24- or 40-bit words -> little-endian bytes
        byts = torch.stack([(packed >> (8 * i)) & 0xFF for i in range(nbytes)], 1)
        return byts.reshape(-1).to(torch.uint8)
    return packed.to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of ``pack``: the first ``numel`` codes, as a flat uint8 tensor."""
    vals, nbytes = _check_bits(bits)
    packed = packed.reshape(-1)
    if packed.dtype != torch.uint8 or packed.numel() != packed_nbytes(numel, bits):
        raise DataError(
            f"packed {bits}-bit data holds {packed.numel()} {packed.dtype} values, "
            f"expected {packed_nbytes(numel, bits)} uint8 for {numel} codes",
            "the artifact is damaged or was written by another version; re-export it",
        )
    if bits == 8:
        return packed.clone()
    words = packed.to(torch.int64)
    if nbytes > 1:
        b = words.reshape(-1, nbytes)
        words = sum(b[:, i] << (8 * i) for i in range(nbytes))
    shifts = torch.arange(vals, dtype=torch.int64) * bits
    codes = (words[:, None] >> shifts) & (2**bits - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)
