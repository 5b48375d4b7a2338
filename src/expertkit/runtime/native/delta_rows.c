/* Each row's expert's LoRA delta added to a shared projection's output, for a batch step that mixes
 * experts (expertkit/runtime/delta_rows.py): y[r] + (x[r]·A_eᵀ)·B_eᵀ over the ranks of row r's expert e
 * alone, in fp32, reading bf16 or fp32 rows. One call per projection, its rows split over PyTorch's
 * OpenMP threads when it is given them (openmp.h).
 *
 * Why hand-written: in PyTorch this is five operators per projection (casts, the stacked A product,
 * a mask that zeroes the other experts' ranks, the B product); at 16 rows of two rank-8 experts
 * their fixed costs were an eighth of a mixed step in `expert-cli serve`. Here a row touches only
 * its own expert's ranks, and each rank only the output columns its B row can change: in a fused
 * projection (q, k and v as one) q's ranks write q's columns and v's ranks v's. Four ranks' dot
 * products share each load of x; ranks with the same columns add to an output block loaded and
 * stored once. Without AVX-512 the same arithmetic runs as portable C. */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define EK_AVX512 1
#else
#define EK_AVX512 0
#endif
#include "openmp.h"

#define GROUP 8 /* ranks with the same columns added per pass over an output block */

static inline float bf16_to_float(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static void load_row(const void *src, int bf16, int n, float *dst) {
    if (!bf16) {
        memcpy(dst, src, sizeof(float) * n);
        return;
    }
    const uint16_t *h = src;
    for (int i = 0; i < n; i++)
        dst[i] = bf16_to_float(h[i]);
}

static inline float x_at(const void *x, int bf16, int i) {
    return bf16 ? bf16_to_float(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

#if EK_AVX512
static inline __m512 x16(const void *x, int bf16, int i, __mmask16 m) {
    if (!bf16)
        return _mm512_maskz_loadu_ps(m, (const float *)x + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)x + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

/* u[j] = x·a[k + j] for j < n (n ≤ 4): the four dot products share each load of x. */
static void dots(const void *x, int bf16, const float *a, int in, int n, float *u) {
    const float *r[4];
    for (int j = 0; j < 4; j++)
        r[j] = a + (size_t)(j < n ? j : 0) * in;
#if EK_AVX512
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < in; i += 16) {
        __mmask16 m = in - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (in - i)) - 1);
        __m512 v = x16(x, bf16, i, m);
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, r[j] + i), acc[j]);
    }
    for (int j = 0; j < n; j++)
        u[j] = _mm512_reduce_add_ps(acc[j]);
#else
    for (int j = 0; j < n; j++) {
        float total = 0.f;
        for (int i = 0; i < in; i++)
            total += x_at(x, bf16, i) * r[j][i];
        u[j] = total;
    }
#endif
}

/* o[c] += Σ_j u[j]·b[j][c] for c in [lo, hi), n ≤ GROUP rows of b (stride out). */
static void add_ranks(float *o, const float *u, const float *b, int out, int n, int lo, int hi) {
#if EK_AVX512
    for (int c = lo; c < hi; c += 16) {
        __mmask16 m = hi - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hi - c)) - 1);
        __m512 acc = _mm512_maskz_loadu_ps(m, o + c);
        for (int j = 0; j < n; j++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(u[j]), _mm512_maskz_loadu_ps(m, b + (size_t)j * out + c), acc);
        _mm512_mask_storeu_ps(o + c, m, acc);
    }
#else
    for (int j = 0; j < n; j++)
        for (int c = lo; c < hi; c++)
            o[c] += u[j] * b[(size_t)j * out + c];
#endif
}

/* o = skip + o, elementwise. */
static void add_row(float *o, const float *skip, int n) {
    for (int i = 0; i < n; i++)
        o[i] = skip[i] + o[i];
}

