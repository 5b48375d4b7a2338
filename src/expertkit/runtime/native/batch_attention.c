/* The lean decoder's attention for a batch step (expertkit/runtime/batch_attention.py): every row (a
 * decoding sequence's new token, or a joining prompt's token) is rotated by its position's RoPE,
 * written into its cache slot at that position, and attends to its slot's positions up to its own
 * (for a prompt's rows, that is causal attention). One call per layer; the rows' writes on the calling
 * thread, their attention split over PyTorch's OpenMP threads when it is given them (openmp.h).
 *
 * Why hand-written: in PyTorch the same work is about ten small operators per layer (a batched
 * product per row and head, masks, an indexed write per tensor, and a loop per joining prompt); on
 * a 2-core CPU their fixed costs and the strided reads of the transposed keys made attention a
 * quarter of a 16-row step. Here each key row's contiguous positions feed up to 16 sums at once
 * (4 query heads x 64 positions), the next rows are prefetched, and softmax runs 16 lanes at a time.
 * Without AVX-512 the same arithmetic runs as portable C.
 *
 * The arithmetic is transformers' (q and k rotated as x·cos + rotate_half(x)·sin with the model's own
 * tables, scores scaled, softmax, weighted values) in fp32, summed in another order than PyTorch's. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define EK_AVX512 1
#else
#define EK_AVX512 0
#endif
#include "openmp.h"
#include "simd.h"

#define AHEAD 8 /* rows of keys, or positions of values, fetched ahead of their use */

#if EK_AVX512
static inline void zero_sums(__m512 acc[4][4]) {
    for (int g = 0; g < 4; g++)
        for (int c = 0; c < 4; c++)
            acc[g][c] = _mm512_setzero_ps();
}

static inline void prefetch_64(const float *at) { /* 64 floats: four cache lines */
    for (int c = 0; c < 4; c++)
        _mm_prefetch((const char *)(at + 16 * c), _MM_HINT_T0);
}
#endif

static void rotate(float *x, int heads, int dim, const float *cos, const float *sin) {
    const int half = dim / 2;
    for (int h = 0; h < heads; h++, x += dim)
        for (int i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
}

/* s[0..n) = softmax(s[0..n)), in place. */
static void softmax(float *s, int n) {
#if EK_AVX512
    __m512 top = _mm512_set1_ps(-INFINITY), sums = _mm512_setzero_ps();
    for (int p = 0; p < n; p += 16) {
        const __mmask16 m = n - p >= 16 ? 0xFFFF : (__mmask16)((1u << (n - p)) - 1);
        top = _mm512_mask_max_ps(top, m, top, _mm512_maskz_loadu_ps(m, s + p));
    }
    const __m512 most = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    for (int p = 0; p < n; p += 16) {
        const __mmask16 m = n - p >= 16 ? 0xFFFF : (__mmask16)((1u << (n - p)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + p), most));
        _mm512_mask_storeu_ps(s + p, m, e);
        sums = _mm512_add_ps(sums, _mm512_maskz_mov_ps(m, e));
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sums));
    for (int p = 0; p < n; p += 16) {
        const __mmask16 m = n - p >= 16 ? 0xFFFF : (__mmask16)((1u << (n - p)) - 1);
        _mm512_mask_storeu_ps(s + p, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + p), inv));
    }
#else
    float top = -INFINITY, total = 0.f;
    for (int p = 0; p < n; p++)
        top = s[p] > top ? s[p] : top;
    for (int p = 0; p < n; p++) {
        s[p] = expf(s[p] - top);
        total += s[p];
    }
    const float inv = 1.f / total;
    for (int p = 0; p < n; p++)
        s[p] *= inv;
#endif
}

/* scores[g][p] = scale · q_g · k_p for n (at most 4) query heads sharing one key head, p < span;
 * kt: that head's keys [dim][capacity] (transposed). */
