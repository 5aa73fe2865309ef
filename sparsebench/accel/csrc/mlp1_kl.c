/* One training step's forward and backward of stacked `mlp1` with the sparse-target KL loss,
 * fused into one pass over blocks of 8 batch rows (the CPU "native" kernel, sparsebench/native.py),
 * optionally followed by each instance's AdamW step while its gradients are in cache (`adamw`).
 *
 * Per instance n and batch row b (docs/science.md section 2; sparsebench/models/mlp.py):
 *   x  = sum_s w_bs E[t_bs]                      [d]
 *   a  = relu(x W_in + b_in)                     [m]
 *   r  = x + a W_out + b_out                     [d]
 *   z  = r W_U + b_U                             [V]
 *   loss_b = sum_i p_i log p_i - sum_i p_i z[idx_i] + logsumexp(z)
 * and the gradients of the batch mean of loss_b wrt E, W_in, b_in, W_out, b_out, W_U, b_U
 * (written below for the sum; the kernel folds the 1/B into g):
 *   g = softmax(z) - p*   dW_U += r^T g   db_U += g   dr = g W_U^T
 *   dW_out += a^T dr      db_out += dr    da = (dr W_out^T) * [a > 0]
 *   dW_in += x^T da       db_in += da     dx = dr + da W_in^T      dE[t_bs] += w_bs dx
 *
 * Why a hand-written kernel: at the small sizes this suite trains (d, m ~ 32, V ~ 500) a step of
 * eager torch ops is bound by per-op overhead and by passes over [rows, V] tiles, not by FLOPs
 * (docs/performance.md). Here every intermediate of a block of 8 rows stays in L1/L2, each matmul is
 * a register-blocked AVX-512 FMA loop, and the softmax runs on the logits tile while it is hot.
 * Arithmetic is fp32 with fp32 accumulation (the loss sum in double); it equals the torch path up to
 * summation order and a polynomial exp2 (relative error ~2e-7; tests/unit/test_native.py). With
 * bf16, the three V-sized matmuls round their operands to bf16 and accumulate in fp32 (the torch
 * path's bf16 also rounds the matmul outputs).
 * Single-threaded: the caller splits instances over threads or processes.
 *
 * Build: cc -O3 -mavx512f -mavx512bf16 -mfma -shared -fPIC (sparsebench/native.py, on first use). The
 * bf16 intrinsics run only when bf16 is asked for, so CPUs with AVX-512 but not AVX512-BF16 run the rest.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 8 /* batch rows per block: the block's logits tile is ROWS x V floats */
#define INLINE static inline __attribute__((always_inline))
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* mask of the first n of 16 lanes (n may be <= 0 or >= 16) */
INLINE __mmask16 tail(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* 2^x for x <= 0: degree-5 minimax polynomial on the fraction (relative error 7.5e-8 before
 * float rounding, ~2e-7 after), exponent via scalef. */
INLINE __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-126.f), x); /* (in this order a NaN passes through: maxps returns
                                                   * its second operand when either is NaN) */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n); /* [-0.5, 0.5] */
    __m512 p = _mm512_set1_ps(1.3276472454890609e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.675540961325169e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550713092088699e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120237350464e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469440460205e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
    return _mm512_scalef_ps(p, n);
}

/* ln x for x > 0: x = 2^e m with m in [0.75, 1.5), ln m = 2 atanh(s) with s = (m - 1) / (m + 1),
 * |s| <= 0.2, by its series to s^11 (relative error ~1e-8 before float rounding). */
INLINE __m512 log_ps(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src);
    __m512 e = _mm512_getexp_ps(_mm512_mul_ps(x, _mm512_set1_ps(4.0f / 3.0f))); /* the exponent matching m */
    __m512 s = _mm512_div_ps(_mm512_sub_ps(m, one), _mm512_add_ps(m, one)), s2 = _mm512_mul_ps(s, s);
    __m512 t = _mm512_set1_ps(2.0f / 11);
    t = _mm512_fmadd_ps(t, s2, _mm512_set1_ps(2.0f / 9));
    t = _mm512_fmadd_ps(t, s2, _mm512_set1_ps(2.0f / 7));
    t = _mm512_fmadd_ps(t, s2, _mm512_set1_ps(2.0f / 5));
    t = _mm512_fmadd_ps(t, s2, _mm512_set1_ps(2.0f / 3));
    t = _mm512_fmadd_ps(t, s2, _mm512_set1_ps(2.0f));
    return _mm512_fmadd_ps(e, _mm512_set1_ps(LN2), _mm512_mul_ps(t, s));
}

