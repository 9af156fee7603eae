// runtime.h: the state shared by the scheduler (scheduler.cpp) and the collectives
// (collectives.cpp) that together run a grid's GPU threads as fibers on one OS thread.
//
// Blocks run one after another. Each thread of a block is a fiber (fiber.h) that runs until it
// reaches a collective or exits. A warp collective (__shfl*_sync, __ballot_sync and its votes,
// __syncwarp) completes when every lane named in its mask waits at it; __syncthreads when every
// thread of the block does. Rounds of "run every ready fiber until it blocks" repeat until the
// block is done; a round that wakes nobody while threads still wait is a deadlock.
//
// What a GPU would hang on or leave undefined fails the launch with a message naming the threads
// and source lines (an error, never a hang): lanes of one collective at different lines or with
// different masks, a mask naming lanes that do not exist or excluding the caller, a lane exiting
// while others wait for it, a barrier some threads skip or reach at another line, deadlock, an
// invalid grid or block, a fault in kernel code, a sanitizer report.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "abi.h"
#include "fiber.h"

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer as a race checker between the threads of one block: every GPU thread is a TSan
// fiber, and switches carry no happens-before. __syncthreads and __syncwarp do (a release on
// arrival, an acquire on leaving), and so does the order of blocks (a block's threads happen
// before the next block's: __shared__ is one static copy that every block reuses, so races
// between blocks are not checked); shuffles and votes do not. So a report is a race between
// threads of one block that no barrier orders.
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
// The runtime's own bookkeeping is not the kernel's and must not be checked. In a fiber the
// ignores are counted (Fiber::tsan_ignores): a fiber abandoned inside the runtime by a failed
// launch must drop them before it is destroyed, or TSan stops the process.
#define CUEMU_IGNORE_BEGIN() \
    (AnnotateIgnoreReadsBegin(__FILE__, __LINE__), AnnotateIgnoreWritesBegin(__FILE__, __LINE__))
#define CUEMU_IGNORE_END() \
    (AnnotateIgnoreReadsEnd(__FILE__, __LINE__), AnnotateIgnoreWritesEnd(__FILE__, __LINE__))
#define CUEMU_FIBER_IGNORE_BEGIN() (CUEMU_IGNORE_BEGIN(), ++S.me->tsan_ignores)
#define CUEMU_FIBER_IGNORE_END() (--S.me->tsan_ignores, CUEMU_IGNORE_END())
#else
#define CUEMU_IGNORE_BEGIN() ((void)0)
#define CUEMU_IGNORE_END() ((void)0)
#define CUEMU_FIBER_IGNORE_BEGIN() ((void)0)
#define CUEMU_FIBER_IGNORE_END() ((void)0)
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#define RT __attribute__((no_sanitize_thread))

namespace cuemu {

enum class St : uint8_t { Ready, WaitWarp, WaitBar, Done };

struct Fiber {
    Context ctx;
    St st = St::Done;
    uint3 tid{0, 0, 0};
    unsigned lane = 0, warp = 0;
    // the collective it waits at, and its operands and result
    Op op = Op::Bar;
    unsigned mask = 0;
    int arg = 0, width = 32;
    uint64_t val = 0, result = 0;
    const char* file = "";
    int line = 0;
    char* stack_lo = nullptr;
    size_t stack_size = 0;
    void* asan_fake = nullptr;  // ASan's handle of this fiber's stack while switched out
    unsigned gen = 0;           // TSan: the barrier generation it waits at
    int tsan_ignores = 0;       // TSan: ignore regions it is inside
};

struct Warp {
    unsigned lanes = 0;    // lanes that exist (a block's last warp may be partial)
    unsigned waiting = 0;  // lanes waiting at a warp collective
    unsigned done = 0;     // lanes that exited
};

struct State {
    const LaunchCfg* cfg = nullptr;
    void (*invoke)(void*) = nullptr;
    void* ctx = nullptr;
    unsigned nthreads = 0, nwarps = 0;
    std::vector<Fiber> f;
    std::vector<Warp> w;
    std::vector<unsigned> cur, next;  // fibers to run this round, and woken for the next
    unsigned live = 0, at_bar = 0;
    Fiber* me = nullptr;              // the fiber running now
    Context sched;
    Stacks stacks;
    size_t stack_size = 0;
    void* sched_fake = nullptr;  // ASan: the scheduler's stack while a fiber runs
    const void* sched_stack_lo = nullptr;
    size_t sched_stack_size = 0;
#if defined(__SANITIZE_THREAD__)
    std::vector<void*> tsan_fiber;
    void* tsan_sched = nullptr;
    char launch_sync, end_sync, block_sync[2], bar_sync[2], warp_sync[32][2];
    unsigned long long block_counter = 0;
    unsigned bar_gen = 0, warp_gen[32];
#endif
    bool failed = false;
    std::string error;
    uint64_t rng = 0;
};
extern State S;

inline uint64_t next_rand() {  // splitmix64: the seeded schedules
    uint64_t z = (S.rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
template <class V> inline void shuffle(V& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_rand() % i]);
}

// ---- messages ---------------------------------------------------------------------------------

RT inline std::string where(const Fiber& x) {
    char b[160];
    snprintf(b, sizeof b, "thread (%u,%u,%u) of block (%u,%u,%u) [warp %u lane %u]", x.tid.x,
             x.tid.y, x.tid.z, bid_.x, bid_.y, bid_.z, x.warp, x.lane);
    return b;
}
RT inline std::string site(const char* file, int line) {
    return std::string(file) + ":" + std::to_string(line);
}
RT inline std::string site(const Fiber& x) { return site(x.file, x.line); }
RT inline std::string hex(unsigned v) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", v);
    return b;
}
RT inline void fail(const std::string& msg) {  // the first failure is the one reported
    if (!S.failed) {
        S.failed = true;
        S.error = msg;
    }
}

RT inline const char* op_name(Op o) {
    static const char* const names[] = {
        "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
        "__ballot_sync/__all_sync/__any_sync", "__syncwarp", "__syncthreads",
        "__syncthreads_and", "__syncthreads_or", "__syncthreads_count"};
    return names[(int)o];
}

// Fiber -> scheduler: the running fiber waits (or has exited, when `final`).
void yield(bool final = false);
// Release the block barrier if every live thread waits at it (collectives.cpp); the scheduler
// calls it when a thread exits too, since the others may then be complete.
void try_release_barrier();

}  // namespace cuemu
