#!/usr/bin/env python3
"""Copies a CUDA source to the build tree behind a #line directive naming the original.

Build helper for kernels/cuda/meson.build (see the comment there): the copy is what nvcc
compiles, so that the custom target's depend_files can rebuild it when a header changes.
Usage: copy_with_line.py INPUT OUTPUT
"""
import os
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    text = f.read()
with open(dst, "w", encoding="utf-8") as f:
    f.write('#line 1 "%s"\n' % os.path.abspath(src).replace("\\", "/"))
    f.write(text)
