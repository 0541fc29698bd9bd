/* 2x2 stride-2 max-pool (optionally followed by ReLU) over channels_last maps, forward and backward.
 *
 * Built and loaded at run time by cnnlab/layers/_native/__init__.py and called by cnnlab/layers/maxpool2x2.py;
 * PyTorch's max_pool2d is used where it cannot be. Values and gradients equal PyTorch's relu(max_pool2d(x, 2)) bit for bit (NaN payloads aside): the
 * first maximum of each window wins a tie, a NaN wins over any number and a later NaN over an earlier
 * one, ReLU keeps -0.0 and NaN, and its gradient passes where the output is not <= 0; a -0.0 gradient
 * arrives as +0.0 (PyTorch adds it to a zero-filled map).
 *
 * What differs from PyTorch is what is saved for the backward pass: one code per output element, of the
 * element's own width (uint16 for bf16, uint32 for fp32) instead of an int64 index: the window position
 * (0..3) of the maximum, plus the top bit when the gradient passes (ReLU's mask folded in). Codes of the
 * element's width keep every loop in one lane width, which the compiler vectorises; and the backward pass
 * writes each input-gradient element once, with no zero-fill pass and no scatter.
 *
 * Layout: x is (N, H, W, C) contiguous (a channels_last (N, C, H, W) tensor), y and code (N, H/2, W/2, C),
 * gx (N, H, W, C). Odd H or W: the last row or column is not pooled (floor mode) and its gradient is not
 * written here (the caller zeroes it). The exported functions take samples [n0, n1) and split them over
 * the OpenMP threads.
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* bf16 bits as an ordered int16 key: the order of the floats, -0 == +0, every NaN above +inf. */
static inline int16_t key_bf16(uint16_t b) {
    const int16_t mag = (int16_t)(b & 0x7FFF);
    return mag > 0x7F80 ? (int16_t)0x7FFF : (b & 0x8000) ? (int16_t)-mag : mag;
}

#define NAN_KEY ((int16_t)0x7FFF)

/* The loop over the 2x2 windows of samples [n0, n1) that every kernel runs: its body, up to
 * END_WINDOWS, sees `in`, the index of the window's top-left element in the (N, H, W, C) map, and `out`,
 * the index of its pooled element in the (N, H/2, W/2, C) map. */
