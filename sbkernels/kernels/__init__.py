"""Triton kernels. Each module holds one kernel family and its launcher; inputs are validated by callers."""
