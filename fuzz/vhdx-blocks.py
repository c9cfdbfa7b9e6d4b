#!/usr/bin/env python3
"""Writes a VHDX file in the vhdx fuzz target's input form (see fuzz_targets/vhdx.rs): a flags byte
(checksums fixed, the file's length in MiB) and a record (2-byte block number, 4096 bytes) for every
4 KiB block that is not all zeros. Usage: vhdx-blocks.py IN.vhdx OUT.blocks"""
import sys

data = open(sys.argv[1], "rb").read()
out = bytearray([1 | min(len(data) >> 20, 127) << 1])
for at in range(0, len(data), 4096):
    block = data[at:at + 4096]
    if any(block):
        out += (at // 4096).to_bytes(2, "little") + block
open(sys.argv[2], "wb").write(out)