#define FOR_EACH_WINDOW                                                                               \
    for (int64_t n = n0; n < n1; n++)                                                                 \
        for (int64_t oh = 0; oh < H / 2; oh++)                                                        \
            for (int64_t ow = 0; ow < W / 2; ow++) {                                                  \
                const int64_t in = ((n * H + 2 * oh) * W + 2 * ow) * C;                               \
                const int64_t out = ((n * (H / 2) + oh) * (W / 2) + ow) * C;
#define END_WINDOWS }

/* The portable forward pass. KEY orders the values (NaN above all), IS_NAN tells a NaN's key; ReLU
 * zeroes keys < 0 and passes the gradient where !(key <= 0), as PyTorch's relu and threshold_backward. */
#define DEFINE_FORWARD(NAME, T, CODE, K, KEY, IS_NAN)                                                   \
    static void NAME(const T *x, T *y, CODE *code, int64_t n0, int64_t n1, int64_t H, int64_t W,        \
                     int64_t C, int relu) {                                                             \
        FOR_EACH_WINDOW                                                                                 \
                    const T *p[4] = {x + in, x + in + C, x + in + W * C, x + in + W * C + C};           \
                    for (int64_t c = 0; c < C; c++) {                                                   \
                        K km = KEY(p[0][c]);                                                            \
                        T mb = p[0][c];                                                                 \
                        CODE i = 0;                                                                     \
                        for (CODE e = 1; e < 4; e++) {                                                  \
                            const K kv = KEY(p[e][c]);                                                  \
                            if (kv > km || IS_NAN(kv)) km = kv, mb = p[e][c], i = e;                    \
                        }                                                                               \
                        y[out + c] = relu && km < 0 ? 0 : mb;                                           \
                        code[out + c] = i | (CODE)((CODE)(!relu || !(km <= 0)) << (8 * sizeof(CODE) - 1)); \
                    }                                                                                   \
        END_WINDOWS                                                                                     \
    }
#define IS_NAN_KEY(k) ((k) == NAN_KEY)
#define SAME(v) (v)
#define IS_NAN_F32(v) ((v) != (v))
DEFINE_FORWARD(fwd_bf16_generic, uint16_t, uint16_t, int16_t, key_bf16, IS_NAN_KEY)
DEFINE_FORWARD(fwd_f32_generic, float, uint32_t, float, SAME, IS_NAN_F32)

/* The backward pass of either: T is the element's bits, the code has the same width. */
#define DEFINE_BACKWARD(NAME, T, PASS)                                                                   \
    static void NAME(const T *g, const T *code, T *gx, int64_t n0, int64_t n1, int64_t H, int64_t W,     \
                     int64_t C) {                                                                        \
        FOR_EACH_WINDOW                                                                                  \
                    T *restrict a = gx + in;                                                             \
                    T *restrict b = a + C, *restrict c2 = a + W * C, *restrict d = a + W * C + C;        \
                    const T *restrict go = g + out, *restrict co = code + out;                           \
                    for (int64_t c = 0; c < C; c++) {                                                    \
                        const T k = co[c], v = go[c] == (T)PASS ? 0 : go[c]; /* -0.0 -> +0.0 */          \
                        a[c] = k == (T)(PASS | 0) ? v : 0;                                               \
                        b[c] = k == (T)(PASS | 1) ? v : 0;                                               \
                        c2[c] = k == (T)(PASS | 2) ? v : 0;                                              \
                        d[c] = k == (T)(PASS | 3) ? v : 0;                                               \
                    }                                                                                    \
        END_WINDOWS                                                                                      \
    }
DEFINE_BACKWARD(bwd_16_generic, uint16_t, 0x8000u)
DEFINE_BACKWARD(bwd_32_generic, uint32_t, 0x80000000u)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
#define AVX512 __attribute__((target("avx512f,avx512bw")))

AVX512 static inline __m512i key_bf16_x32(__m512i v, __mmask32 *is_nan) {
    const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
    *is_nan = _mm512_cmpgt_epi16_mask(mag, _mm512_set1_epi16(0x7F80));
    const __m512i signed_mag = _mm512_mask_sub_epi16(mag, _mm512_movepi16_mask(v), _mm512_setzero_si512(), mag);
    return _mm512_mask_mov_epi16(signed_mag, *is_nan, _mm512_set1_epi16(NAN_KEY));
}

/* Channels [c, C) as a mask of up to 32 16-bit lanes: all of them but in a last chunk of 16 (C % 16 == 0). */
#define TAIL32(c, C) ((C) - (c) >= 32 ? ~(__mmask32)0 : (__mmask32)0xFFFFu)

/* C % 16 == 0: 32 channels per vector, and a last chunk of 16 where C % 32 == 16 (masked loads and stores) */
AVX512 static void fwd_bf16_avx512(const uint16_t *x, uint16_t *y, uint16_t *code, int64_t n0, int64_t n1,
                                   int64_t H, int64_t W, int64_t C, int relu) {
    const __m512i zero = _mm512_setzero_si512(), pass = _mm512_set1_epi16((short)0x8000);
    FOR_EACH_WINDOW
                const uint16_t *a = x + in;
                const uint16_t *p[3] = {a + C, a + W * C, a + W * C + C};
                for (int64_t c = 0; c < C; c += 32) {
                    const __mmask32 lanes = TAIL32(c, C);
                    __mmask32 nan;
                    __m512i mb = _mm512_maskz_loadu_epi16(lanes, a + c), km = key_bf16_x32(mb, &nan), i = zero;
                    for (int e = 0; e < 3; e++) {
                        const __m512i v = _mm512_maskz_loadu_epi16(lanes, p[e] + c), kv = key_bf16_x32(v, &nan);
                        const __mmask32 t = _mm512_cmpgt_epi16_mask(kv, km) | nan;
                        km = _mm512_mask_mov_epi16(km, t, kv);
                        mb = _mm512_mask_mov_epi16(mb, t, v);
                        i = _mm512_mask_mov_epi16(i, t, _mm512_set1_epi16((short)(e + 1)));
                    }
                    const __mmask32 keep = relu ? ~_mm512_cmplt_epi16_mask(km, zero) : ~(__mmask32)0;
                    const __mmask32 passes = relu ? _mm512_cmpgt_epi16_mask(km, zero) : ~(__mmask32)0;
                    _mm512_mask_storeu_epi16(y + out + c, lanes, _mm512_maskz_mov_epi16(keep, mb));
                    _mm512_mask_storeu_epi16(code + out + c, lanes, _mm512_or_si512(i, _mm512_maskz_mov_epi16(passes, pass)));
                }
    END_WINDOWS
}

/* C % 16 == 0 */
AVX512 static void fwd_f32_avx512(const float *x, float *y, uint32_t *code, int64_t n0, int64_t n1, int64_t H,
                                  int64_t W, int64_t C, int relu) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512i pass = _mm512_set1_epi32((int)0x80000000u);
    FOR_EACH_WINDOW
                const float *a = x + in;
                const float *p[3] = {a + C, a + W * C, a + W * C + C};
                for (int64_t c = 0; c < C; c += 16) {
                    __m512 m = _mm512_loadu_ps(a + c);
                    __m512i i = _mm512_setzero_si512();
                    for (int e = 0; e < 3; e++) {
                        const __m512 v = _mm512_loadu_ps(p[e] + c);
                        const __mmask16 t = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                        m = _mm512_mask_mov_ps(m, t, v);
                        i = _mm512_mask_mov_epi32(i, t, _mm512_set1_epi32(e + 1));
                    }
                    const __mmask16 neg = relu ? _mm512_cmp_ps_mask(m, zero, _CMP_LT_OQ) : 0;
                    const __mmask16 passes = relu ? _mm512_cmp_ps_mask(m, zero, _CMP_NLE_UQ) : (__mmask16)0xFFFF;
                    _mm512_storeu_ps(y + out + c, _mm512_mask_mov_ps(m, neg, zero));
                    _mm512_storeu_si512(code + out + c, _mm512_or_si512(i, _mm512_maskz_mov_epi32(passes, pass)));
                }
    END_WINDOWS
}