static void head_scores(const float *q, int n, const float *kt, int capacity, int span, int dim, float scale,
                        float *scores) {
#if EK_AVX512
    /* 64 positions at a time: each key row's 256 contiguous bytes feed 4 x n independent sums. */
    for (int p = 0; p < span; p += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++) {
            const int left = span - p - 16 * c;
            m[c] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        }
        __m512 acc[4][4];
        zero_sums(acc);
        for (int d = 0; d < dim; d++) {
            const float *row = kt + (size_t)d * capacity + p;
            if (d + AHEAD < dim)
                prefetch_64(row + AHEAD * (size_t)capacity);
            __m512 k[4];
            for (int c = 0; c < 4; c++)
                k[c] = _mm512_maskz_loadu_ps(m[c], row + 16 * c);
            for (int g = 0; g < 4; g++) {
                if (g >= n)
                    break;
                const __m512 qd = _mm512_set1_ps(q[(size_t)g * dim + d]);
                for (int c = 0; c < 4; c++)
                    acc[g][c] = _mm512_fmadd_ps(qd, k[c], acc[g][c]);
            }
        }
        for (int g = 0; g < n; g++)
            for (int c = 0; c < 4; c++)
                _mm512_mask_storeu_ps(scores + (size_t)g * capacity + p + 16 * c, m[c],
                                      _mm512_mul_ps(acc[g][c], _mm512_set1_ps(scale)));
    }
#else
    for (int g = 0; g < n; g++) {
        float *s = scores + (size_t)g * capacity;
        memset(s, 0, sizeof(float) * span);
        for (int d = 0; d < dim; d++) {
            const float qd = q[(size_t)g * dim + d], *k = kt + (size_t)d * capacity;
            for (int p = 0; p < span; p++)
                s[p] += qd * k[p];
        }
        for (int p = 0; p < span; p++)
            s[p] *= scale;
    }
#endif
}

/* out[g] = sum_p weights[g][p] · v_p for n (at most 4) heads; vs: the key head's values [capacity][dim]. */
static void weighted_values(const float *weights, int capacity, int n, const float *vs, int span, int dim,
                            float *out) {
    int i = 0;
#if EK_AVX512
    for (; i + 64 <= dim; i += 64) {
        __m512 acc[4][4];
        zero_sums(acc);
        for (int p = 0; p < span; p++) {
            const float *v = vs + (size_t)p * dim + i;
            if (p + AHEAD < span)
                prefetch_64(v + AHEAD * (size_t)dim);
            const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16), v2 = _mm512_loadu_ps(v + 32),
                         v3 = _mm512_loadu_ps(v + 48);
            for (int g = 0; g < n; g++) {
                const __m512 w = _mm512_set1_ps(weights[(size_t)g * capacity + p]);
                acc[g][0] = _mm512_fmadd_ps(w, v0, acc[g][0]);
                acc[g][1] = _mm512_fmadd_ps(w, v1, acc[g][1]);
                acc[g][2] = _mm512_fmadd_ps(w, v2, acc[g][2]);
                acc[g][3] = _mm512_fmadd_ps(w, v3, acc[g][3]);
            }
        }
        for (int g = 0; g < n; g++)
            for (int j = 0; j < 4; j++)
                _mm512_storeu_ps(out + (size_t)g * dim + i + 16 * j, acc[g][j]);
    }
#endif
    for (int g = 0; g < n; g++) {
        float *o = out + (size_t)g * dim;
        for (int d = i; d < dim; d++)
            o[d] = 0.f;
        for (int p = 0; p < span && i < dim; p++) {
            const float w = weights[(size_t)g * capacity + p], *v = vs + (size_t)p * dim;
            for (int d = i; d < dim; d++)
                o[d] += w * v[d];
        }
    }
}

struct attend {
    const float *qk;
    int qk_stride, rows, heads, kv_heads, group, dim;
    const float *keys, *values;
    int capacity;
    float scale;
    float *out, *scores;
    const int64_t *slot, *pos;
    atomic_int next; /* the next (row, key head) pair to attend */
};

/* (row, key head) pairs taken in turn from the job's counter until none is left: thread t's part,
 * with its own 4 x capacity scores. A pair's sums are the same whichever thread takes it. */