/* sum_i p_i ln p_i over n target probabilities (0 ln 0 = 0): the entropy term of the KL */
static double entropy_sum(int64_t n, const float *p) {
    double total = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __m512 x = _mm512_maskz_loadu_ps(tail((int)(n - i < 16 ? n - i : 16)), p + i);
        __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
        total += _mm512_mask_reduce_add_ps(pos, _mm512_mul_ps(x, log_ps(x)));
    }
    return total;
}

/* C[Q rows, 32 cols] (+)= A[Q, K] B[K, cols]: starting from C, or from `bias` (one row, broadcast
 * over the rows) if it is not NULL; cols past `left` are masked off. Q is a compile-time constant at
 * every call, so the accumulators live in registers. */
INLINE void nn_tile(const int Q, int K, const float *A, int lda, const float *B, int ldb,
                    float *C, int ldc, int left, const float *bias) {
    __m512 acc[8][2], b[2];
    __mmask16 mk[2];
    for (int c = 0; c < 2; c++) mk[c] = tail(left - 16 * c);
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < 2; c++)
            acc[q][c] = _mm512_maskz_loadu_ps(mk[c], bias ? bias + 16 * c : C + q * ldc + 16 * c);
    for (int k = 0; k < K; k++) {
        for (int c = 0; c < 2; c++) b[c] = _mm512_maskz_loadu_ps(mk[c], B + (int64_t)k * ldb + 16 * c);
        for (int q = 0; q < Q; q++) {
            __m512 x = _mm512_set1_ps(A[q * lda + k]);
            for (int c = 0; c < 2; c++) acc[q][c] = _mm512_fmadd_ps(x, b[c], acc[q][c]);
        }
    }
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < 2; c++) _mm512_mask_storeu_ps(C + q * ldc + 16 * c, mk[c], acc[q][c]);
}

/* C[rows, n] += A[rows, K] B[K, n], or C = bias + A B if bias is not NULL (rows <= ROWS; row-major).
 * Tiles of 8 rows x 2 vectors (1 row in a partial block) along the columns: a block reads B once. */
static void gemm_nn(int rows, int K, int n, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                    const float *bias) {
    for (int c0 = 0; c0 < n; c0 += 32) {
        const float *bc = bias ? bias + c0 : NULL;
        int r = 0;
        for (; r + 8 <= rows; r += 8)
            nn_tile(8, K, A + r * lda, lda, B + c0, ldb, C + r * ldc + c0, ldc, n - c0, bc);
        for (; r < rows; r++) nn_tile(1, K, A + r * lda, lda, B + c0, ldb, C + r * ldc + c0, ldc, n - c0, bc);
    }
}

/* C[K, n] += A[rows, K]^T B[rows, n]   (a rank-`rows` update, rows <= ROWS). A must have ROWS
 * readable rows: rows past `rows` are multiplied by zero rows of B, so they must be finite. */