/* LANES(c, C): the mask of the channels [c, c + vector) to load and store (a last, shorter chunk for bf16). */
#define DEFINE_BACKWARD_AVX512(NAME, T, STEP, LANES, LOAD, STORE, SET1, CMPEQ, MASKZ)                             \
    AVX512 static void NAME(const T *g, const T *code, T *gx, int64_t n0, int64_t n1, int64_t H, int64_t W, \
                            int64_t C) {                                                                   \
        const __m512i want[4] = {SET1(0), SET1(1), SET1(2), SET1(3)};                                      \
        FOR_EACH_WINDOW                                                                                    \
                    T *a = gx + in;                                                                        \
                    T *p[4] = {a, a + C, a + W * C, a + W * C + C};                                        \
                    for (int64_t c = 0; c < C; c += STEP) {                                                \
                        const __typeof__(LANES(c, C)) lanes = LANES(c, C);                                 \
                        const __m512i k = LOAD(lanes, code + out + c), g0 = LOAD(lanes, g + out + c);      \
                        const __m512i v = MASKZ(~CMPEQ(g0, want[0]) & lanes, g0); /* -0.0 -> +0.0 */          \
                        for (int e = 0; e < 4; e++)                                                        \
                            STORE(p[e] + c, lanes, MASKZ(CMPEQ(k, want[e]), v));                           \
                    }                                                                                      \
        END_WINDOWS                                                                                        \
    }
#define SET1_16(e) _mm512_set1_epi16((short)(0x8000 | (e)))
#define SET1_32(e) _mm512_set1_epi32((int)(0x80000000u | (e)))
#define ALL16(c, C) ((__mmask16)0xFFFF)
DEFINE_BACKWARD_AVX512(bwd_16_avx512, uint16_t, 32, TAIL32, _mm512_maskz_loadu_epi16, _mm512_mask_storeu_epi16, SET1_16,
                       _mm512_cmpeq_epi16_mask, _mm512_maskz_mov_epi16)
DEFINE_BACKWARD_AVX512(bwd_32_avx512, uint32_t, 16, ALL16, _mm512_maskz_loadu_epi32, _mm512_mask_storeu_epi32, SET1_32,
                       _mm512_cmpeq_epi32_mask, _mm512_maskz_mov_epi32)

