// abi.h: what the kernel side (cuda_emu.h, compiled with each .cu) and the runtime (runtime.cpp,
// compiled once per sanitizer mode) share. The runtime is a separate object linked into every
// kernel library because it is ~80% of the compile time: building it once makes each kernel (and
// each mutant of one) cost ~1.5 s instead of ~6 s under UBSan.
//
// Everything here has hidden visibility (-fvisibility=hidden): each kernel library carries its own
// copy of the runtime and its state, and exports only the cuemu_* C functions cuemu.py calls.
#pragma once
#include <cstdint>

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

namespace cuemu {

// One launch's configuration; mirrored by cuemu.LaunchCfg.
struct LaunchCfg {
    unsigned grid[3], block[3];
    unsigned long long seed;  // 0: threads and blocks in index order; else a seeded shuffle
    int strict;               // 1: what a GPU leaves undefined (see runtime.cpp) is an error
    int ftz;                  // 1: flush subnormals (MXCSR FTZ|DAZ) while the kernel runs
    int reverse_blocks;       // 1: run blocks last to first
};

// One kernel parameter as the C signature declares it; mirrored by cuemu.Param.
struct Param {
    int size;        // sizeof the parameter
    int is_ptr;
    int elem_size;   // pointers: sizeof the pointee (0 for void)
    int elem_kind;   // 0 void / other, 1 signed integer, 2 unsigned integer, 3 floating, 4 bool
    int elem_const;  // pointers: the pointee is const
};

enum class Op : uint8_t {
    ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, SyncWarp,  // warp collectives
    Bar, BarAnd, BarOr, BarCount                           // block barriers
};

// The built-in variables of the thread now running (the kernel reads them as threadIdx etc.).
extern uint3 tid_, bid_;
extern dim3 bdim_, gdim_;

// Run `invoke(ctx)` as every thread of every block of the grid in `c`; 0, or nonzero with the
// reason in cuemu_last_error().
int launch(const LaunchCfg* c, void (*invoke)(void*), void* ctx);

// A warp collective by the calling thread: waits until every lane of `mask` has arrived at the
// same one, returns this lane's result (the shuffled bits, the ballot).
uint64_t warp_collective(Op op, unsigned mask, uint64_t val, int arg, int width, const char* file,
                         int line);
// __syncthreads and its _and/_or/_count forms: waits until every thread of the block arrives.
unsigned block_barrier(Op op, int pred, const char* file, int line);
// Lanes of the caller's warp that exist and have not exited (what __activemask approximates).
unsigned active_mask();
// Fail the launch (assert, __trap) and never return to the kernel.
[[noreturn]] void trap(const char* what, const char* file, int line);

}  // namespace cuemu
