// collectives.cpp: warp collectives and block barriers, as the scheduler (scheduler.cpp) runs
// them: a fiber that reaches one records what it waits at and yields; the last thread to arrive
// computes everyone's result and makes them ready for the next round.
#include "runtime.h"

namespace cuemu {
// ---- warp collectives --------------------------------------------------------------------------

// The lane whose value lane j of a `width`-lane segment receives (-1: its own).
static int shuffle_source(Op op, unsigned j, int arg, int width) {
    switch (op) {
        case Op::ShflIdx: return (int)(j & ~(unsigned)(width - 1)) + (arg & (width - 1));
        case Op::ShflUp: return (int)(j % width) - arg >= 0 ? (int)j - arg : -1;
        case Op::ShflDown: return (int)(j % width) + arg < width ? (int)j + arg : -1;
        case Op::ShflXor: {
            const int s = (int)j ^ arg;
            return s < (int)(j / width + 1) * width ? s : -1;
        }
        default: return -1;
    }
}

// Complete the collective that `arriving` joined if every lane of its mask waits at it.
RT static void try_resolve_warp(unsigned wi, const Fiber& arriving) {
    Warp& W = S.w[wi];
    const unsigned mask = arriving.mask;
    if ((W.waiting & mask) != mask) return;
    Fiber* L = &S.f[wi * 32];
    for (unsigned j = 0; j < 32; ++j) {  // everyone in the mask waits: at the same collective?
        if (!(mask >> j & 1)) continue;
        const Fiber& y = L[j];
        const bool same_site = y.line == arriving.line && !strcmp(y.file, arriving.file);
        if (y.mask != mask || y.op != arriving.op || (S.cfg->strict && !same_site)) {
            if (y.mask >> arriving.lane & 1)  // y waits for us elsewhere: it can never complete
                fail("warp divergence at a collective: " + where(arriving) + " is at " +
                     op_name(arriving.op) + " (" + site(arriving) + ", mask " + hex(mask) +
                     ") but " + where(y) + " is at " + op_name(y.op) + " (" + site(y) +
                     ", mask " + hex(y.mask) + ")");
            return;  // else y's own group may complete first: wait
        }
    }
    const Op op = arriving.op;
    uint64_t ballot = 0;
    if (op == Op::Ballot)
        for (unsigned j = 0; j < 32; ++j)
            if ((mask >> j & 1) && L[j].val) ballot |= 1ull << j;
    for (unsigned j = 0; j < 32; ++j) {
        if (!(mask >> j & 1)) continue;
        Fiber& y = L[j];
        const int src = shuffle_source(op, j, y.arg, y.width);
        if (op == Op::Ballot) {
            y.result = ballot;
        } else if (op == Op::SyncWarp) {
            y.result = 0;
        } else if (src < 0 || src == (int)j) {
            y.result = y.val;
        } else if (src >= 32 || !(mask >> src & 1)) {
            if (S.cfg->strict) {
                fail(std::string(op_name(op)) + " at " + site(y) + ": " + where(y) +
                     " reads lane " + std::to_string(src) +
                     ", which is not in the mask (undefined value on a GPU)");
                return;
            }
            y.result = y.val;
        } else {
            y.result = L[src].val;
        }
    }
    for (unsigned j = 0; j < 32; ++j) {
        if (!(mask >> j & 1)) continue;
        L[j].st = St::Ready;
        S.next.push_back(wi * 32 + j);
    }
    W.waiting &= ~mask;
#if defined(__SANITIZE_THREAD__)
    if (op == Op::SyncWarp) S.warp_gen[wi & 31]++;
#endif
}

RT uint64_t warp_collective(Op op, unsigned mask, uint64_t val, int arg, int width,
                            const char* file, int line) {
    CUEMU_FIBER_IGNORE_BEGIN();
    Fiber& x = *S.me;
    Warp& W = S.w[x.warp];
    const std::string at = std::string(op_name(op)) + " at " + site(file, line) + ": ";
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        fail(at + "width " + std::to_string(width) + " is not a power of two in [1, 32]");
        yield();
    }
    if (!(mask >> x.lane & 1)) {
        fail(at + where(x) + " calls it with a mask that does not include its own lane "
             "(undefined on a GPU)");
        yield();
    }
    if (S.cfg->strict && (mask & ~W.lanes)) {
        fail(at + "mask " + hex(mask) + " names lanes " + hex(mask & ~W.lanes) +
             " that do not exist in warp " + std::to_string(x.warp) + " (block of " +
             std::to_string(S.nthreads) + " threads)");
        yield();
    }
    if (!S.cfg->strict) mask &= W.lanes;
    if (mask & W.done) {
        fail(at + where(x) + " waits for lanes that have exited (mask " + hex(mask) +
             ", exited " + hex(W.done) + ")");
        yield();
    }
    x.op = op;
    x.mask = mask;
    x.val = val;
    x.arg = arg;
    x.width = width;
    x.file = file;
    x.line = line;
    x.st = St::WaitWarp;
    W.waiting |= 1u << x.lane;
#if defined(__SANITIZE_THREAD__)
    const unsigned g = S.warp_gen[x.warp & 31];
    if (op == Op::SyncWarp) __tsan_release(&S.warp_sync[x.warp & 31][g & 1]);
#endif
    try_resolve_warp(x.warp, x);
    yield();
#if defined(__SANITIZE_THREAD__)
    if (op == Op::SyncWarp) __tsan_acquire(&S.warp_sync[x.warp & 31][g & 1]);
#endif
    const uint64_t r = x.result;
    CUEMU_FIBER_IGNORE_END();
    return r;
}