static void gemm_tn(int rows, int K, int n, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    for (int c0 = 0; c0 < n; c0 += 32) {
        __mmask16 m0 = tail(n - c0), m1 = tail(n - c0 - 16);
        __m512 b0[ROWS], b1[ROWS];
        for (int r = 0; r < ROWS; r++) { /* rows past `rows` are zero: a partial block costs a full one */
            b0[r] = r < rows ? _mm512_maskz_loadu_ps(m0, B + r * ldb + c0) : _mm512_setzero_ps();
            b1[r] = r < rows ? _mm512_maskz_loadu_ps(m1, B + r * ldb + c0 + 16) : _mm512_setzero_ps();
        }
        int k = 0;
        for (; k + 4 <= K; k += 4) {
            __m512 c0v[4], c1v[4];
            for (int q = 0; q < 4; q++) {
                c0v[q] = _mm512_maskz_loadu_ps(m0, C + (int64_t)(k + q) * ldc + c0);
                c1v[q] = _mm512_maskz_loadu_ps(m1, C + (int64_t)(k + q) * ldc + c0 + 16);
            }
            for (int r = 0; r < ROWS; r++)
                for (int q = 0; q < 4; q++) {
                    __m512 x = _mm512_set1_ps(A[r * lda + k + q]);
                    c0v[q] = _mm512_fmadd_ps(x, b0[r], c0v[q]);
                    c1v[q] = _mm512_fmadd_ps(x, b1[r], c1v[q]);
                }
            for (int q = 0; q < 4; q++) {
                _mm512_mask_storeu_ps(C + (int64_t)(k + q) * ldc + c0, m0, c0v[q]);
                _mm512_mask_storeu_ps(C + (int64_t)(k + q) * ldc + c0 + 16, m1, c1v[q]);
            }
        }
        for (; k < K; k++) {
            __m512 c0v = _mm512_maskz_loadu_ps(m0, C + (int64_t)k * ldc + c0);
            __m512 c1v = _mm512_maskz_loadu_ps(m1, C + (int64_t)k * ldc + c0 + 16);
            for (int r = 0; r < rows; r++) {
                __m512 x = _mm512_set1_ps(A[r * lda + k]);
                c0v = _mm512_fmadd_ps(x, b0[r], c0v);
                c1v = _mm512_fmadd_ps(x, b1[r], c1v);
            }
            _mm512_mask_storeu_ps(C + (int64_t)k * ldc + c0, m0, c0v);
            _mm512_mask_storeu_ps(C + (int64_t)k * ldc + c0 + 16, m1, c1v);
        }
    }
}

/* ---- bf16 variants (AVX512-BF16 VDPBF16PS: each 32-bit lane holds a pair of bf16 along the
 * contraction, products summed into fp32). Used for the three V-sized matmuls when bf16 is asked. */

/* 16 floats -> 16 bf16 (round to nearest even) in the low halves of 32-bit lanes */
INLINE __m512i bf16_lo(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }

/* pairs (lo[i], hi[i]) as 32-bit lanes: the operand layout of VDPBF16PS */
INLINE __m512i bf16_pairs(__m512 lo, __m512 hi) {
    return _mm512_or_si512(bf16_lo(lo), _mm512_slli_epi32(bf16_lo(hi), 16));
}

/* C[Q rows, 32 cols] += A[Q, K2 pairs] B[K2 pairs, cols]: A holds bf16 pairs along K (one uint32
 * each), B holds for each pair index and column the pair (B[2k, c], B[2k+1, c]). */
INLINE void nn_tile_bf(const int Q, int K2, const uint32_t *A, int lda, const uint32_t *B, int ldb,
                       float *C, int ldc, int left, const float *bias) {
    __m512 acc[8][2];
    __m512i b[2];
    __mmask16 mk[2];
    for (int c = 0; c < 2; c++) mk[c] = tail(left - 16 * c);
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < 2; c++)
            acc[q][c] = _mm512_maskz_loadu_ps(mk[c], bias ? bias + 16 * c : C + q * ldc + 16 * c);
    for (int k = 0; k < K2; k++) {
        for (int c = 0; c < 2; c++) b[c] = _mm512_maskz_loadu_epi32(mk[c], B + (int64_t)k * ldb + 16 * c);
        for (int q = 0; q < Q; q++) {
            __m512i x = _mm512_set1_epi32((int)A[q * lda + k]);
            for (int c = 0; c < 2; c++) acc[q][c] = _mm512_dpbf16_ps(acc[q][c], (__m512bh)x, (__m512bh)b[c]);
        }
    }
    for (int q = 0; q < Q; q++)
        for (int c = 0; c < 2; c++) _mm512_mask_storeu_ps(C + q * ldc + 16 * c, mk[c], acc[q][c]);
}

static void gemm_nn_bf(int rows, int K2, int n, const uint32_t *A, int lda, const uint32_t *B, int ldb, float *C,
                       int ldc, const float *bias) {
    for (int c0 = 0; c0 < n; c0 += 32) {
        const float *bc = bias ? bias + c0 : NULL;
        int r = 0;
        for (; r + 8 <= rows; r += 8)
            nn_tile_bf(8, K2, A + r * lda, lda, B + c0, ldb, C + r * ldc + c0, ldc, n - c0, bc);
        for (; r < rows; r++) nn_tile_bf(1, K2, A + r * lda, lda, B + c0, ldb, C + r * ldc + c0, ldc, n - c0, bc);
    }
}