static int avx512_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }
    return ok;
}

/* AVX2 (8 fp32 lanes), for CPUs without AVX-512 (where bf16 is not native, so fp32 only). C % 8 == 0. */
#define AVX2 __attribute__((target("avx2")))

AVX2 static void fwd_f32_avx2(const float *x, float *y, uint32_t *code, int64_t n0, int64_t n1, int64_t H,
                              int64_t W, int64_t C, int relu) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 pass = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    const __m256 idx[3] = {_mm256_castsi256_ps(_mm256_set1_epi32(1)), _mm256_castsi256_ps(_mm256_set1_epi32(2)),
                           _mm256_castsi256_ps(_mm256_set1_epi32(3))};
    FOR_EACH_WINDOW
                const float *a = x + in;
                const float *p[3] = {a + C, a + W * C, a + W * C + C};
                for (int64_t c = 0; c < C; c += 8) {
                    __m256 m = _mm256_loadu_ps(a + c), i = zero;
                    for (int e = 0; e < 3; e++) {
                        const __m256 v = _mm256_loadu_ps(p[e] + c);
                        const __m256 t = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                        m = _mm256_blendv_ps(m, v, t);
                        i = _mm256_blendv_ps(i, idx[e], t);
                    }
                    if (relu) {
                        const __m256 neg = _mm256_cmp_ps(m, zero, _CMP_LT_OQ);
                        const __m256 passes = _mm256_cmp_ps(m, zero, _CMP_NLE_UQ);
                        _mm256_storeu_ps(y + out + c, _mm256_andnot_ps(neg, m));
                        _mm256_storeu_ps((float *)(code + out + c), _mm256_or_ps(i, _mm256_and_ps(passes, pass)));
                    } else {
                        _mm256_storeu_ps(y + out + c, m);
                        _mm256_storeu_ps((float *)(code + out + c), _mm256_or_ps(i, pass));
                    }
                }
    END_WINDOWS
}

AVX2 static void bwd_32_avx2(const uint32_t *g, const uint32_t *code, uint32_t *gx, int64_t n0, int64_t n1,
                             int64_t H, int64_t W, int64_t C) {
    const __m256i want[4] = {_mm256_set1_epi32((int)0x80000000u), _mm256_set1_epi32((int)0x80000001u),
                             _mm256_set1_epi32((int)0x80000002u), _mm256_set1_epi32((int)0x80000003u)};
    FOR_EACH_WINDOW
                uint32_t *a = gx + in;
                uint32_t *p[4] = {a, a + C, a + W * C, a + W * C + C};
                for (int64_t c = 0; c < C; c += 8) {
                    const __m256i k = _mm256_loadu_si256((const __m256i *)(code + out + c));
                    const __m256i g0 = _mm256_loadu_si256((const __m256i *)(g + out + c));
                    const __m256i v = _mm256_andnot_si256(_mm256_cmpeq_epi32(g0, want[0]), g0); /* -0.0 -> +0.0 */
                    for (int e = 0; e < 4; e++)
                        _mm256_storeu_si256((__m256i *)(p[e] + c), _mm256_and_si256(_mm256_cmpeq_epi32(k, want[e]), v));
                }
    END_WINDOWS
}

static int avx2_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2");
    }
    return ok;
}
#else
#define HAVE_AVX512_PATH 0
static int avx512_ok(void) { return 0; }
static int avx2_ok(void) { return 0; }
#endif

typedef void (*kernel_fn)(const void *, void *, void *, int64_t, int64_t, int64_t, int64_t, int64_t, int);

/* Split samples [n0, n1) over the OpenMP threads. Built with -fopenmp and loaded into a process that has
 * PyTorch's libgomp, this is PyTorch's own thread pool (same runtime, same thread count), so the kernels
 * do not compete with threads PyTorch keeps spinning after its own parallel regions. */
