// softmax_cross_entropy.cu: fused softmax + cross-entropy over the rows of (N, C) logits, and a
// deterministic sum of the per-row losses. float32 and float64.
//
// Math, per row x (length C) with integer label y:
//   m = max_j x_j,   s = sum_j exp(x_j - m)                  (max subtracted: no overflow)
//   loss      = log(s) - (x_y - m)                           (= logsumexp(x) - x_y)
//   dlogits_j = (exp(x_j - m) / s - [j == y]) * scale        (scale: upstream / N for "mean")
// float32 accumulates in float32, float64 in float64 (the NumPy twin: softmax_cross_entropy_ref).
// Agreement with the twin: to the tolerance of CUDA's exp/log against NumPy's and a different
// summation order, never bit for bit. CuPy compiles with -ftz=true, so in float32 a probability
// or gradient below 2^-126 is 0 where the twin has a subnormal, and a subnormal logit or scale is
// read as 0; loss_sum_f32 reads subnormal losses as 0 (the float -> double conversion flushes
// too) and gives 0 for a subnormal total. float64 keeps subnormals (tests/emulated/test_ftz.py).
// A label outside [0, C) sets *error = 1 (the host turns it into ValueError), is never used as an
// index, and makes that row's loss and gradient NaN.
//
// Arguments shared by the two softmax kernels:
//   logits (N, C) C-contiguous; labels (N,) int64; loss (N,) written when want_loss;
//   grad (N, C) written when want_grad; grad may be logits itself (in place): every element is
//   read before it is written, by the thread that writes it, and the label's logit is read before
//   any gradient is written. Unused pointers are passed as logits and never touched.
//   scale: scale_ptr[row * scale_stride] when scale_stride >= 0 (0: one value for all rows,
//   1: one per row; a device pointer, so the host never waits for it), else scale_value.
//
// softmax_xent_small_*: C <= 32. A group of G = next_pow2(C) lanes holds one row in registers,
//   one element per lane, 32 / G rows per warp; the max and the sums are xor-shuffles inside the
//   group. Launch: block 256, grid ceil(N / rows per block) (rows past the grid loop).
// softmax_xent_large_*: C > 32. One block per row (rows past the grid loop); block 32..512
//   threads, ~16 elements each (kernels.py; at most 512 so that float64 fits its registers
//   without spilling and two blocks share an SM: one streams while the other reduces). Pass 1
//   reads the row once, 16-byte vectors when C % VEC == 0 and the pointers are aligned, keeping an
//   online (max, sum) per thread, merged over the block by shuffles and shared memory. Pass 2
//   re-reads the row to write the gradient: the same block read it a moment before, so this
//   second read is served by L2/L1.
// loss_sum_*: one block of 1024 threads; each thread sums a fixed stride of the n values in double
//   (in index order, 8 loads in flight), then a shared-memory tree: the same order on every run
//   (no float atomics), times mul (1, or 1 / N for the mean), rounded once to T. The per-row
//   losses were just written, so the reads hit L2.
//
// Bytes moved per logit (T = sizeof dtype): loss and gradient: read T + write T from DRAM (+ T
//   re-read from L2 when C > 32); loss only: read T. Per row: 8 (label) + T (loss) + T (per-row
//   scale, if any). loss_sum: T per row.