/* C[K, n] += A^T B over a block of ROWS rows, with A given as row pairs: Ap[i * K + k] holds
 * (A[2i, k], A[2i+1, k]) in bf16; B [ROWS, n] fp32 (rows past `rows` are read as zero). */
static void gemm_tn_bf(int rows, int K, int n, const uint32_t *Ap, const float *B, int ldb, float *C, int ldc) {
    for (int c0 = 0; c0 < n; c0 += 32) {
        __mmask16 m[2] = {tail(n - c0), tail(n - c0 - 16)};
        __m512i bp[ROWS / 2][2];
        for (int i = 0; i < ROWS / 2; i++)
            for (int h = 0; h < 2; h++) {
                const float *lo = B + 2 * i * ldb + c0 + 16 * h, *hi = lo + ldb;
                bp[i][h] = bf16_pairs(2 * i < rows ? _mm512_maskz_loadu_ps(m[h], lo) : _mm512_setzero_ps(),
                                      2 * i + 1 < rows ? _mm512_maskz_loadu_ps(m[h], hi) : _mm512_setzero_ps());
            }
        int k = 0;
        for (; k + 4 <= K; k += 4) {
            __m512 acc[4][2];
            for (int q = 0; q < 4; q++)
                for (int h = 0; h < 2; h++)
                    acc[q][h] = _mm512_maskz_loadu_ps(m[h], C + (int64_t)(k + q) * ldc + c0 + 16 * h);
            for (int i = 0; i < ROWS / 2; i++)
                for (int q = 0; q < 4; q++) {
                    __m512i x = _mm512_set1_epi32((int)Ap[i * K + k + q]);
                    for (int h = 0; h < 2; h++)
                        acc[q][h] = _mm512_dpbf16_ps(acc[q][h], (__m512bh)x, (__m512bh)bp[i][h]);
                }
            for (int q = 0; q < 4; q++)
                for (int h = 0; h < 2; h++)
                    _mm512_mask_storeu_ps(C + (int64_t)(k + q) * ldc + c0 + 16 * h, m[h], acc[q][h]);
        }
        for (; k < K; k++)
            for (int h = 0; h < 2; h++) {
                __m512 acc = _mm512_maskz_loadu_ps(m[h], C + (int64_t)k * ldc + c0 + 16 * h);
                for (int i = 0; i < ROWS / 2; i++)
                    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32((int)Ap[i * K + k]), (__m512bh)bp[i][h]);
                _mm512_mask_storeu_ps(C + (int64_t)k * ldc + c0 + 16 * h, m[h], acc);
            }
    }
}

/* dst[r, i] = (bf16 src[r, 2i], bf16 src[r, 2i+1]) for rows of n floats (an odd n pads with 0) */
static void pairs_along_row(int rows, int n, const float *src, int lds, uint32_t *dst, int ldd) {
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < n; v += 32) {
            __m512 lo = _mm512_maskz_loadu_ps(tail(n - v), src + r * lds + v);
            __m512 hi = _mm512_maskz_loadu_ps(tail(n - v - 16), src + r * lds + v + 16);
            __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            _mm512_mask_storeu_epi32(dst + r * ldd + v / 2, tail((n - v + 1) / 2), pairs);
        }
}

/* dst[i, c] = (bf16 src[2i, c], bf16 src[2i+1, c]) for a [rows, n] matrix (an odd row count pads with 0) */
static void pairs_across_rows(int rows, int n, const float *src, int lds, uint32_t *dst, int ldd) {
    for (int i = 0; 2 * i < rows; i++)
        for (int c = 0; c < n; c += 16) {
            __mmask16 mk = tail(n - c);
            __m512 lo = _mm512_maskz_loadu_ps(mk, src + 2 * i * lds + c);
            __m512 hi = 2 * i + 1 < rows ? _mm512_maskz_loadu_ps(mk, src + (2 * i + 1) * lds + c) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(dst + i * ldd + c, mk, bf16_pairs(lo, hi));
        }
}

