/* Each row's expert's LoRA delta added to a shared projection's output, for a batch step that mixes
 * experts (expertkit/runtime/delta_rows.py): y[r] + (x[r]·A_eᵀ)·B_eᵀ over the ranks of row r's expert e
 * alone, in fp32, reading bf16 or fp32 rows. One call per projection, on the calling thread.
 *
 * Why hand-written: in PyTorch this is five operators per projection (casts, the stacked A product,
 * a mask that zeroes the other experts' ranks, the B product); at 16 rows of two rank-8 experts
 * their fixed costs were an eighth of a mixed step in `expert-cli serve`. Here a row touches only
 * its own expert's ranks. Without AVX-512 the same arithmetic runs as portable C. */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define EK_AVX512 1
#else
#define EK_AVX512 0
#endif

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

static float dot(const float *a, const float *b, int n) {
    int i = 0;
    float total = 0.f;
#if EK_AVX512
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
    for (; i < n; i++)
        total += a[i] * b[i];
    return total;
}

static void axpy(float *y, float w, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += w * x[i];
}

/* x: [rows][x_stride] (fp32, or bf16 when x_bf16), in values each; y: [rows][y_stride] likewise with
 * out values; a: [ranks][in] and b_t: [ranks][out] (fp32, the scale folded into b); first, count:
 * each row's expert's rank columns (count 0: no delta). y_out: [rows][out] fp32, which may be y itself
 * when y is fp32 with stride out. scratch: in floats. Returns 0, or -1 when a row's ranks are out of
 * range (then nothing is written). */
int ek_delta_rows(const void *x, int x_bf16, int x_stride, int in, const void *y, int y_bf16, int y_stride, int out,
                  const float *a, const float *b_t, int ranks, const int32_t *first, const int32_t *count, int rows,
                  float *y_out, float *scratch) {
    if (in < 1 || out < 1 || x_stride < in || y_stride < out)
        return -1;
    for (int r = 0; r < rows; r++)
        if (count[r] < 0 || (count[r] > 0 && (first[r] < 0 || first[r] > ranks || count[r] > ranks - first[r])))
            return -1;
    const size_t x_size = x_bf16 ? 2 : 4, y_size = y_bf16 ? 2 : 4;
    for (int r = 0; r < rows; r++) {
        float *o = y_out + (size_t)r * out;
        const char *yr = (const char *)y + (size_t)r * y_stride * y_size;
        if ((const void *)o != (const void *)yr)
            load_row(yr, y_bf16, out, o);
        if (count[r] == 0)
            continue;
        const char *xr = (const char *)x + (size_t)r * x_stride * x_size;
        const float *xf = (const float *)xr;
        if (x_bf16) {
            load_row(xr, 1, in, scratch);
            xf = scratch;
        }
        for (int k = first[r]; k < first[r] + count[r]; k++)
            axpy(o, dot(xf, a + (size_t)k * in, in), b_t + (size_t)k * out, out);
    }
    return 0;
}