#define GG_FULL_MASK 0xffffffffu
#define GG_UNROLL 4

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// float and double spellings of the few math functions used (no headers needed under NVRTC).
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double neg_inf(double) {
    return __longlong_as_double(0xfff0000000000000ll);
}
__device__ __forceinline__ float nan_(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double nan_(double) {
    return __longlong_as_double(0x7fffffffffffffffll);
}

template <typename T>
__device__ __forceinline__ T row_scale(const T* scale_ptr, long long scale_stride, T scale_value,
                                       long long row) {
    return scale_stride < 0 ? scale_value : scale_ptr[row * scale_stride];
}

// ---- small C: a row per lane group ------------------------------------------------------------

template <typename T>
__device__ void xent_small(const T* logits, const long long* labels, const T* scale_ptr,
                           long long scale_stride, T scale_value, T* loss, T* grad, int want_loss,
                           int want_grad, long long n, int c, int log2_group, int* error) {
    const int lane = threadIdx.x & 31;
    const int group = 1 << log2_group;  // lanes per row, >= c
    const int col = lane & (group - 1);
    const int rows_per_warp = 32 >> log2_group;
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    // `first` is the same for the whole warp, so every lane reaches every shuffle.
    for (long long first = warp * rows_per_warp; first < n; first += nwarps * rows_per_warp) {
        const long long row = first + (lane >> log2_group);
        const bool row_ok = row < n;
        const long long label = row_ok ? labels[row] : 0;
        const bool bad = label < 0 || label >= c;
        const bool mine = row_ok && col < c;  // this lane holds a real element
        const T v = mine ? logits[row * c + col] : neg_inf(T());
        T m = v;
        for (int off = group >> 1; off > 0; off >>= 1)
            m = max_(m, __shfl_xor_sync(GG_FULL_MASK, m, off));
        const T e = mine ? exp_(v - m) : T(0);
        T s = e;
        T z = (mine && col == label) ? v - m : T(0);  // x_label - m, from the label's lane only
        for (int off = group >> 1; off > 0; off >>= 1) {
            s += __shfl_xor_sync(GG_FULL_MASK, s, off);
            z += __shfl_xor_sync(GG_FULL_MASK, z, off);
        }
        if (row_ok && col == 0) {
            if (bad) atomicExch(error, 1);
            if (want_loss) loss[row] = bad ? nan_(T()) : log_(s) - z;
        }
        if (mine && want_grad) {
            const T scale = bad ? nan_(T()) : row_scale(scale_ptr, scale_stride, scale_value, row);
            const T onehot = col == label ? T(1) : T(0);
            grad[row * c + col] = (e * (T(1) / s) - onehot) * scale;
        }
    }
}

// ---- large C: a row per block ------------------------------------------------------------------

// Merge the running (max, sum-of-exp) pair (m2, s2) into (m, s).
template <typename T>
__device__ __forceinline__ void merge(T& m, T& s, T m2, T s2) {
    const T mn = max_(m, m2);
    if (mn != neg_inf(T())) {  // both empty: keep (-inf, 0) rather than make -inf - -inf = NaN
        s = s * exp_(m - mn) + s2 * exp_(m2 - mn);
        m = mn;
    }
}

// Add one pack of V values to the running (m, s).
template <typename T, int V>
__device__ __forceinline__ void accumulate(T& m, T& s, const Pack<T, V>& p) {
    T pm = p.v[0];
#pragma unroll
    for (int k = 1; k < V; ++k) pm = max_(pm, p.v[k]);
    if (pm > m) {
        s *= exp_(m - pm);
        m = pm;
    }
    if (pm != neg_inf(T())) {  // an all -inf pack adds 0 (and would make -inf - -inf)
#pragma unroll
        for (int k = 0; k < V; ++k) s += exp_(p.v[k] - m);
    }
}

// One row, V values per load. Returns (via m, s) the row's max and sum of exp(x - max), and
// writes the gradient when want_grad.
template <typename T, int V>
__device__ void xent_row(const T* x, T* g, int c, long long label, T scale, int want_grad, T& m,
                         T& s, T* shared_m, T* shared_s) {
    typedef Pack<T, V> P;
    const int nvec = c / V;
    const P* xv = reinterpret_cast<const P*>(x);
    m = neg_inf(T());
    s = T(0);
    for (int base = threadIdx.x; base < nvec; base += blockDim.x * GG_UNROLL) {
        P p[GG_UNROLL];
#pragma unroll
        for (int u = 0; u < GG_UNROLL; ++u) {
            const int i = base + u * blockDim.x;
            if (i < nvec) p[u] = xv[i];
        }
#pragma unroll
        for (int u = 0; u < GG_UNROLL; ++u)
            if (base + u * (int)blockDim.x < nvec) accumulate<T, V>(m, s, p[u]);
    }
    // block reduction of (m, s): inside each warp, then across the warps' leaders
    for (int off = 16; off > 0; off >>= 1) {
        const T m2 = __shfl_xor_sync(GG_FULL_MASK, m, off);
        const T s2 = __shfl_xor_sync(GG_FULL_MASK, s, off);
        merge(m, s, m2, s2);
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nwarps ? shared_m[lane] : neg_inf(T());
        s = lane < nwarps ? shared_s[lane] : T(0);
        for (int off = 16; off > 0; off >>= 1) {
            const T m2 = __shfl_xor_sync(GG_FULL_MASK, m, off);
            const T s2 = __shfl_xor_sync(GG_FULL_MASK, s, off);
            merge(m, s, m2, s2);
        }
        if (lane == 0) {
            shared_m[32] = m;
            shared_s[32] = s;
        }
    }
    __syncthreads();
    m = shared_m[32];
    s = shared_s[32];
    if (!want_grad) return;
    const T inv = T(1) / s;
    P* gv = reinterpret_cast<P*>(g);
    for (int base = threadIdx.x; base < nvec; base += blockDim.x * GG_UNROLL) {
        P p[GG_UNROLL];
#pragma unroll
        for (int u = 0; u < GG_UNROLL; ++u) {
            const int i = base + u * blockDim.x;
            if (i < nvec) p[u] = xv[i];
        }
#pragma unroll
        for (int u = 0; u < GG_UNROLL; ++u) {
            const int i = base + u * blockDim.x;
            if (i < nvec) {
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const T onehot = (long long)i * V + k == label ? T(1) : T(0);
                    p[u].v[k] = (exp_(p[u].v[k] - m) * inv - onehot) * scale;
                }
                gv[i] = p[u];
            }
        }
    }
}