RT unsigned active_mask() {
    const Warp& W = S.w[S.me->warp];
    return W.lanes & ~W.done;
}

// ---- block barriers ----------------------------------------------------------------------------

// Release the barrier once every live thread waits at it (all at one barrier, none exited).
RT void try_release_barrier() {
    if (S.at_bar == 0 || S.at_bar != S.live) return;
    const Fiber* first = nullptr;
    unsigned count = 0;
    for (auto& y : S.f) {
        if (y.st != St::WaitBar) continue;
        if (!first) first = &y;
        if (S.cfg->strict && (y.line != first->line || strcmp(y.file, first->file) ||
                              y.op != first->op)) {
            fail("threads of one block wait at different barriers: " + where(*first) + " at " +
                 op_name(first->op) + " (" + site(*first) + "), " + where(y) + " at " +
                 op_name(y.op) + " (" + site(y) + ")");
            return;
        }
        count += (unsigned)y.val;
    }
    if (S.cfg->strict && S.live != S.nthreads) {
        fail(std::string(op_name(first->op)) + " at " + site(*first) + ": " +
             std::to_string(S.nthreads - S.live) +
             " thread(s) of the block have exited, the others wait (undefined on a GPU)");
        return;
    }
    for (unsigned i = 0; i < S.nthreads; ++i) {
        Fiber& y = S.f[i];
        if (y.st != St::WaitBar) continue;
        switch (y.op) {
            case Op::BarAnd: y.result = count == S.at_bar; break;
            case Op::BarOr: y.result = count != 0; break;
            case Op::BarCount: y.result = count; break;
            default: y.result = 0;
        }
        y.st = St::Ready;
        S.next.push_back(i);
    }
    S.at_bar = 0;
#if defined(__SANITIZE_THREAD__)
    S.bar_gen++;
#endif
}

RT unsigned block_barrier(Op op, int pred, const char* file, int line) {
    CUEMU_FIBER_IGNORE_BEGIN();
    Fiber& x = *S.me;
    x.op = op;
    x.val = pred != 0;
    x.file = file;
    x.line = line;
    x.st = St::WaitBar;
#if defined(__SANITIZE_THREAD__)
    x.gen = S.bar_gen;
    __tsan_release(&S.bar_sync[x.gen & 1]);
#endif
    S.at_bar++;
    try_release_barrier();
    yield();
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&S.bar_sync[x.gen & 1]);
#endif
    const unsigned r = (unsigned)x.result;
    CUEMU_FIBER_IGNORE_END();
    return r;
}

[[noreturn]] void trap(const char* what, const char* file, int line) {
    fail(std::string(what) + " at " + site(file, line) + " by " + where(*S.me));
    yield();
    __builtin_unreachable();
}

}  // namespace cuemu
