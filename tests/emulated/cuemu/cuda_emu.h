// cuda_emu.h: the CUDA that a kernel source sees when g++ compiles it for the CPU.
//
// cuemu.py compiles `#include "cuda_emu.h"`, then the unmodified .cu text, then CUEMU_EXPORT(name)
// for each extern "C" __global__ function, and links the result with the runtime (scheduler.cpp,
// collectives.cpp), which runs every GPU thread of a block as a fiber. Here: the keywords become
// plain C++, the built-in variables read the running fiber's, and each collective (__syncthreads,
// the warp shuffles and votes) calls the runtime, which returns once the whole group has arrived.
// Collectives take the caller's source line (__builtin_FILE/LINE as default arguments) so that
// threads at different barriers are told apart and named in the error.
#pragma once
#include <math.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "abi.h"

// ---- keywords ------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)  // checked by cuemu.py, which reads it from the source
// One static copy per library: blocks run one at a time, so the block's threads share it.
#define __shared__ static
#define __constant__ static
#define __managed__

// ---- built-in variables ----------------------------------------------------------------------------
inline const uint3& threadIdx = cuemu::tid_;
inline const uint3& blockIdx = cuemu::bid_;
inline const dim3& blockDim = cuemu::bdim_;
inline const dim3& gridDim = cuemu::gdim_;
constexpr int warpSize = 32;

namespace cuemu {
template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "a shuffle of a type over 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
}  // namespace cuemu

// ---- synchronisation and warp intrinsics ---------------------------------------------------------
#define CUEMU_SITE const char *f = __builtin_FILE(), int l = __builtin_LINE()
inline void __syncthreads(CUEMU_SITE) { cuemu::block_barrier(cuemu::Op::Bar, 0, f, l); }
inline int __syncthreads_and(int p, CUEMU_SITE) {
    return (int)cuemu::block_barrier(cuemu::Op::BarAnd, p, f, l);
}
inline int __syncthreads_or(int p, CUEMU_SITE) {
    return (int)cuemu::block_barrier(cuemu::Op::BarOr, p, f, l);
}
inline int __syncthreads_count(int p, CUEMU_SITE) {
    return (int)cuemu::block_barrier(cuemu::Op::BarCount, p, f, l);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUEMU_SITE) {
    cuemu::warp_collective(cuemu::Op::SyncWarp, mask, 0, 0, 32, f, l);
}
#define CUEMU_SHUFFLE(name, op, Arg)                                                        \
    template <class T> inline T name(unsigned mask, T v, Arg a, int width = 32, CUEMU_SITE) { \
        return cuemu::from_bits<T>(                                                         \
            cuemu::warp_collective(op, mask, cuemu::to_bits(v), (int)a, width, f, l));      \
    }
CUEMU_SHUFFLE(__shfl_sync, cuemu::Op::ShflIdx, int)
CUEMU_SHUFFLE(__shfl_up_sync, cuemu::Op::ShflUp, unsigned)
CUEMU_SHUFFLE(__shfl_down_sync, cuemu::Op::ShflDown, unsigned)
CUEMU_SHUFFLE(__shfl_xor_sync, cuemu::Op::ShflXor, int)
inline unsigned __ballot_sync(unsigned mask, int p, CUEMU_SITE) {
    return (unsigned)cuemu::warp_collective(cuemu::Op::Ballot, mask, p != 0, 0, 32, f, l);
}
inline int __all_sync(unsigned mask, int p, CUEMU_SITE) {
    return __ballot_sync(mask, p, f, l) == mask;
}
inline int __any_sync(unsigned mask, int p, CUEMU_SITE) { return __ballot_sync(mask, p, f, l) != 0; }
inline unsigned __activemask() { return cuemu::active_mask(); }  // lanes that have not exited
// Memory is sequentially consistent here (one OS thread), so fences have nothing to do.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
[[noreturn]] inline void __trap() { cuemu::trap("__trap()", "?", 0); }
#define assert(e) ((e) ? (void)0 : ::cuemu::trap("assert(" #e ") failed", __FILE__, __LINE__))

