"""Triton kernels, one file per op family (forward and backward kernels together).

Importing this package imports triton. The ops layer imports it lazily, only when the Triton backend is
asked for, so a machine without triton still runs the CPU and reference backends. On CPU tensors the Triton
kernels run only under TRITON_INTERPRET=1 (set before triton is imported): that is how the tests run them.
"""
