"""cuemu: gpugrad's CUDA kernels (kernels/*.cu), unmodified, executed on the CPU.

Read in this order:
  cuemu.py      compile a .cu with g++ after cuda_emu.h, cached; launch it like a CuPy RawKernel
  fakecupy.py   the slice of CuPy that gpugrad/kernels.py's launchers use, on NumPy + cuemu
  cuda_emu.h    the CUDA a kernel sees: keywords, built-ins, intrinsics, atomics, math
  abi.h         what cuda_emu.h and the runtime share
  runtime.h     the runtime's model and state: each GPU thread a fiber, collectives as rendezvous
  fiber.h       stacks and the context switch
  scheduler.cpp a launch: blocks in turn, each block's fibers in rounds; faults; sanitizer reports
  collectives.cpp  warp shuffles / votes / __syncwarp and the block barriers

Limits: lanes run one after another between collectives, not in lockstep (implicit
warp-synchronous code is not reproduced; TSan mode reports it); memory is sequentially
consistent (no weak-memory or __threadfence issue can show); blocks that wait on each other
would hang; glibc's exp/log are not CUDA's (a few ulp apart); nothing about timing, occupancy,
registers or coalescing. GCC is not NVRTC: gpugrad.kernel_check still compiles the sources.
"""
from .cuemu import EmulationError, Module, compile_many, defaults, sanitize_mode

__all__ = ["EmulationError", "Module", "compile_many", "defaults", "sanitize_mode"]
