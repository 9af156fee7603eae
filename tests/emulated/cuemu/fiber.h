// fiber.h: the cooperative stacks every emulated GPU thread runs on (included by runtime.cpp).
//
// A context switch on x86-64 saves the callee-saved registers plus MXCSR and the x87 control word
// (so a kernel's flush-to-zero mode travels with its fibers and never leaks into Python), and
// swaps the stack pointer: ~20 instructions, where ucontext's swapcontext makes a system call for
// the signal mask. Other architectures fall back to ucontext.
#pragma once
#include <cstddef>
#include <cstdint>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuemu {

struct Context {
    void* sp = nullptr;  // x86-64: the saved stack pointer
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
};

#if defined(__x86_64__)
extern "C" void cuemu_switch(void** save_sp, void* load_sp);
#if defined(CUEMU_DEFINE_SWITCH)  // once per library: scheduler.cpp
asm(R"(
    .text
    .globl cuemu_switch
    .hidden cuemu_switch
    .type cuemu_switch,@function
cuemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_switch, .-cuemu_switch
)");
#endif
#endif

// Save the running context in `from` and continue `to`.
__attribute__((no_sanitize_thread)) inline void switch_context(Context& from, Context& to) {
#if defined(__x86_64__)
    cuemu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// Make `x` start `entry` (which must never return) on the stack [lo, lo + size), with the
// caller's floating-point modes plus FTZ|DAZ when `ftz`.
__attribute__((no_sanitize_thread)) inline void init_context(Context& x, char* lo, size_t size,
                                                             void (*entry)(), bool ftz) {
#if defined(__x86_64__)
    uint64_t* s = (uint64_t*)((uintptr_t)(lo + size) & ~(uintptr_t)15);
    s[-1] = 0;                  // fake return address of entry
    s[-2] = (uint64_t)entry;    // popped by `ret`: rsp = top - 8 at entry, as after a call
    for (int i = 3; i <= 8; ++i) s[-i] = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t mx;
    uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(mx));
    asm volatile("fnstcw %0" : "=m"(cw));
    if (ftz) mx |= 0x8040;  // FTZ | DAZ: CuPy's -ftz=true, for float32 kernels
    uint32_t* modes = (uint32_t*)&s[-9];
    modes[0] = mx;
    modes[1] = cw;
    x.sp = &s[-9];
#else
    getcontext(&x.uc);
    x.uc.uc_stack.ss_sp = lo;
    x.uc.uc_stack.ss_size = size;
    x.uc.uc_link = nullptr;
    makecontext(&x.uc, entry, 0);
    (void)ftz;  // not emulated off x86-64
#endif
}

// n stacks of `size` bytes, each above a PROT_NONE guard page (an overflow faults, and the fault
// fails the launch), reserved once and reused by every block of every launch.
struct Stacks {
    char* base = nullptr;
    size_t bytes = 0, size = 0, page = 0;

    __attribute__((no_sanitize_thread)) bool ensure(unsigned n, size_t stack_size) {
        page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t want = (stack_size + page) * n;
        if (base && size == stack_size && bytes >= want) return true;
        if (base) munmap(base, bytes);
        size = stack_size;
        bytes = want;
        base = (char*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) {
            base = nullptr;
            return false;
        }
        for (unsigned i = 0; i < n; ++i) mprotect(base + i * (size + page), page, PROT_NONE);
        return true;
    }
    char* lo(unsigned i) const { return base + (size_t)i * (size + page) + page; }
};

}  // namespace cuemu