/* acc[n] += sum_r f[r] X[r, :]   (f NULL: all ones) */
static void sum_rows(int rows, int n, const float *X, int ld, const float *f, float *acc) {
    for (int v = 0; v < n; v += 16) {
        __mmask16 mk = tail(n - v);
        __m512 s = _mm512_maskz_loadu_ps(mk, acc + v);
        for (int r = 0; r < rows; r++)
            s = _mm512_fmadd_ps(_mm512_set1_ps(f ? f[r] : 1.0f), _mm512_maskz_loadu_ps(mk, X + r * ld + v), s);
        _mm512_mask_storeu_ps(acc + v, mk, s);
    }
}

/* X[r, :] *= f[r] for rows of n floats */
static void scale_rows(int rows, int n, float *X, int ld, const float *f) {
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < n; v += 16) {
            __mmask16 mk = tail(n - v);
            __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, X + r * ld + v), _mm512_set1_ps(f[r]));
            _mm512_mask_storeu_ps(X + r * ld + v, mk, y);
        }
}

/* dst[cols, rows] = src[rows, cols]^T */
static void transpose(int rows, int cols, const float *src, float *dst) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(int64_t)j * rows + i] = src[(int64_t)i * cols + j];
}

/* One AdamW step on n weights in place (torch.optim.AdamW's update, amsgrad off): with
 * h = {lr * weight_decay, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t), eps},
 *   w *= 1 - lr wd;  m += (1 - beta1)(g - m);  v = beta2 v + (1 - beta2) g^2
 *   w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps) */
static void adamw(int64_t n, float *w, const float *g, float *m, float *v, const double *h) {
    const __m512 decay = _mm512_set1_ps((float)(1.0 - h[0])), b1c = _mm512_set1_ps((float)h[1]);
    const __m512 b2 = _mm512_set1_ps((float)h[2]), b2c = _mm512_set1_ps((float)h[3]);
    const __m512 step = _mm512_set1_ps((float)h[4]), inv_bc2 = _mm512_set1_ps((float)h[5]);
    const __m512 eps = _mm512_set1_ps((float)h[6]);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail((int)(n - i < 16 ? n - i : 16));
        __m512 gi = _mm512_maskz_loadu_ps(mk, g + i), mi = _mm512_maskz_loadu_ps(mk, m + i);
        __m512 vi = _mm512_maskz_loadu_ps(mk, v + i), wi = _mm512_maskz_loadu_ps(mk, w + i);
        wi = _mm512_mul_ps(wi, decay);
        mi = _mm512_fmadd_ps(b1c, _mm512_sub_ps(gi, mi), mi);
        vi = _mm512_fmadd_ps(b2, vi, _mm512_mul_ps(b2c, _mm512_mul_ps(gi, gi)));
        __m512 denom = _mm512_fmadd_ps(_mm512_sqrt_ps(vi), inv_bc2, eps); /* one division per weight, not two */
        wi = _mm512_fnmadd_ps(step, _mm512_div_ps(mi, denom), wi);
        _mm512_mask_storeu_ps(m + i, mk, mi);
        _mm512_mask_storeu_ps(v + i, mk, vi);
        _mm512_mask_storeu_ps(w + i, mk, wi);
    }
}

/* This thread's scratch memory, at least `n` floats, 64-byte aligned. Kept between calls (a step
 * needs the same size every time): allocating it per call costs page faults on every call. */
static float *scratch(size_t n) {
    static __thread float *buf = NULL;
    static __thread size_t cap = 0;
    if (n > cap) {
        free(buf);
        cap = 0;
        buf = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
        if (buf) cap = n;
    }
    return buf;
}

/* In place, one row of base-2 logits z2 = z log2(e) -> e = 2^(z2 - max) - p* total, where total =
 * sum 2^(z2 - max): then softmax(z) - p* = e / total, so the normalisation is left to the consumers
 * (a factor per row) instead of a pass over the row. Returns this row's cross-entropy
 * -sum_i p_i z_i + logsumexp(z) (the KL without the entropy term, `entropy_sum`); *sum = total. */