static void run(kernel_fn fn, const void *in, void *out, void *code, int64_t n0, int64_t n1, int64_t H,
                int64_t W, int64_t C, int relu) {
#ifdef _OPENMP
    if (n1 - n0 > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
        {
            const int64_t t = omp_get_thread_num(), T = omp_get_num_threads(), len = n1 - n0;
            const int64_t a = n0 + len * t / T, b = n0 + len * (t + 1) / T;
            if (a < b) fn(in, out, code, a, b, H, W, C, relu);
        }
        return;
    }
#endif
    fn(in, out, code, n0, n1, H, W, C, relu);
}

#define FWD(f, T, CT) static void f##_k(const void *x, void *y, void *code, int64_t n0, int64_t n1, int64_t H, \
    int64_t W, int64_t C, int relu) { f((const T *)x, (T *)y, (CT *)code, n0, n1, H, W, C, relu); }
#define BWD(f, T) static void f##_k(const void *g, void *gx, void *code, int64_t n0, int64_t n1, int64_t H, \
    int64_t W, int64_t C, int relu) { (void)relu; f((const T *)g, (const T *)code, (T *)gx, n0, n1, H, W, C); }
FWD(fwd_bf16_generic, uint16_t, uint16_t)
FWD(fwd_f32_generic, float, uint32_t)
BWD(bwd_16_generic, uint16_t)
BWD(bwd_32_generic, uint32_t)
#if HAVE_AVX512_PATH
FWD(fwd_bf16_avx512, uint16_t, uint16_t)
FWD(fwd_f32_avx512, float, uint32_t)
BWD(bwd_16_avx512, uint16_t)
BWD(bwd_32_avx512, uint32_t)
FWD(fwd_f32_avx2, float, uint32_t)
BWD(bwd_32_avx2, uint32_t)
#endif

/* 2 where this build and CPU have the AVX-512 kernels (used for channel counts that are a multiple of
 * 16, bf16 or fp32); 1 where they have the AVX2 ones (fp32 only, channels a multiple of 8);
 * 0: the portable loops run. */
int cnnlab_maxpool2x2_simd(void) { return avx512_ok() ? 2 : avx2_ok() ? 1 : 0; }

/* 1 where the kernels split a batch over PyTorch's OpenMP threads. */
int cnnlab_maxpool2x2_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int simd(int dtype, int64_t C, int generic) {
    return HAVE_AVX512_PATH && !generic && avx512_ok() && C % 16 == 0;
}

static int simd2(int dtype, int64_t C, int generic) {
    return HAVE_AVX512_PATH && !generic && !avx512_ok() && avx2_ok() && dtype == 1 && C % 8 == 0;
}

/* dtype 0: bf16 (codes uint16), 1: fp32 (codes uint32). generic != 0 forces the portable loops (tests).
 * Returns 0, or -1 for an unknown dtype. */
int cnnlab_maxpool2x2_forward(int dtype, const void *x, void *y, void *code, int64_t n0, int64_t n1, int64_t H,
                              int64_t W, int64_t C, int relu, int generic) {
    kernel_fn fn = NULL;
#if HAVE_AVX512_PATH
    if (simd(dtype, C, generic)) fn = dtype == 0 ? fwd_bf16_avx512_k : fwd_f32_avx512_k;
    else if (simd2(dtype, C, generic)) fn = fwd_f32_avx2_k;
#endif
    if (!fn && (dtype == 0 || dtype == 1)) fn = dtype == 0 ? fwd_bf16_generic_k : fwd_f32_generic_k;
    if (!fn) return -1;
    run(fn, x, y, code, n0, n1, H, W, C, relu);
    return 0;
}

int cnnlab_maxpool2x2_backward(int dtype, const void *g, const void *code, void *gx, int64_t n0, int64_t n1,
                               int64_t H, int64_t W, int64_t C, int generic) {
    kernel_fn fn = NULL;
#if HAVE_AVX512_PATH
    if (simd(dtype, C, generic)) fn = dtype == 0 ? bwd_16_avx512_k : bwd_32_avx512_k;
    else if (simd2(dtype, C, generic)) fn = bwd_32_avx2_k;
#endif
    if (!fn && (dtype == 0 || dtype == 1)) fn = dtype == 0 ? bwd_16_generic_k : bwd_32_generic_k;
    if (!fn) return -1;
    run(fn, g, gx, (void *)code, n0, n1, H, W, C, 0);
    return 0;
}