template <typename T>
__device__ void xent_large(const T* logits, const long long* labels, const T* scale_ptr,
                           long long scale_stride, T scale_value, T* loss, T* grad, int want_loss,
                           int want_grad, long long n, int c, int* error) {
    __shared__ T shared_m[33], shared_s[33], shared_label_logit;
    constexpr int VEC = 16 / sizeof(T);
    const bool vec = c % VEC == 0 && aligned16(logits) && aligned16(grad);
    for (long long row = blockIdx.x; row < n; row += gridDim.x) {
        const long long label = labels[row];
        const bool bad = label < 0 || label >= c;
        const T* x = logits + row * c;
        T* g = grad + row * c;
        // Read x[label] before any thread can overwrite it (in place); the barriers in xent_row
        // order this read before every gradient write.
        if (threadIdx.x == 0) shared_label_logit = bad ? T(0) : x[label];
        const T scale = bad ? nan_(T()) : row_scale(scale_ptr, scale_stride, scale_value, row);
        T m, s;
        if (vec)
            xent_row<T, VEC>(x, g, c, label, scale, want_grad, m, s, shared_m, shared_s);
        else
            xent_row<T, 1>(x, g, c, label, scale, want_grad, m, s, shared_m, shared_s);
        if (threadIdx.x == 0) {
            if (bad) atomicExch(error, 1);
            if (want_loss) loss[row] = bad ? nan_(T()) : log_(s) - (shared_label_logit - m);
        }
        __syncthreads();  // the next row reuses the shared slots
    }
}

// ---- deterministic batch sum ------------------------------------------------------------------

template <typename T>
__device__ void loss_sum(const T* x, long long n, double mul, T* out) {
    __shared__ double part[1024];
    double acc = 0.0;
    long long i = threadIdx.x;
    // 8 loads in flight per thread (one block is latency-bound), added in index order as below
    for (; i + 7ll * blockDim.x < n; i += 8ll * blockDim.x) {
        T v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = x[i + (long long)k * blockDim.x];
#pragma unroll
        for (int k = 0; k < 8; ++k) acc += (double)v[k];
    }
    for (; i < n; i += blockDim.x) acc += (double)x[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x >> 1; half > 0; half >>= 1) {  // blockDim.x is a power of two
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = (T)(part[0] * mul);
}

// ---- entry points -----------------------------------------------------------------------------

#define GG_XENT_ARGS(T)                                                                           \
    const T *logits, const long long *labels, const T *scale_ptr, long long scale_stride,         \
        T scale_value, T *loss, T *grad, int want_loss, int want_grad, long long n, int c
#define GG_XENT_PASS logits, labels, scale_ptr, scale_stride, scale_value, loss, grad, want_loss, \
                     want_grad, n, c

extern "C" __global__ void __launch_bounds__(256)
softmax_xent_small_f32(GG_XENT_ARGS(float), int log2_group, int* error) {
    xent_small<float>(GG_XENT_PASS, log2_group, error);
}

extern "C" __global__ void __launch_bounds__(256)
softmax_xent_small_f64(GG_XENT_ARGS(double), int log2_group, int* error) {
    xent_small<double>(GG_XENT_PASS, log2_group, error);
}

extern "C" __global__ void __launch_bounds__(512)
softmax_xent_large_f32(GG_XENT_ARGS(float), int* error) {
    xent_large<float>(GG_XENT_PASS, error);
}

extern "C" __global__ void __launch_bounds__(512)
softmax_xent_large_f64(GG_XENT_ARGS(double), int* error) {
    xent_large<double>(GG_XENT_PASS, error);
}

extern "C" __global__ void __launch_bounds__(1024)
loss_sum_f32(const float* x, long long n, double mul, float* out) { loss_sum(x, n, mul, out); }

extern "C" __global__ void __launch_bounds__(1024)
loss_sum_f64(const double* x, long long n, double mul, double* out) { loss_sum(x, n, mul, out); }