static double softmax_row(float *z, int V, int k, const int64_t *idx, const float *p, float *sum) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int v = 0; v < V; v += 16) mx = _mm512_mask_max_ps(mx, tail(V - v), mx, _mm512_loadu_ps(z + v));
    const float m = _mm512_reduce_max_ps(mx);
    double target = 0; /* -sum_i p_i z_i, z in natural units */
    for (int i = 0; i < k; i++) target -= (double)p[i] * LN2 * z[idx[i]];
    const __m512 mv = _mm512_set1_ps(m);
    __m512 s = _mm512_setzero_ps();
    for (int v = 0; v < V; v += 16) {
        __mmask16 mk = tail(V - v);
        __m512 e = exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, z + v), mv));
        s = _mm512_mask_add_ps(s, mk, s, e);
        _mm512_mask_storeu_ps(z + v, mk, e);
    }
    const float total = _mm512_reduce_add_ps(s);
    for (int i = 0; i < k; i++) z[idx[i]] -= p[i] * total;
    *sum = total;
    return target + LN2 * (double)m + log((double)total); /* logsumexp(z) = ln2 * max + ln(total) */
}

/* Instances [n0, n1) of a stack of N. Shapes (row-major, contiguous): tokens, wts [N, B, S];
 * E [N, Vin, d]; W_in [N, d, m]; b_in [N, m]; W_out [N, m, d]; b_out [N, d]; W_U [N, d, V];
 * b_U [N, V]; idx [N, B, k] (int64); p [N, B, k]. Writes loss[n] = the batch's summed loss (double).
 * If want_grad, writes the gradients of the batch *mean* loss into the g* arrays (same shapes as
 * the weights); a NULL one (a frozen weight) is skipped. bf16: the three V-sized matmuls (logits,
 * dL/dr, dL/dW_U) take bf16 operands with fp32 accumulation (needs AVX512-BF16); everything else
 * stays fp32. If adam is not NULL (it needs want_grad), each instance then takes one AdamW step
 * (`adamw`, with hyper-parameters adam[0..6]) right after its gradients, while they are in cache:
 * every weight whose gradient is computed (i = 0 for E .. 6 for b_U, in argument order), with its
 * moments in am[i], av[i] (shaped like it). Weights are read-only otherwise.
 * Inputs are trusted: native.py checks shapes, and indices with `sb_check_indices`, before the call.
 * Returns 0, or -2 if memory ran out. */
