// scheduler.cpp: a launch: blocks one after another, each block's threads as fibers in rounds
// (run every ready fiber until it waits or exits, then those its arrival woke), and the launch's
// failures: invalid configuration, deadlock, a fault in kernel code, a sanitizer report.
#include <csetjmp>
#include <csignal>

#define CUEMU_DEFINE_SWITCH
#include "runtime.h"

namespace cuemu {

uint3 tid_, bid_;
dim3 bdim_, gdim_;
State S;

// ---- switching between the scheduler and the fibers -------------------------------------------

[[noreturn]] static void fiber_main();

RT static void resume(Fiber& x) {  // scheduler -> fiber x
    S.me = &x;
    tid_ = x.tid;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(&S.sched_fake, x.stack_lo, x.stack_size);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(S.tsan_fiber[&x - S.f.data()], __tsan_switch_to_fiber_no_sync);
#endif
    switch_context(S.sched, x.ctx);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(S.sched_fake, nullptr, nullptr);
#endif
}

RT void yield(bool final) {
    Fiber& x = *S.me;
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(S.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(final ? nullptr : &x.asan_fake, S.sched_stack_lo,
                                   S.sched_stack_size);
#endif
    switch_context(x.ctx, S.sched);
    (void)final;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(x.asan_fake, &S.sched_stack_lo, &S.sched_stack_size);
#endif
}


RT static void init_fiber(Fiber& x, unsigned i) {
    x.st = St::Ready;
    x.tid = uint3{i % bdim_.x, (i / bdim_.x) % bdim_.y, i / (bdim_.x * bdim_.y)};
    x.lane = i & 31;
    x.warp = i >> 5;
    x.mask = 0;
    x.file = "";
    x.line = 0;
    x.stack_lo = S.stacks.lo(i);
    x.stack_size = S.stack_size;
    x.asan_fake = nullptr;
#if defined(__SANITIZE_ADDRESS__)
    __asan_unpoison_memory_region(x.stack_lo, x.stack_size);  // an abandoned fiber's redzones
#endif
    init_context(x.ctx, x.stack_lo, x.stack_size, fiber_main, S.cfg->ftz);
}

// A lane exits: an error if a lane of its warp waits for it at a collective.
RT static void check_exit_against_waiters(Fiber& x) {
    Warp& W = S.w[x.warp];
    W.done |= 1u << x.lane;
    for (unsigned j = 0; j < 32; ++j) {
        if (!(W.waiting >> j & 1)) continue;
        const Fiber& y = S.f[x.warp * 32 + j];
        if (y.mask >> x.lane & 1) {
            fail(where(x) + " exited while " + where(y) + " waits for it at " + op_name(y.op) +
                 " (" + site(y) + ")");
            return;
        }
    }
}

RT [[noreturn]] static void fiber_main() {
    CUEMU_FIBER_IGNORE_BEGIN();
    Fiber& x = *S.me;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(x.asan_fake, &S.sched_stack_lo, &S.sched_stack_size);
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&S.launch_sync);                            // the launch's arguments
    __tsan_acquire(&S.block_sync[(S.block_counter - 1) & 1]);  // earlier blocks
#endif
    void (*invoke)(void*) = S.invoke;
    void* ctx = S.ctx;
    CUEMU_FIBER_IGNORE_END();
    invoke(ctx);  // the kernel, as this thread
    CUEMU_FIBER_IGNORE_BEGIN();
#if defined(__SANITIZE_THREAD__)
    __tsan_release(&S.block_sync[S.block_counter & 1]);
    __tsan_release(&S.end_sync);
#endif
    x.st = St::Done;
    S.live--;
    check_exit_against_waiters(x);
    try_release_barrier();  // the others may all wait at a barrier now
    CUEMU_FIBER_IGNORE_END();
    yield(true);
    __builtin_unreachable();
}

RT static void describe_deadlock() {
    std::string msg = "deadlock in block (" + std::to_string(bid_.x) + "," +
                      std::to_string(bid_.y) + "," + std::to_string(bid_.z) + "): ";
    int shown = 0;
    for (auto& y : S.f) {
        if (y.st == St::Done || shown++ >= 4) continue;
        msg += where(y) + " waits at " + op_name(y.op) + " (" + site(y) + "); ";
    }
    fail(msg);
}

RT static void run_block() {
    const unsigned n = S.nthreads;
    S.live = n;
    S.at_bar = 0;
    S.cur.clear();
    S.next.clear();
    for (unsigned i = 0; i < n; ++i) {
        init_fiber(S.f[i], i);
        S.cur.push_back(i);
    }
    for (unsigned wi = 0; wi < S.nwarps; ++wi) {
        const unsigned k = n - wi * 32 < 32 ? n - wi * 32 : 32;
        S.w[wi] = Warp{k == 32 ? 0xffffffffu : (1u << k) - 1, 0, 0};
    }
    while (!S.cur.empty()) {
        if (S.cfg->seed) shuffle(S.cur);
        for (unsigned i : S.cur) {
            resume(S.f[i]);
            if (S.failed) return;
        }
        S.cur.swap(S.next);
        S.next.clear();
    }
    if (S.live) describe_deadlock();
}

// A fault in kernel code (a bad address, an aligned SSE access to a misaligned 16-byte vector, a
// stack overflow into a guard page, an integer division by zero) fails the launch, as a GPU
// reports an illegal or misaligned address, instead of killing the process.
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t fault_sig = 0;
static void* volatile fault_addr = nullptr;
static void on_fault(int sig, siginfo_t* si, void*) {
    fault_sig = sig;
    fault_addr = si ? si->si_addr : nullptr;
#if defined(__SANITIZE_THREAD__)
    // TSan finds the jump buffer in the state of the fiber that set it: the scheduler's
    __tsan_switch_to_fiber(S.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
    siglongjmp(fault_jmp, 1);
}
struct FaultGuard {
    static constexpr int sigs[3] = {SIGSEGV, SIGBUS, SIGFPE};
    struct sigaction old[3];
    FaultGuard() {
        static char* alt = nullptr;  // the handler runs on its own stack: a fiber's may be full
        if (!alt) {
            alt = (char*)malloc(1 << 16);
            stack_t ss{};
            ss.ss_sp = alt;
            ss.ss_size = 1 << 16;
            sigaltstack(&ss, nullptr);
        }
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        for (int i = 0; i < 3; ++i) sigaction(sigs[i], &sa, &old[i]);
    }
    ~FaultGuard() {
        for (int i = 0; i < 3; ++i) sigaction(sigs[i], &old[i], nullptr);
    }
};

RT static bool valid_config(const LaunchCfg* c) {
    const unsigned long long nt = (unsigned long long)c->block[0] * c->block[1] * c->block[2];
    return c->grid[0] && c->grid[1] && c->grid[2] && nt && nt <= 1024 && c->block[2] <= 64 &&
           c->grid[0] <= 2147483647u && c->grid[1] <= 65535 && c->grid[2] <= 65535;
}

RT static int run_grid(const LaunchCfg* c, void (*invoke)(void*), void* ctx) {
    S.failed = false;
    S.error.clear();
    S.cfg = c;
    S.rng = c->seed;
    S.invoke = invoke;
    S.ctx = ctx;
    if (!valid_config(c)) {
        char b[200];
        snprintf(b, sizeof b, "invalid configuration argument: grid (%u,%u,%u), block (%u,%u,%u)",
                 c->grid[0], c->grid[1], c->grid[2], c->block[0], c->block[1], c->block[2]);
        S.error = b;
        return 1;
    }
    gdim_ = dim3(c->grid[0], c->grid[1], c->grid[2]);
    bdim_ = dim3(c->block[0], c->block[1], c->block[2]);
    S.nthreads = bdim_.x * bdim_.y * bdim_.z;
    S.nwarps = (S.nthreads + 31) / 32;
    if (!S.stack_size) {  // ASan's redzones need the larger stacks
        const char* kb = getenv("CUEMU_STACK_KB");
#if defined(__SANITIZE_ADDRESS__)
        S.stack_size = (size_t)(kb ? atoi(kb) : 256) * 1024;
#else
        S.stack_size = (size_t)(kb ? atoi(kb) : 64) * 1024;
#endif
    }
    if (!S.stacks.ensure(S.nthreads, S.stack_size)) {
        S.error = "cannot allocate fiber stacks";
        return 1;
    }
    S.f.assign(S.nwarps * 32, Fiber{});
    S.w.assign(S.nwarps, Warp{});
    unsigned long long nb = (unsigned long long)gdim_.x * gdim_.y * gdim_.z;
    std::vector<unsigned long long> order;
    if (c->seed) {
        order.resize(nb);
        for (unsigned long long i = 0; i < nb; ++i) order[i] = i;
        shuffle(order);
    }
#if defined(__x86_64__)
    uint32_t mx_saved;  // a fault leaves the fiber's FTZ mode behind: restored below
    asm volatile("stmxcsr %0" : "=m"(mx_saved));
#endif
#if defined(__SANITIZE_THREAD__)
    CUEMU_IGNORE_BEGIN();
    S.tsan_sched = __tsan_get_current_fiber();
    while (S.tsan_fiber.size() < S.f.size()) S.tsan_fiber.push_back(__tsan_create_fiber(0));
    S.bar_gen = 0;
    for (auto& g : S.warp_gen) g = 0;
    __tsan_release(&S.launch_sync);
#endif
    FaultGuard guard;
    fault_sig = 0;
    if (sigsetjmp(fault_jmp, 1)) {
        char b[160];
        snprintf(b, sizeof b, "%s (address %p) in ",
                 fault_sig == SIGSEGV ? "SIGSEGV" : fault_sig == SIGBUS ? "SIGBUS" : "SIGFPE",
                 fault_addr);
        fail(std::string(b) + (S.me ? where(*S.me) : std::string("the emulator")) +
             " (a GPU would report an illegal or misaligned address; a general-protection fault "
             "at address 0 is typically an aligned SSE load or store of a misaligned 16-byte "
             "vector)");
        nb = 0;
    }
    for (unsigned long long k = 0; k < nb; ++k) {
        const unsigned long long b = c->seed ? order[k] : c->reverse_blocks ? nb - 1 - k : k;
        bid_ = uint3{(unsigned)(b % gdim_.x), (unsigned)(b / gdim_.x % gdim_.y),
                     (unsigned)(b / ((unsigned long long)gdim_.x * gdim_.y))};
        run_block();
#if defined(__SANITIZE_THREAD__)
        S.block_counter++;
#endif
        if (S.failed) break;
    }
#if defined(__x86_64__)
    asm volatile("ldmxcsr %0" : : "m"(mx_saved));
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&S.end_sync);
    if (S.failed) {  // abandoned fibers may hold ignores or a stale clock: new ones next time
        for (size_t i = 0; i < S.tsan_fiber.size(); ++i) {
            if (i < S.f.size() && S.f[i].tsan_ignores) {  // drop them as that fiber
                __tsan_switch_to_fiber(S.tsan_fiber[i], __tsan_switch_to_fiber_no_sync);
                for (; S.f[i].tsan_ignores; --S.f[i].tsan_ignores) CUEMU_IGNORE_END();
                __tsan_switch_to_fiber(S.tsan_sched, __tsan_switch_to_fiber_no_sync);
            }
            __tsan_destroy_fiber(S.tsan_fiber[i]);
        }
        S.tsan_fiber.clear();
    }
    CUEMU_IGNORE_END();
#endif
    return S.failed ? 2 : 0;
}

// Sanitizer reports (recover mode: the kernel goes on) are written to stderr: in sanitizer modes
// stderr is captured around the launch, echoed, and a report fails the launch.
int launch(const LaunchCfg* c, void (*invoke)(void*), void* ctx) {
#if defined(CUEMU_CAPTURE_STDERR)
    fflush(stderr);
    const int saved = dup(2);
    FILE* tmp = tmpfile();
    dup2(fileno(tmp), 2);
#endif
    int r = run_grid(c, invoke, ctx);
#if defined(CUEMU_CAPTURE_STDERR)
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    std::string captured;
    fseek(tmp, 0, SEEK_END);
    const long len = ftell(tmp);
    captured.resize(len > 0 ? (size_t)len : 0);
    fseek(tmp, 0, SEEK_SET);
    if (len > 0 && fread(&captured[0], 1, (size_t)len, tmp) != (size_t)len) captured.clear();
    fclose(tmp);
    if (!captured.empty()) {
        fputs(captured.c_str(), stderr);
        for (const char* tool : {"runtime error", "AddressSanitizer", "ThreadSanitizer"}) {
            if (captured.find(tool) == std::string::npos) continue;
            S.error = "sanitizer report during the launch:\n" + captured.substr(0, 4000) +
                      (S.error.empty() ? "" : "\n" + S.error);
            r = r ? r : 3;
            break;
        }
    }
#endif
    return r;
}

}  // namespace cuemu

extern "C" __attribute__((visibility("default"))) const char* cuemu_last_error() {
    return cuemu::S.error.c_str();
}