static void attend_pairs(void *job, int t) {
    struct attend *j = job;
    float *scores = j->scores + (size_t)t * 4 * j->capacity;
    for (int pair; (pair = atomic_fetch_add(&j->next, 1)) < j->rows * j->kv_heads;) {
        const int r = pair / j->kv_heads, h = pair % j->kv_heads, span = (int)j->pos[r] + 1;
        const float *q = j->qk + (size_t)r * j->qk_stride;
        const float *kt = j->keys + ((size_t)j->slot[r] * j->kv_heads + h) * j->dim * j->capacity;
        const float *vs = j->values + ((size_t)j->slot[r] * j->kv_heads + h) * j->capacity * j->dim;
        for (int g0 = 0; g0 < j->group; g0 += 4) {
            const int n = j->group - g0 < 4 ? j->group - g0 : 4;
            float *o = j->out + ((size_t)r * j->heads + h * j->group + g0) * j->dim;
            head_scores(q + (size_t)(h * j->group + g0) * j->dim, n, kt, j->capacity, span, j->dim, j->scale, scores);
            for (int g = 0; g < n; g++)
                softmax(scores + (size_t)g * j->capacity, span);
            weighted_values(scores, j->capacity, n, vs, span, j->dim, o);
        }
    }
}

/* qk: [rows][qk_stride] fp32, heads + kv_heads vectors of dim each, not yet rotated (rotated here, in
 * place); v: [rows][v_stride], kv_heads vectors of dim each; cos, sin: [positions][dim] (the model's
 * own tables); keys: one layer's [slots][kv_heads][dim][capacity] (transposed), values
 * [slots][kv_heads][capacity][dim]; out: [rows][heads][dim]; scores: scratch of threads x 4 x capacity
 * floats; threads: how many of the OpenMP runtime's threads attend (1: the calling thread alone).
 * Returns how many threads attended (1 or more), or -1 when the shapes do not fit or a row's slot or
 * position is out of range (then nothing is written). */
int ek_batch_attention(float *qk, int qk_stride, const float *v, int v_stride, const float *cos, const float *sin,
                       int positions,
                       const int64_t *slot, const int64_t *pos, int rows, int heads, int kv_heads, int dim,
                       float *keys, float *values, int slots, int capacity, float scale, float *out,
                       float *scores, int threads) {
    const int group = kv_heads > 0 ? heads / kv_heads : 0;
    if (group < 1 || group * kv_heads != heads || dim < 2 || dim % 2 || qk_stride < (heads + kv_heads) * dim ||
        v_stride < kv_heads * dim)
        return -1;
    for (int r = 0; r < rows; r++)
        if (slot[r] < 0 || slot[r] >= slots || pos[r] < 0 || pos[r] >= capacity || pos[r] >= positions)
            return -1;
    for (int r = 0; r < rows; r++) {
        float *row = qk + (size_t)r * qk_stride;
        const float *c = cos + (size_t)pos[r] * dim, *s = sin + (size_t)pos[r] * dim;
        rotate(row, heads + kv_heads, dim, c, s);
        for (int h = 0; h < kv_heads; h++) {
            const float *k = row + (size_t)(heads + h) * dim;
            float *kt = keys + ((size_t)slot[r] * kv_heads + h) * dim * capacity + pos[r];
            for (int d = 0; d < dim; d++)
                kt[(size_t)d * capacity] = k[d];
            memcpy(values + (((size_t)slot[r] * kv_heads + h) * capacity + pos[r]) * dim,
                   v + (size_t)r * v_stride + (size_t)h * dim, sizeof(float) * dim);
        }
    }
    threads = threads < 1 ? 1 : threads > rows * kv_heads ? rows * kv_heads : threads;
    struct attend job = {qk, qk_stride, rows, heads, kv_heads, group, dim, keys, values, capacity, scale, out,
                          scores, slot, pos, 0};
    return ek_split_run(attend_pairs, &job, threads);
}
