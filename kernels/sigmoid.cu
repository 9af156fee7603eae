// sigmoid.cu: the logistic function and its gradient, elementwise, float32 and float64.
//
// Math
//   forward   y  = 1 / (1 + exp(-x))
//             x -> -inf: exp(-x) overflows to +inf and 1 / (1 + inf) = 0 exactly (the right
//             limit); x -> +inf: exp(-x) = 0 and y = 1. No NaN for any non-NaN x, float max
//             included; NaN in gives NaN out.
//   backward  dx = (dy * y) * (1 - y), from the stored output y: no exp recomputed and no inf * 0
//             (exp(-x) / (1 + exp(-x))^2 gives NaN for large |x|). Same operations in the same
//             order as sigmoid_backward_ref in gpugrad/kernels.py (two multiplies and a subtract:
//             nothing for the compiler to fuse).
//
// Agreement with the NumPy twins (pinned by tests/emulated/test_ftz.py)
//   CuPy compiles with -ftz=true: every float32 operation reads a subnormal input as 0 and writes
//   a subnormal result as 0 (sign kept); float64 keeps subnormals.
//   backward  float64: bit-identical. float32: bit-identical to the twin on flushed inputs, flushed
//             (dx = flush(ref(flush(y), flush(dy)))): bit-identical wherever y, dy and dx are
//             normal; 0 where the twin's dx is subnormal, or where y or dy is.
//   forward   expf / exp are CUDA's, not NumPy's (each within ~2 ulp of exact), so y agrees with
//             sigmoid_forward_ref to a few ulp, not bit for bit. float32: for x in (-88.7, -87.3)
//             the twin's y is subnormal and the kernel's is 0.
//
// The output may be the input (in place: the executor's buffers).
// Launch (gpugrad/kernels.py): 1-D, block 256, grid min(ceil(n / (VEC * UNROLL * 256)), 8 * SMs),
//   a grid-stride loop. When every pointer is 16-byte aligned, each thread moves UNROLL 16-byte
//   vectors (float4 / double2) per trip, all loads issued before any store so that several are in
//   flight; the n % VEC tail, and unaligned arrays, take a scalar grid-stride loop. Indices are
//   64-bit: n may exceed 2^31.
// Bytes moved per element: forward 2 * sizeof(T) (read x, write y); backward 3 * sizeof(T)
//   (read y and dy, write dx).

#define GG_UNROLL 4

// N values of T moved as one 16-byte load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

__device__ __forceinline__ float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid_of(double x) { return 1.0 / (1.0 + exp(-x)); }

template <typename T>
__device__ __forceinline__ T sigmoid_grad_of(T y, T dy) { return (dy * y) * (T(1) - y); }

// out[i] = sigmoid(a[i]) (TWO = false) or sigmoid_grad(a[i], b[i]) (TWO = true) for i < n.
// out may be a or b (in place): each element is read, then written, by the same thread.
template <bool TWO, typename T>
__device__ void sigmoid_map(const T* a, const T* b, T* out, long long n) {
    constexpr int V = 16 / sizeof(T);
    typedef Pack<T, V> P;
    const long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long nthreads = (long long)gridDim.x * blockDim.x;
    long long done = 0;  // elements covered by the vector loop
    if (aligned16(a) && (!TWO || aligned16(b)) && aligned16(out)) {
        const long long nvec = n / V;
        const P* av = reinterpret_cast<const P*>(a);
        const P* bv = reinterpret_cast<const P*>(b);
        P* ov = reinterpret_cast<P*>(out);
        for (long long base = blockIdx.x * (long long)blockDim.x * GG_UNROLL + threadIdx.x;
             base < nvec; base += nthreads * GG_UNROLL) {
            P pa[GG_UNROLL], pb[GG_UNROLL];
#pragma unroll
            for (int u = 0; u < GG_UNROLL; ++u) {
                const long long i = base + (long long)u * blockDim.x;
                if (i < nvec) {
                    pa[u] = av[i];
                    if (TWO) pb[u] = bv[i];
                }
            }
#pragma unroll
            for (int u = 0; u < GG_UNROLL; ++u) {
                const long long i = base + (long long)u * blockDim.x;
                if (i < nvec) {
                    P r;
#pragma unroll
                    for (int k = 0; k < V; ++k)
                        r.v[k] = TWO ? sigmoid_grad_of(pa[u].v[k], pb[u].v[k])
                                     : sigmoid_of(pa[u].v[k]);
                    ov[i] = r;
                }
            }
        }
        done = nvec * V;
    }
    for (long long i = done + tid; i < n; i += nthreads)
        out[i] = TWO ? sigmoid_grad_of(a[i], b[i]) : sigmoid_of(a[i]);
}

extern "C" __global__ void __launch_bounds__(256)
sigmoid_forward_f32(const float* x, float* y, long long n) { sigmoid_map<false>(x, x, y, n); }

extern "C" __global__ void __launch_bounds__(256)
sigmoid_forward_f64(const double* x, double* y, long long n) { sigmoid_map<false>(x, x, y, n); }

extern "C" __global__ void __launch_bounds__(256)
sigmoid_backward_f32(const float* y, const float* dy, float* dx, long long n) {
    sigmoid_map<true>(y, dy, dx, n);
}

extern "C" __global__ void __launch_bounds__(256)
sigmoid_backward_f64(const double* y, const double* dy, double* dx, long long n) {
    sigmoid_map<true>(y, dy, dx, n);
}