// ---- atomics: read-modify-writes (one OS thread runs every fiber, so relaxed is enough) ---------
namespace cuemu {
template <class T> struct same { using type = T; };  // the value takes the pointer's type
template <class T, class F> inline T atomic_rmw(T* p, F f) {
    T old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do want = f(old);
    while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
}  // namespace cuemu
#define CUEMU_V typename ::cuemu::same<T>::type
#define CUEMU_ATOMIC(name, expr)                                               \
    template <class T> inline T name(T* p, CUEMU_V v) {                        \
        return cuemu::atomic_rmw(p, [&](T o) { (void)o; return T(expr); }); \
    }
CUEMU_ATOMIC(atomicAdd, o + v)
CUEMU_ATOMIC(atomicSub, o - v)
CUEMU_ATOMIC(atomicExch, v)
CUEMU_ATOMIC(atomicMin, v < o ? v : o)
CUEMU_ATOMIC(atomicMax, v > o ? v : o)
CUEMU_ATOMIC(atomicAnd, o & v)
CUEMU_ATOMIC(atomicOr, o | v)
CUEMU_ATOMIC(atomicXor, o ^ v)
template <class T> inline T atomicCAS(T* p, CUEMU_V cmp, CUEMU_V v) {
    return cuemu::atomic_rmw(p, [&](T o) { return o == cmp ? T(v) : o; });
}
inline unsigned atomicInc(unsigned* p, unsigned v) {
    return cuemu::atomic_rmw(p, [&](unsigned o) { return o >= v ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned v) {
    return cuemu::atomic_rmw(p, [&](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}

// ---- bit casts and integer intrinsics ----------------------------------------------------------
inline float __int_as_float(int i) { return cuemu::from_bits<float>((uint32_t)i); }
inline int __float_as_int(float f) { return (int)(uint32_t)cuemu::to_bits(f); }
inline float __uint_as_float(unsigned i) { return cuemu::from_bits<float>(i); }
inline unsigned __float_as_uint(float f) { return (uint32_t)cuemu::to_bits(f); }
inline double __longlong_as_double(long long i) { return cuemu::from_bits<double>((uint64_t)i); }
inline long long __double_as_longlong(double d) { return (long long)cuemu::to_bits(d); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
template <class T> inline T __ldg(const T* p) { return *p; }

// ---- math not in <math.h> ----------------------------------------------------------------------
// expf, exp, logf, log, fmaxf... are glibc's (within ~1 ulp); CUDA's are within ~2 ulp, so results
// match a GPU's to a few ulp, never bit for bit. The fast intrinsics are emulated as accurate.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0 ? 0.0f : (x > 1 ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- the C entry points that cuemu.py calls: cuemu_launch_<k>, cuemu_sig_<k> ---------------------
namespace cuemu {
template <class T> constexpr int kind_of() {
    if constexpr (std::is_same_v<T, bool>) return 4;
    else if constexpr (std::is_floating_point_v<T>) return 3;
    else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) return 1;
    else if constexpr (std::is_integral_v<T>) return 2;
    else return 0;
}
template <class A> Param describe() {
    if constexpr (std::is_pointer_v<A>) {
        using E = std::remove_pointer_t<A>;
        using U = std::remove_cv_t<E>;
        int size = 0;
        if constexpr (!std::is_void_v<U>) size = (int)sizeof(U);
        return Param{(int)sizeof(A), 1, size, kind_of<U>(), (int)std::is_const_v<E>};
    } else {
        return Param{(int)sizeof(A), 0, 0, kind_of<A>(), 0};
    }
}
// The kernel's parameters, so that cuemu.py can check each argument (CuPy checks none).
template <class... A> int signature(void (*)(A...), Param* out, int max) {
    const Param d[sizeof...(A) + 1] = {describe<A>()..., Param{}};
    for (int i = 0; i < (int)sizeof...(A) && i < max; ++i) out[i] = d[i];
    return (int)sizeof...(A);
}
// The arguments, copied once from cuemu.py's buffers; each thread calls the kernel with them, so
// each gets its own copies of the by-value parameters, as on a GPU.
template <class... A> struct Call {
    void (*k)(A...);
    std::tuple<std::decay_t<A>...> args;
    static void invoke(void* p) {
        auto* c = static_cast<Call*>(p);
        std::apply(c->k, c->args);
    }
};
template <class... A, size_t... I>
int launch_with(void (*k)(A...), const LaunchCfg* c, void** a, std::index_sequence<I...>) {
    Call<A...> call{k, std::tuple<std::decay_t<A>...>{*static_cast<std::decay_t<A>*>(a[I])...}};
    return launch(c, &Call<A...>::invoke, &call);
}
template <class... A> int launch_kernel(void (*k)(A...), const LaunchCfg* c, void** a) {
    return launch_with(k, c, a, std::index_sequence_for<A...>{});
}
}  // namespace cuemu

#define CUEMU_EXPORT(k)                                                                       \
    extern "C" __attribute__((visibility("default"))) int cuemu_launch_##k(                  \
        const ::cuemu::LaunchCfg* c, void** a) {                                              \
        return ::cuemu::launch_kernel(&k, c, a);                                              \
    }                                                                                         \
    extern "C" __attribute__((visibility("default"))) int cuemu_sig_##k(::cuemu::Param* p,   \
                                                                        int max) {            \
        return ::cuemu::signature(&k, p, max);                                                \
    }