int sb_mlp1_kl(int n0, int n1, int B, int S, int Vin, int d, int m, int V, int k, int want_grad, int bf16,
               const int64_t *tokens, const float *wts, float *E, float *W_in, float *b_in,
               float *W_out, float *b_out, float *W_U, float *b_U,
               const int64_t *idx, const float *p, double *loss, float *gE, float *gW_in, float *gb_in,
               float *gW_out, float *gb_out, float *gW_U, float *gb_U,
               const double *adam, float *const *am, float *const *av) {
    const int Vs = (V + 15) & ~15; /* logits row stride: rows start 64-byte apart */
    const int d2 = (d + 1) / 2, V2 = (V + 1) / 2; /* bf16 pairs along d and along V */
    const float scale = 1.0f / (float)B;           /* gradients are of the batch mean */
    const size_t blk = (size_t)ROWS * (5 * d + 2 * m); /* per-block activations, zeroed for a partial block */
    size_t nf = blk + (size_t)ROWS * (Vs + 1) + 2 * (size_t)V * d + V + 2 * (size_t)d * m;
    if (bf16) nf += (size_t)d2 * V + (size_t)V2 * d + (size_t)ROWS * (d2 + d + V2);
    float *buf = scratch(nf);
    if (!buf) return -2;
    /* [ROWS, .] activations: x, r, r scaled by f, dL/dr, dL/dx (d wide); a, dL/da (m wide); logits z
     * [ROWS, Vs]; row factors f [ROWS]; log2(e) W_U [d, V] and b_U [V]; W_U^T [V, d]; W_out^T, W_in^T */
    float *x = buf, *r1 = x + ROWS * d, *rs = r1 + ROWS * d, *dr = rs + ROWS * d, *dx = dr + ROWS * d;
    float *a = dx + ROWS * d, *da = a + ROWS * m, *z = da + ROWS * m, *f = z + ROWS * Vs, *WU2 = f + ROWS;
    float *bU2 = WU2 + (size_t)d * V, *WUT = bU2 + V, *WoT = WUT + (size_t)V * d, *WiT = WoT + (size_t)d * m;
    /* bf16 operands: log2(e) W_U as pairs along d [d2, V]; W_U as pairs along V [V2, d]; r as pairs
     * along d [ROWS, d2]; r f as pairs across rows [ROWS/2, d]; e as pairs along V [ROWS, V2] */
    uint32_t *Wp = (uint32_t *)(WiT + (size_t)m * d), *WTp = Wp + (size_t)d2 * V, *rb = WTp + (size_t)V2 * d;
    uint32_t *rp = rb + ROWS * d2, *gb = rp + ROWS / 2 * d;
    float *const W[7] = {E, W_in, b_in, W_out, b_out, W_U, b_U};
    float *const G[7] = {gE, gW_in, gb_in, gW_out, gb_out, gW_U, gb_U};
    const int64_t size[7] = {(int64_t)Vin * d, (int64_t)d * m, m, (int64_t)m * d, d, (int64_t)d * V, V};
    for (int n = n0; n < n1; n++) {
        const int64_t *tok = tokens + (int64_t)n * B * S, *ix = idx + (int64_t)n * B * k;
        const float *w = wts + (int64_t)n * B * S, *pn = p + (int64_t)n * B * k;
        const float *En = E + (int64_t)n * Vin * d, *Wi = W_in + (int64_t)n * d * m, *bi = b_in + (int64_t)n * m;
        const float *Wo = W_out + (int64_t)n * m * d, *bo = b_out + (int64_t)n * d;
        const float *WU = W_U + (int64_t)n * d * V, *bU = b_U + (int64_t)n * V;
        float *g[7]; /* this instance's gradients (NULL: not wanted), starting at zero */
        for (int i = 0; i < 7; i++) {
            g[i] = want_grad && G[i] ? G[i] + n * size[i] : NULL;
            if (g[i]) memset(g[i], 0, sizeof(float) * size[i]);
        }
        float *gEn = g[0], *gWin = g[1], *gbin = g[2], *gWon = g[3], *gbon = g[4], *gWUn = g[5], *gbUn = g[6];
        /* base-2 logits come straight out of the matmul: exp2 is cheaper than exp */
        for (int64_t i = 0; i < (int64_t)d * V; i++) WU2[i] = WU[i] * LOG2E;
        for (int v = 0; v < V; v++) bU2[v] = bU[v] * LOG2E;
        if (bf16) pairs_across_rows(d, V, WU2, V, Wp, V);
        if (bf16 && want_grad) { /* pairs along V [d, V2] (in W_U^T's space, unused in bf16), transposed */
            uint32_t *along = (uint32_t *)WUT;
            pairs_along_row(d, V, WU, V, along, V2);
            for (int j = 0; j < d; j++)
                for (int v2 = 0; v2 < V2; v2++) WTp[(int64_t)v2 * d + j] = along[(int64_t)j * V2 + v2];
        } else if (want_grad) {
            transpose(d, V, WU, WUT);
        }
        if (want_grad) {
            transpose(m, d, Wo, WoT);
            transpose(d, m, Wi, WiT);
        }
        double total = entropy_sum((int64_t)B * k, pn);
        for (int b0 = 0; b0 < B; b0 += ROWS) {
            const int rows = B - b0 < ROWS ? B - b0 : ROWS;
            if (rows < ROWS) memset(buf, 0, sizeof(float) * blk); /* gemm_tn reads ROWS rows */
            const int64_t *tb = tok + (int64_t)b0 * S;
            const float *wb = w + (int64_t)b0 * S;
            /* forward: x (embedding bag), a = relu(x W_in + b_in), r = x + a W_out + b_out,
             * z2 = log2(e) (r W_U + b_U) */
            memset(x, 0, sizeof(float) * ROWS * d);
            for (int r = 0; r < rows; r++)
                for (int s = 0; s < S; s++) {
                    const __m512 ws = _mm512_set1_ps(wb[r * S + s]);
                    const float *e = En + tb[r * S + s] * d;
                    for (int j = 0; j < d; j += 16) {
                        __mmask16 mk = tail(d - j);
                        __m512 v = _mm512_fmadd_ps(ws, _mm512_maskz_loadu_ps(mk, e + j),
                                                   _mm512_maskz_loadu_ps(mk, x + r * d + j));
                        _mm512_mask_storeu_ps(x + r * d + j, mk, v);
                    }
                }
            gemm_nn(rows, d, m, x, d, Wi, m, a, m, bi);
            for (int i = 0; i < rows * m; i++) a[i] = a[i] > 0 ? a[i] : 0;
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < d; j++) r1[r * d + j] = x[r * d + j] + bo[j];
            gemm_nn(rows, m, d, a, m, Wo, d, r1, d, NULL);
            if (bf16) {
                pairs_along_row(rows, d, r1, d, rb, d2);
                gemm_nn_bf(rows, d2, V, rb, d2, Wp, V, z, Vs, bU2);
            } else {
                gemm_nn(rows, d, V, r1, d, WU2, V, z, Vs, bU2);
            }
            for (int r = 0; r < rows; r++) {
                float sum;
                total += softmax_row(z + r * Vs, V, k, ix + (int64_t)(b0 + r) * k, pn + (int64_t)(b0 + r) * k, &sum);
                f[r] = scale / sum;
            }
            if (!want_grad) continue;
            /* backward: g = (softmax - p*) / B = f e row by row (softmax_row) */
            if (gbUn) sum_rows(rows, V, z, Vs, f, gbUn);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < d; j++) rs[r * d + j] = r1[r * d + j] * f[r];
            memset(dr, 0, sizeof(float) * ROWS * d);
            if (bf16) {
                pairs_across_rows(ROWS, d, rs, d, rp, d);
                if (gWUn) gemm_tn_bf(rows, d, V, rp, z, Vs, gWUn, V);
                pairs_along_row(rows, V, z, Vs, gb, V2);
                gemm_nn_bf(rows, V2, d, gb, V2, WTp, d, dr, d, NULL);
            } else {
                if (gWUn) gemm_tn(rows, d, V, rs, d, z, Vs, gWUn, V);
                gemm_nn(rows, V, d, z, Vs, WUT, d, dr, d, NULL);
            }
            scale_rows(rows, d, dr, d, f);
            if (gbon) sum_rows(rows, d, dr, d, NULL, gbon);
            if (gWon) gemm_tn(rows, m, d, a, m, dr, d, gWon, d);
            memset(da, 0, sizeof(float) * ROWS * m);
            gemm_nn(rows, d, m, dr, d, WoT, m, da, m, NULL);
            for (int i = 0; i < rows * m; i++) da[i] = a[i] > 0 ? da[i] : 0;
            if (gbin) sum_rows(rows, m, da, m, NULL, gbin);
            if (gWin) gemm_tn(rows, d, m, x, d, da, m, gWin, m);
            if (!gEn) continue;
            memcpy(dx, dr, sizeof(float) * ROWS * d);
            gemm_nn(rows, m, d, da, m, WiT, d, dx, d, NULL);
            for (int r = 0; r < rows; r++)
                for (int s = 0; s < S; s++) {
                    const __m512 ws = _mm512_set1_ps(wb[r * S + s]);
                    float *e = gEn + tb[r * S + s] * d;
                    for (int j = 0; j < d; j += 16) {
                        __mmask16 mk = tail(d - j);
                        __m512 v = _mm512_fmadd_ps(ws, _mm512_maskz_loadu_ps(mk, dx + r * d + j),
                                                   _mm512_maskz_loadu_ps(mk, e + j));
                        _mm512_mask_storeu_ps(e + j, mk, v);
                    }
                }
        }
        loss[n] = total;
        if (!adam) continue;
        for (int i = 0; i < 7; i++)
            if (g[i]) {
                const int64_t o = n * size[i];
                adamw(size[i], W[i] + o, g[i], am[i] + o, av[i] + o, adam);
            }
    }
    return 0;
}

/* 0 if every token is in [0, Vin) and every target index in [0, V) (tokens [nt], idx [ni]), else -1:
 * checked once before the kernel runs, so a bad batch changes no weight. */
int sb_check_indices(int64_t nt, const int64_t *tokens, int64_t Vin, int64_t ni, const int64_t *idx, int64_t V) {
    int64_t bad = 0;
    for (int64_t i = 0; i < nt; i++) bad |= (tokens[i] < 0) | (tokens[i] >= Vin);
    for (int64_t i = 0; i < ni; i++) bad |= (idx[i] < 0) | (idx[i] >= V);
    return bad ? -1 : 0;
}
