"""Poincaré-ball geometry: PyTorch references (CPU path, test oracle) and fused Triton kernels (CUDA path)."""