/* One row's delta: its ranks [first, first + count). */
static void row_delta(const void *xr, int bf16, int in, float *o, int out, const float *a, const float *b_t,
                      const int32_t *columns, int first, int count) {
    float u[GROUP];
    for (int k = first; k < first + count;) {
        int lo = columns[2 * k], hi = columns[2 * k + 1], n = 1; /* a run of ranks with the same columns */
        while (n < GROUP && k + n < first + count && columns[2 * (k + n)] == lo && columns[2 * (k + n) + 1] == hi)
            n++;
        for (int j = 0; j < n; j += 4)
            dots(xr, bf16, a + (size_t)(k + j) * in, in, n - j < 4 ? n - j : 4, u + j);
        if (hi > lo)
            add_ranks(o, u, b_t + (size_t)k * out, out, n, lo, hi);
        k += n;
    }
}

struct job {
    const void *x;
    int x_bf16, x_stride, in;
    const void *y;
    int y_bf16, y_stride, out;
    const float *a, *b_t;
    const int32_t *columns, *first, *count;
    int rows;
    const float *residual;
    float *y_out;
    atomic_int next; /* the next row */
};

/* Rows taken in turn from the job's counter until none is left (by any thread t: no per-thread buffer). */
static void rows_from(void *job, int t) {
    (void)t;
    struct job *j = job;
    const size_t x_size = j->x_bf16 ? 2 : 4, y_size = j->y_bf16 ? 2 : 4;
    for (int r; (r = atomic_fetch_add(&j->next, 1)) < j->rows;) {
        float *o = j->y_out + (size_t)r * j->out;
        const char *yr = (const char *)j->y + (size_t)r * j->y_stride * y_size;
        if ((const void *)o != (const void *)yr)
            load_row(yr, j->y_bf16, j->out, o);
        if (j->count[r] > 0)
            row_delta((const char *)j->x + (size_t)r * j->x_stride * x_size, j->x_bf16, j->in, o, j->out, j->a,
                      j->b_t, j->columns, j->first[r], j->count[r]);
        if (j->residual)
            add_row(o, j->residual + (size_t)r * j->out, j->out);
    }
}

/* x: [rows][x_stride] (fp32, or bf16 when x_bf16), in values each; y: [rows][y_stride] likewise with
 * out values; a: [ranks][in] and b_t: [ranks][out] (fp32, the scale folded into b); columns: [ranks][2],
 * the output columns [lo, hi) outside which a rank's row of b_t is zero; first, count: each row's
 * expert's rank columns (count 0: no delta). residual: NULL, or [rows][out] fp32 added last (a block's
 * skip connection: residual + (y + delta), the order PyTorch adds them in). y_out: [rows][out] fp32,
 * which may be y itself when y is fp32 with stride out (never residual). threads: how many of the OpenMP
 * runtime's threads take rows (1: the calling thread alone). Returns how many did (1 or more), or -1
 * when a row's ranks or a rank's columns are out of range (then nothing is written). */
int ek_delta_rows(const void *x, int x_bf16, int x_stride, int in, const void *y, int y_bf16, int y_stride, int out,
                  const float *a, const float *b_t, const int32_t *columns, int ranks, const int32_t *first,
                  const int32_t *count, int rows, const float *residual, float *y_out, int threads) {
    if (in < 1 || out < 1 || x_stride < in || y_stride < out || ranks < 0)
        return -1;
    for (int k = 0; k < ranks; k++)
        if (columns[2 * k] < 0 || columns[2 * k] > columns[2 * k + 1] || columns[2 * k + 1] > out)
            return -1;
    for (int r = 0; r < rows; r++)
        if (count[r] < 0 || (count[r] > 0 && (first[r] < 0 || first[r] > ranks || count[r] > ranks - first[r])))
            return -1;
    threads = threads < 1 ? 1 : threads > rows ? rows : threads;
    struct job j = {x, x_bf16, x_stride, in, y, y_bf16, y_stride, out, a, b_t, columns, first, count, rows,
                    residual, y_out, 0};
    return ek_split_run(rows_from, &j, threads);
}
