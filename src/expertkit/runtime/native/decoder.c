/* expertkit's native decoder: a Llama-architecture forward pass over 4-bit (Q4_1) and 8-bit (Q8_0)
 * weight blocks, for one sequence, with a LoRA (or DoRA) expert kept as fp32 low-rank products.
 *
 * Why hand-written (see expertkit/runtime/native_decoder.py for the measurements): a decode step of
 * a 135M model through PyTorch or ONNX Runtime is ~1,000 small operators, and on a 2-core CPU their
 * fixed costs, not the weights' bytes, set the speed. No library on PyPI decodes 4-bit blocks with a
 * float offset (the embedded model's own Q4_1 grid) and an unmerged low-rank expert in one call.
 *
 * Layout: a matrix's rows are taken 16 at a time (one AVX-512 lane per row). For row group g and
 * block b of 32 inputs, Q4_1 stores 256 bytes: four 64-byte slices, slice L holding bytes 4L..4L+3 of
 * each of the 16 rows' blocks (byte j: low nibble input j, high nibble input j+16). One
 * VPDPBUSD then multiplies 4 inputs of 16 rows by the same 4 activations (a broadcast), so a row
 * group's 16 dot products accumulate lane by lane with no horizontal sums. Q8_0 stores 512 bytes per
 * (g, b): eight slices of 4 bytes per row, each code offset by 128 (unsigned). Scales and Q4_1
 * minimums are stored [g][b][16] as fp16 (as GGUF stores them).
 *
 * Activations are quantised per block of 32 to int8 (a scale amax/127, round to nearest even), as
 * llama.cpp does. A Q4_1 block is computed as d·(q - 8)·x + (low + 8·d)·sum(x): the centred codes
 * meet the quantised activations (half the rounding error of uncentred 0..15 codes), and the
 * block's midpoint multiplies the exact fp32 sum of its activations. Q8_0's offset of 128 comes off
 * as 128 x the block's sum of activation codes, once per block of activations.
 * Without AVX512-VNNI the same arithmetic runs as portable C (slower, same results up to float
 * summation order).
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define EK_VNNI 1
#include <immintrin.h>
#else
#define EK_VNNI 0
#endif
#include "simd.h"

#define EK_MAX_THREADS 64
typedef uint16_t ek_half; /* fp16 bits: the cache's keys and values */
#define EK_TOKENS 4 /* tokens that share one pass over the weights */

typedef struct {
    int32_t rows, cols, kind; /* kind: 4 (Q4_1) or 8 (Q8_0) */
    const uint8_t *codes;
    const uint16_t *scale; /* fp16 [g][b][16] */
    const uint16_t *low;   /* Q4_1: the block's minimum, fp16 [g][b][16] */
    const float *bias;  /* [rows] or NULL */
    int32_t rank;
    const float *lora_a;  /* [rank][cols] */
    const float *lora_b;  /* [rows / 16][rank][16]: B by row group, the LoRA scale folded in */
    const float *rescale; /* DoRA: [rows] or NULL */
} ek_mat;

typedef struct {
    ek_mat q, k, v, o, gate, up, down;
    const float *attn_norm, *ffn_norm;
} ek_layer;

typedef struct {
    int32_t layers, hidden, heads, kv_heads, head_dim, inter, vocab, positions;
    float eps;
    const float *rope_cos, *rope_sin; /* [positions][head_dim / 2] */
    ek_mat embed, head;
    const float *final_norm;
    const ek_layer *layer;
} ek_model;

int ek_vnni(void) { return EK_VNNI; }

/* ------------------------------------------------------------------ thread pool */

typedef void (*ek_task)(void *arg, int id, int n);

/* One forward pass (or product) at a time: the pool and its barrier serve one caller. */
static pthread_mutex_t calls = PTHREAD_MUTEX_INITIALIZER;

static struct {
    int n;
    pid_t pid;
    pthread_t threads[EK_MAX_THREADS];
    _Atomic unsigned generation;
    unsigned born; /* the generation when the workers were started: the first they wait past */
    _Atomic int pending, sleepers, quit;
    ek_task task;
    void *arg;
} pool;

/* A waiting thread spins briefly (a step's phases are microseconds apart), then yields its core to
 * whatever else is runnable (another process decoding on the same cores), then sleeps. */
#define SPINS 2000
#define YIELDS 2000

static void pause_once(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

static void *worker(void *param) {
    int id = (int)(intptr_t)param;
    /* Not the generation now: a call may have bumped it before this thread first ran. */
    unsigned seen = pool.born;
    for (;;) {
        unsigned now;
        int spins = 0;
        while ((now = atomic_load(&pool.generation)) == seen) {
            if (++spins < SPINS) {
                pause_once();
                continue;
            }
            if (spins < SPINS + YIELDS) {
                sched_yield();
                continue;
            }
            atomic_fetch_add(&pool.sleepers, 1);
            syscall(SYS_futex, &pool.generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_fetch_sub(&pool.sleepers, 1);
            spins = 0;
        }
        seen = now;
        if (atomic_load(&pool.quit))
            return NULL;
        pool.task(pool.arg, id, pool.n);
        atomic_fetch_sub(&pool.pending, 1);
    }
}

static void wake_all(void) {
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0)
        syscall(SYS_futex, &pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void stop_pool(void) {
    if (pool.n > 1 && pool.pid == getpid()) {
        atomic_store(&pool.quit, 1);
        wake_all();
        for (int i = 1; i < pool.n; i++)
            pthread_join(pool.threads[i], NULL);
    }
    atomic_store(&pool.quit, 0);
    pool.n = 1;
}

/* Decode with n threads (the caller and n - 1 workers). Returns the count in use. */
int ek_threads(int n) {
    if (n < 1)
        n = 1;
    if (n > EK_MAX_THREADS)
        n = EK_MAX_THREADS;
    pthread_mutex_lock(&calls);
    if (n == pool.n && pool.pid == getpid()) {
        pthread_mutex_unlock(&calls);
        return n;
    }
    stop_pool();
    pool.pid = getpid();
    pool.born = atomic_load(&pool.generation); /* unchanged until `calls` is released */
    int started = 1;
    for (int i = 1; i < n; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker, (void *)(intptr_t)i) != 0)
            break;
        started++;
    }
    pool.n = started;
    pthread_mutex_unlock(&calls);
    return started;
}

/* The threads a task runs on in this process (a forked child has no workers: 1). */
static int pool_size(void) {
    if (pool.pid != getpid() || pool.n < 1)
        pool.n = 1;
    return pool.n;
}

static void run(ek_task task, void *arg) {
    if (pool_size() == 1) {
        task(arg, 0, 1);
        return;
    }
    pool.task = task;
    pool.arg = arg;
    atomic_store(&pool.pending, pool.n - 1);
    wake_all();
    task(arg, 0, pool.n);
    for (int spins = 0; atomic_load(&pool.pending) > 0; spins++) {
        if (spins < SPINS)
            pause_once();
        else
            sched_yield(); /* a worker is not running: let it */
    }
}

/* All n threads of the running task meet here (a step's phases that depend on each other). */
static _Atomic int barrier_count;
static _Atomic unsigned barrier_phase;

static void barrier(int n) {
    if (n == 1)
        return;
    unsigned phase = atomic_load(&barrier_phase);
    if (atomic_fetch_add(&barrier_count, 1) == n - 1) {
        atomic_store(&barrier_count, 0);
        atomic_fetch_add(&barrier_phase, 1);
        return;
    }
    for (int spins = 0; atomic_load(&barrier_phase) == phase; spins++) {
        if (spins < SPINS)
            pause_once();
        else
            sched_yield();
    }
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0) {
        float tiny = (float)mantissa * (1.f / 16777216.f); /* subnormal: mantissa x 2^-24 */
        memcpy(&bits, &tiny, 4);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* ------------------------------------------------------------------ activations */

/* x [cols] -> q [cols] int8, d [cols/32] scales, s [cols/32] exact block sums, c [cols/32] 8 x code sums. */
static void quantize_row(const float *x, int cols, int8_t *q, float *d, float *s, int32_t *c) {
    for (int b = 0; b < cols / 32; b++) {
        const float *v = x + b * 32;
        float amax = 0.f, sum = 0.f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(v[j]);
            amax = a > amax ? a : amax;
            sum += v[j];
        }
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        d[b] = amax / 127.f;
        s[b] = sum;
        int32_t codes = 0;
        for (int j = 0; j < 32; j++) {
            q[b * 32 + j] = (int8_t)nearbyintf(v[j] * inv);
            codes += q[b * 32 + j];
        }
        c[b] = 8 * codes;
    }
}

/* ------------------------------------------------------------------ block products */

typedef struct {
    const int8_t *q; /* [tokens][cols] */
    const float *d, *s; /* [tokens][cols / 32] */
    const int32_t *c;   /* [tokens][cols / 32]: 8 x the block's code sum (the centring of Q4_1 codes) */
    const float *x; /* the unquantised rows, for the LoRA product */
    int tokens;
} ek_input;

static inline int32_t word_at(const int8_t *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

#if EK_VNNI
/* Software prefetch, EK_AHEAD bytes down the code stream (and as many blocks down the scales):
 * the hardware prefetchers alone kept a decode step at about 28 GB/s where this CPU streams 48 from
 * its cache; with this it reaches about 41 (a step of the base model alone, 2 threads: 270-295 ->
 * 420-430 tokens/s, the same logits). A group's blocks and consecutive groups lie end to end, so
 * the lines ahead are the ones read next; past a matrix's end a prefetch is only a hint. */
#define EK_AHEAD 8192
static inline __attribute__((always_inline)) void ahead(const uint8_t *p, int stride, const uint16_t *scales,
                                                        const uint16_t *lows, int b) {
    for (int L = 0; L < stride; L += 64)
        _mm_prefetch((const char *)(p + EK_AHEAD + L), _MM_HINT_T0);
    if ((b & 1) == 0) { /* 16 fp16 scales per block: a cache line holds two blocks' */
        _mm_prefetch((const char *)(scales + EK_AHEAD / stride * 16), _MM_HINT_T0);
        if (lows)
            _mm_prefetch((const char *)(lows + EK_AHEAD / stride * 16), _MM_HINT_T0);
    }
}

static inline __attribute__((always_inline)) void q4_group(const ek_mat *w, int g, const ek_input *in, int t0,
                                                           const int M, float *out /* [M][16] */) {
    const int nb = w->cols / 32;
    const uint8_t *p = w->codes + (size_t)g * nb * 256;
    const uint16_t *ds = w->scale + (size_t)g * nb * 16, *ls = w->low + (size_t)g * nb * 16;
    const __m512i mask = _mm512_set1_epi8(0x0F);
    __m512 acc[EK_TOKENS], offs[EK_TOKENS];
    for (int t = 0; t < M; t++)
        acc[t] = offs[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++, p += 256) {
        __m512i lo_sum[EK_TOKENS], hi_sum[EK_TOKENS];
        for (int t = 0; t < M; t++)
            lo_sum[t] = hi_sum[t] = _mm512_setzero_si512();
        ahead(p, 256, ds + b * 16, ls + b * 16, b);
        for (int L = 0; L < 4; L++) {
            __m512i v = _mm512_loadu_si512((const void *)(p + L * 64));
            __m512i lo = _mm512_and_si512(v, mask);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
            for (int t = 0; t < M; t++) {
                const int8_t *x = in->q + (size_t)(t0 + t) * w->cols + b * 32 + L * 4;
                lo_sum[t] = _mm512_dpbusd_epi32(lo_sum[t], lo, _mm512_set1_epi32(word_at(x)));
                hi_sum[t] = _mm512_dpbusd_epi32(hi_sum[t], hi, _mm512_set1_epi32(word_at(x + 16)));
            }
        }
        __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(ds + b * 16)));
        __m512 lv = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(ls + b * 16)));
        __m512 mv = _mm512_fmadd_ps(_mm512_set1_ps(8.f), dv, lv);
        for (int t = 0; t < M; t++) {
            size_t k = (size_t)(t0 + t) * nb + b;
            __m512i centred = _mm512_sub_epi32(_mm512_add_epi32(lo_sum[t], hi_sum[t]), _mm512_set1_epi32(in->c[k]));
            __m512 sum = _mm512_cvtepi32_ps(centred);
            acc[t] = _mm512_fmadd_ps(sum, _mm512_mul_ps(dv, _mm512_set1_ps(in->d[k])), acc[t]);
            offs[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(in->s[k]), offs[t]);
        }
    }
    for (int t = 0; t < M; t++)
        _mm512_storeu_ps(out + t * 16, _mm512_add_ps(acc[t], offs[t]));
}

static inline __attribute__((always_inline)) void q8_group(const ek_mat *w, int g, const ek_input *in, int t0,
                                                           const int M, float *out) {
    const int nb = w->cols / 32;
    const uint8_t *p = w->codes + (size_t)g * nb * 512;
    const uint16_t *ds = w->scale + (size_t)g * nb * 16;
    __m512 acc[EK_TOKENS];
    for (int t = 0; t < M; t++)
        acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++, p += 512) {
        __m512i sum[EK_TOKENS];
        for (int t = 0; t < M; t++)
            sum[t] = _mm512_setzero_si512();
        ahead(p, 512, ds + b * 16, NULL, b);
        for (int L = 0; L < 8; L++) {
            __m512i v = _mm512_loadu_si512((const void *)(p + L * 64));
            for (int t = 0; t < M; t++) {
                const int8_t *x = in->q + (size_t)(t0 + t) * w->cols + b * 32 + L * 4;
                /* codes + 128 (unsigned) x activations; 128 x the activations' code sum comes off below */
                sum[t] = _mm512_dpbusd_epi32(sum[t], v, _mm512_set1_epi32(word_at(x)));
            }
        }
        __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(ds + b * 16)));
        for (int t = 0; t < M; t++) {
            size_t k = (size_t)(t0 + t) * nb + b;
            __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum[t], _mm512_set1_epi32(16 * in->c[k])));
            acc[t] = _mm512_fmadd_ps(exact, _mm512_mul_ps(dv, _mm512_set1_ps(in->d[k])), acc[t]);
        }
    }
    for (int t = 0; t < M; t++)
        _mm512_storeu_ps(out + t * 16, acc[t]);
}

static void group_product(const ek_mat *w, int g, const ek_input *in, int t0, int M, float *out) {
    if (w->kind == 4) {
        switch (M) {
        case 1: q4_group(w, g, in, t0, 1, out); break;
        case 2: q4_group(w, g, in, t0, 2, out); break;
        case 3: q4_group(w, g, in, t0, 3, out); break;
        default: q4_group(w, g, in, t0, 4, out); break;
        }
    } else {
        switch (M) {
        case 1: q8_group(w, g, in, t0, 1, out); break;
        case 2: q8_group(w, g, in, t0, 2, out); break;
        case 3: q8_group(w, g, in, t0, 3, out); break;
        default: q8_group(w, g, in, t0, 4, out); break;
        }
    }
}
#else
static void group_product(const ek_mat *w, int g, const ek_input *in, int t0, int M, float *out) {
    const int nb = w->cols / 32, slices = w->kind == 4 ? 4 : 8, stride = w->kind == 4 ? 256 : 512;
    for (int t = 0; t < M; t++) {
        for (int lane = 0; lane < 16; lane++) {
            float total = 0.f, offsets = 0.f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *p = w->codes + ((size_t)g * nb + b) * stride;
                const int8_t *x = in->q + (size_t)(t0 + t) * w->cols + b * 32;
                size_t k = (size_t)(t0 + t) * nb + b, at = ((size_t)g * nb + b) * 16 + lane;
                int32_t sum = 0;
                for (int L = 0; L < slices; L++) {
                    for (int j = 0; j < 4; j++) {
                        uint8_t byte = p[L * 64 + lane * 4 + j];
                        if (w->kind == 4)
                            sum += (byte & 15) * x[L * 4 + j] + (byte >> 4) * x[16 + L * 4 + j];
                        else
                            sum += ((int32_t)byte - 128) * x[L * 4 + j];
                    }
                }
                const float d = half_to_float(w->scale[at]);
                if (w->kind == 4) {
                    sum -= in->c[k];
                    offsets += (half_to_float(w->low[at]) + 8.f * d) * in->s[k];
                }
                total += (float)sum * (d * in->d[k]);
            }
            out[t * 16 + lane] = total + offsets;
        }
    }
}
#endif

/* ------------------------------------------------------------------ matrix products */

#define EK_MATS 3

typedef struct {
    const ek_mat *mats[EK_MATS];
    float *outs[EK_MATS]; /* [tokens][rows] each */
    float *lora[EK_MATS]; /* [tokens][rank]: A·x, computed before the split */
    int count;
    const ek_input *in;
} ek_products;

#define EK_B_AHEAD 2 /* row groups */

/* y (a group's 16 outputs for token t) += B's group · (A·x), then DoRA's factor and the bias. */
static void finish_group(const ek_mat *w, int g, int t, const float *lora, float *y) {
    const float *b = w->lora_b + (size_t)g * w->rank * 16;
#if EK_VNNI
    __m512 v = _mm512_loadu_ps(y);
    if (g + EK_B_AHEAD < w->rows / 16) /* the stream of B beside the blocks' */
        for (int k = 0; k < w->rank; k++)
            _mm_prefetch((const char *)(b + (EK_B_AHEAD * w->rank + k) * 16), _MM_HINT_T0);
    for (int k = 0; k < w->rank; k++)
        v = _mm512_fmadd_ps(_mm512_set1_ps(lora[(size_t)t * w->rank + k]), _mm512_loadu_ps(b + k * 16), v);
    if (w->rescale)
        v = _mm512_mul_ps(v, _mm512_loadu_ps(w->rescale + g * 16));
    if (w->bias)
        v = _mm512_add_ps(v, _mm512_loadu_ps(w->bias + g * 16));
    _mm512_storeu_ps(y, v);
    return;
#endif
    for (int k = 0; k < w->rank; k++)
        for (int lane = 0; lane < 16; lane++)
            y[lane] += lora[(size_t)t * w->rank + k] * b[k * 16 + lane];
    if (w->rescale)
        for (int lane = 0; lane < 16; lane++)
            y[lane] *= w->rescale[g * 16 + lane];
    if (w->bias)
        for (int lane = 0; lane < 16; lane++)
            y[lane] += w->bias[g * 16 + lane];
}

static float dot(const float *a, const float *b, int n);

/* Each thread's share of the experts' A·x (every row needs all of them), then a barrier. */
static void lora_share(const ek_products *job, int id, int n) {
    int total = 0;
    for (int i = 0; i < job->count; i++)
        total += job->in->tokens * job->mats[i]->rank;
    if (total == 0)
        return;
    for (int flat = total * id / n; flat < total * (id + 1) / n; flat++) {
        int i = 0, item = flat;
        while (item >= job->in->tokens * job->mats[i]->rank)
            item -= job->in->tokens * job->mats[i++]->rank;
        const ek_mat *w = job->mats[i];
        int t = item / w->rank, k = item % w->rank;
        job->lora[i][item] = dot(w->lora_a + (size_t)k * w->cols, job->in->x + (size_t)t * w->cols, w->cols);
    }
    barrier(n);
}

static void products_task(void *arg, int id, int n) {
    const ek_products *job = arg;
    lora_share(job, id, n);
    int total = 0;
    for (int i = 0; i < job->count; i++)
        total += job->mats[i]->rows / 16;
    int first = (int)((long)total * id / n), last = (int)((long)total * (id + 1) / n);
    float block[EK_TOKENS * 16];
    for (int flat = first; flat < last; flat++) {
        int i = 0, g = flat;
        while (g >= job->mats[i]->rows / 16)
            g -= job->mats[i++]->rows / 16;
        const ek_mat *w = job->mats[i];
        for (int t0 = 0; t0 < job->in->tokens; t0 += EK_TOKENS) {
            int M = job->in->tokens - t0 < EK_TOKENS ? job->in->tokens - t0 : EK_TOKENS;
            group_product(w, g, job->in, t0, M, block);
            for (int t = 0; t < M; t++) {
                float *y = job->outs[i] + (size_t)(t0 + t) * w->rows + g * 16;
                memcpy(y, block + t * 16, sizeof(float) * 16);
                finish_group(w, g, t0 + t, job->lora[i], y);
            }
        }
    }
}

static float dot(const float *a, const float *b, int n) {
#if EK_VNNI
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * j), _mm512_loadu_ps(b + i + 16 * j), acc[j]);
    for (; i + 16 <= n; i += 16)
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc[0]);
    float total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#else
    float total = 0.f;
    int i = 0;
#endif
    for (; i < n; i++)
        total += a[i] * b[i];
    return total;
}

/* outs[i] = mats[i]·x for up to three matrices sharing the input, split across the threads. */
static void products(const ek_mat **mats, float **outs, float *lora_scratch, int count, const ek_input *in) {
    ek_products job = {.count = count, .in = in};
    float *lora = lora_scratch;
    for (int i = 0; i < count; i++) {
        const ek_mat *w = mats[i];
        job.mats[i] = w;
        job.outs[i] = outs[i];
        job.lora[i] = lora; /* [tokens][rank], filled by the threads before their rows */
        lora += (size_t)in->tokens * w->rank;
    }
    run(products_task, &job);
}

/* ------------------------------------------------------------------ the forward pass */

typedef struct {
    int capacity;
    float *x, *normed, *q, *k, *v, *att, *gate, *up, *scores, *parts, *lora;
    int8_t *xq;
    float *xd, *xs;
    int32_t *xc;
    int max_tokens;
} ek_scratch;

static void *zalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    memset(p, 0, n ? n : 64);
    return p;
}

void ek_scratch_free(ek_scratch *s) {
    if (!s)
        return;
    free(s->x); free(s->normed); free(s->q); free(s->k); free(s->v); free(s->att); free(s->gate);
    free(s->up); free(s->scores); free(s->parts); free(s->lora); free(s->xq); free(s->xd); free(s->xs);
    free(s->xc);
    free(s);
}

static int max_rank(const ek_model *m) {
    int r = m->head.rank;
    for (int l = 0; l < m->layers; l++) {
        const ek_mat *all[7] = {&m->layer[l].q, &m->layer[l].k, &m->layer[l].v, &m->layer[l].o,
                                &m->layer[l].gate, &m->layer[l].up, &m->layer[l].down};
        for (int i = 0; i < 7; i++)
            r = all[i]->rank > r ? all[i]->rank : r;
    }
    return r;
}

/* Buffers for calls of up to max_tokens tokens on a cache of up to capacity positions. */
ek_scratch *ek_scratch_new(const ek_model *m, int max_tokens, int capacity) {
    ek_scratch *s = zalloc(sizeof(ek_scratch));
    if (!s)
        return NULL;
    size_t T = (size_t)max_tokens, wide = m->inter > m->hidden ? m->inter : m->hidden;
    if ((size_t)m->heads * m->head_dim > wide) /* attention's width (a head_dim set apart from hidden / heads) */
        wide = (size_t)m->heads * m->head_dim;
    s->max_tokens = max_tokens;
    s->capacity = capacity;
    s->x = zalloc(T * m->hidden * 4);
    s->normed = zalloc(T * wide * 4);
    s->q = zalloc(T * m->heads * m->head_dim * 4);
    s->k = zalloc(T * m->kv_heads * m->head_dim * 4);
    s->v = zalloc(T * m->kv_heads * m->head_dim * 4);
    s->att = zalloc(T * m->heads * m->head_dim * 4);
    s->gate = zalloc(T * m->inter * 4);
    s->up = zalloc(T * m->inter * 4);
    s->scores = zalloc((size_t)EK_MAX_THREADS * capacity * 4);
    /* attention's parts: (token, key head, range) units x the heads sharing a key head x (head_dim + 2) */
    size_t units = 2 * EK_MAX_THREADS + T * m->kv_heads;
    s->parts = zalloc(units * (m->heads / m->kv_heads) * (m->head_dim + 2) * 4);
    s->lora = zalloc(T * 3 * (size_t)(max_rank(m) + 1) * 4);
    s->xq = zalloc(T * wide);
    s->xd = zalloc(T * wide / 32 * 4);
    s->xs = zalloc(T * wide / 32 * 4);
    s->xc = zalloc(T * wide / 32 * 4);
    if (!s->xc || !s->x || !s->normed || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up || !s->scores ||
        !s->parts || !s->lora || !s->xq || !s->xd || !s->xs) {
        ek_scratch_free(s);
        return NULL;
    }
    return s;
}

static void rms_norm(const float *x, const float *w, float *out, int n, float eps) {
    float ss = 0.f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    float inv = 1.f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * inv * w[i];
}

static ek_input quantized(ek_scratch *s, const float *x, int tokens, int cols) {
    for (int t = 0; t < tokens; t++)
        quantize_row(x + (size_t)t * cols, cols, s->xq + (size_t)t * cols, s->xd + (size_t)t * (cols / 32),
                     s->xs + (size_t)t * (cols / 32), s->xc + (size_t)t * (cols / 32));
    ek_input in = {.q = s->xq, .d = s->xd, .s = s->xs, .c = s->xc, .x = x, .tokens = tokens};
    return in;
}

static void rope(float *v, int heads, int dim, const float *cos, const float *sin) {
    int half = dim / 2;
    for (int h = 0; h < heads; h++) {
        float *r = v + h * dim;
        for (int i = 0; i < half; i++) {
            float a = r[i], b = r[i + half];
            r[i] = a * cos[i] - b * sin[i];
            r[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

/* The residual stream x += w·rows (rows [tokens][w->cols]): an attention or MLP block's output. */
static void add_product(const ek_model *m, ek_scratch *s, const ek_mat *w, const float *rows, int tokens) {
    ek_input in = quantized(s, rows, tokens, w->cols);
    const ek_mat *mats[1] = {w};
    float *outs[1] = {s->normed};
    products(mats, outs, s->lora, 1, &in);
    for (size_t i = 0; i < (size_t)tokens * m->hidden; i++)
        s->x[i] += s->normed[i];
}

typedef struct {
    const ek_model *m;
    ek_scratch *s;
    const ek_half *keys, *values; /* this layer's [kv_heads][capacity][head_dim], fp16 */
    int capacity, start, tokens;
    int ranges; /* of positions per (token, key head) */
} ek_attention;

/* x rounded to the nearest fp16 (ties to even), as the F16C instructions round: overflow gives
 * infinity, values under half the smallest subnormal give zero, NaN stays NaN. */
static ek_half float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xff, mantissa = x & 0x7fffff, half, rest, middle;
    int exponent = (int)e - 112; /* the fp16 exponent field: bias 15 against 127 */
    if (e == 255)
        return (ek_half)(sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >> 13) : 0));
    if (exponent >= 31)
        return (ek_half)(sign | 0x7c00);
    if (exponent <= 0) { /* a subnormal fp16: units of 2^-24 */
        if (exponent < -10)
            return (ek_half)sign;
        int shift = 14 - exponent;
        mantissa |= 0x800000;
        half = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), middle = 1u << (shift - 1);
    } else {
        half = ((uint32_t)exponent << 10) | (mantissa >> 13), rest = mantissa & 0x1fff, middle = 0x1000;
    }
    if (rest > middle || (rest == middle && (half & 1)))
        half++; /* a carry into the exponent is the right rounding, up to infinity */
    return (ek_half)(sign | half);
}

/* The cache holds keys and values in fp16 (as llama.cpp's does): half the bytes a step reads from
 * it, rounded to 11 significant bits where activations are already rounded to int8 per block.
 * Decoding from position 384, one process: 317 -> 348 tokens/s base alone, 273 -> 309 with the
 * benchmark's expert (2 threads). */
static void store_half(ek_half *out, const float *x, int n) {
    int i = 0;
#if EK_VNNI
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((void *)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++)
        out[i] = float_to_half(x[i]);
}

/* out [n] = x rounded as the cache rounds it (the tests' window on the conversion). */
void ek_round_half(const float *x, ek_half *out, int n) { store_half(out, x, n); }

#if EK_VNNI
static inline __m512 load_half16(const ek_half *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const void *)p)); }
#endif

/* Softmax attention of one query head over positions [from, to) of its key head, as three running
 * parts: part[0] the top score, part[1] the sum of e^(score - top), part[2..] the sum of
 * e^(score - top) x value. Parts of several ranges of positions merge exactly (attention_task). */
#if EK_VNNI
static inline __attribute__((always_inline)) void attend_head(const float *q, const ek_half *keys, const ek_half *values,
                                                              int span, int dim, const int nv, float scale,
                                                              float *scores, float *part) {
    __m512 qv[8], acc[8];
    for (int j = 0; j < nv; j++) {
        qv[j] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * j), _mm512_set1_ps(scale));
        acc[j] = _mm512_setzero_ps();
    }
    float top = -INFINITY;
    for (int p = 0; p < span; p++) {
        const ek_half *k = keys + (size_t)p * dim;
        _mm_prefetch((const char *)(k + 8 * dim), _MM_HINT_T0);
        __m512 d = _mm512_mul_ps(qv[0], load_half16(k));
        for (int j = 1; j < nv; j++)
            d = _mm512_fmadd_ps(qv[j], load_half16(k + 16 * j), d);
        scores[p] = _mm512_reduce_add_ps(d);
        top = scores[p] > top ? scores[p] : top;
    }
    __m512 sums = _mm512_setzero_ps();
    int p = 0;
    for (; p + 16 <= span; p += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + p), _mm512_set1_ps(top)));
        _mm512_storeu_ps(scores + p, e);
        sums = _mm512_add_ps(sums, e);
    }
    float total = _mm512_reduce_add_ps(sums);
    for (; p < span; p++) {
        scores[p] = expf(scores[p] - top);
        total += scores[p];
    }
    for (p = 0; p < span; p++) {
        const ek_half *v = values + (size_t)p * dim;
        _mm_prefetch((const char *)(v + 8 * dim), _MM_HINT_T0);
        __m512 w = _mm512_set1_ps(scores[p]);
        for (int j = 0; j < nv; j++)
            acc[j] = _mm512_fmadd_ps(w, load_half16(v + 16 * j), acc[j]);
    }
    part[0] = top;
    part[1] = total;
    for (int j = 0; j < nv; j++)
        _mm512_storeu_ps(part + 2 + 16 * j, acc[j]);
}
#endif

static void attend_head_portable(const float *q, const ek_half *keys, const ek_half *values, int span, int dim,
                                 float scale, float *scores, float *part) {
    float top = -INFINITY, total = 0.f, *out = part + 2;
    for (int p = 0; p < span; p++) {
        float d = 0.f;
        for (int i = 0; i < dim; i++)
            d += q[i] * half_to_float(keys[(size_t)p * dim + i]);
        scores[p] = d * scale;
        top = scores[p] > top ? scores[p] : top;
    }
    memset(out, 0, sizeof(float) * dim);
    for (int p = 0; p < span; p++) {
        scores[p] = expf(scores[p] - top);
        total += scores[p];
        for (int i = 0; i < dim; i++)
            out[i] += scores[p] * half_to_float(values[(size_t)p * dim + i]);
    }
    part[0] = top;
    part[1] = total;
}

/* One head's parts, with the head's width in registers where it is a multiple of 16 up to 128. */
static void attend(const float *q, const ek_half *keys, const ek_half *values, int span, int dim, float scale,
                   float *scores, float *part) {
#if EK_VNNI
    switch (dim % 16 == 0 ? dim / 16 : 0) {
    case 1: attend_head(q, keys, values, span, dim, 1, scale, scores, part); return;
    case 2: attend_head(q, keys, values, span, dim, 2, scale, scores, part); return;
    case 3: attend_head(q, keys, values, span, dim, 3, scale, scores, part); return;
    case 4: attend_head(q, keys, values, span, dim, 4, scale, scores, part); return;
    case 5: attend_head(q, keys, values, span, dim, 5, scale, scores, part); return;
    case 6: attend_head(q, keys, values, span, dim, 6, scale, scores, part); return;
    case 7: attend_head(q, keys, values, span, dim, 7, scale, scores, part); return;
    case 8: attend_head(q, keys, values, span, dim, 8, scale, scores, part); return;
    default: break;
    }
#endif
    attend_head_portable(q, keys, values, span, dim, scale, scores, part);
}

/* Work is split by (token, key head, range of positions): each thread reads its keys and values once
 * for all the query heads that share them, and a single token's positions are shared out across the
 * threads. The cache was 18 MB a token at 400 positions for this model in fp32 (9 MB in fp16 now).
 * Split by query head, as before, with 9 query heads on 3 key heads, both threads read the middle key
 * head and one of them took five heads to the other's four. Decoding at positions 384-480, fp32 cache:
 * 231-248 -> 277-295 tokens/s (base model alone, 2 threads). Then the ranges' parts are merged per
 * (token, query head). */
static void attention_task(void *arg, int id, int n) {
    const ek_attention *job = arg;
    const ek_model *m = job->m;
    const int dim = m->head_dim, group = m->heads / m->kv_heads, ranges = job->ranges;
    const int units = job->tokens * m->kv_heads * ranges, width = dim + 2;
    const float scale = 1.f / sqrtf((float)dim);
    float *scores = job->s->scores + (size_t)id * job->s->capacity;
    for (int u = units * id / n; u < units * (id + 1) / n; u++) {
        int t = u / (m->kv_heads * ranges), kv = u / ranges % m->kv_heads, r = u % ranges;
        int seen = job->start + t + 1, from = (int)((long)seen * r / ranges), to = (int)((long)seen * (r + 1) / ranges);
        const ek_half *keys = job->keys + ((size_t)kv * job->capacity + from) * dim;
        const ek_half *values = job->values + ((size_t)kv * job->capacity + from) * dim;
        for (int h = kv * group; h < (kv + 1) * group; h++) {
            const float *q = job->s->q + ((size_t)t * m->heads + h) * dim;
            float *part = job->s->parts + (((size_t)t * m->heads + h) * ranges + r) * width;
            attend(q, keys, values, to - from, dim, scale, scores, part);
        }
    }
    barrier(n);
    const int heads = job->tokens * m->heads;
    for (int u = heads * id / n; u < heads * (id + 1) / n; u++) {
        const float *part = job->s->parts + (size_t)u * ranges * width;
        float top = -INFINITY, total = 0.f, *out = job->s->att + (size_t)u * dim;
        for (int r = 0; r < ranges; r++)
            top = part[r * width] > top ? part[r * width] : top;
        memset(out, 0, sizeof(float) * dim);
        for (int r = 0; r < ranges; r++) {
            if (part[r * width + 1] == 0.f)
                continue; /* an empty range (fewer positions than ranges) */
            float weight = expf(part[r * width] - top);
            total += weight * part[r * width + 1];
            for (int i = 0; i < dim; i++)
                out[i] += weight * part[r * width + 2 + i];
        }
        for (int i = 0; i < dim; i++)
            out[i] /= total;
    }
}

static void attention_block(const ek_model *m, const ek_layer *ly, ek_scratch *s, ek_half *keys, ek_half *values,
                            int capacity, int start, int tokens) {
    const int dim = m->head_dim, half = dim / 2, hidden = m->hidden;
    for (int t = 0; t < tokens; t++)
        rms_norm(s->x + (size_t)t * hidden, ly->attn_norm, s->normed + (size_t)t * hidden, hidden, m->eps);
    ek_input in = quantized(s, s->normed, tokens, hidden);
    const ek_mat *qkv[3] = {&ly->q, &ly->k, &ly->v};
    float *outs[3] = {s->q, s->k, s->v};
    products(qkv, outs, s->lora, 3, &in);
    for (int t = 0; t < tokens; t++) {
        int pos = start + t;
        const float *cos = m->rope_cos + (size_t)pos * half, *sin = m->rope_sin + (size_t)pos * half;
        rope(s->q + (size_t)t * m->heads * dim, m->heads, dim, cos, sin);
        rope(s->k + (size_t)t * m->kv_heads * dim, m->kv_heads, dim, cos, sin);
        for (int h = 0; h < m->kv_heads; h++) {
            size_t at = ((size_t)h * capacity + pos) * dim;
            store_half(keys + at, s->k + ((size_t)t * m->kv_heads + h) * dim, dim);
            store_half(values + at, s->v + ((size_t)t * m->kv_heads + h) * dim, dim);
        }
    }
    /* Enough (token, key head, range) units for two per thread, ranges of at least 32 positions. */
    int units = tokens * m->kv_heads, threads = pool_size();
    int ranges = units >= 2 * threads ? 1 : (2 * threads + units - 1) / units;
    if (ranges > (start + 1) / 32)
        ranges = (start + 1) / 32 > 1 ? (start + 1) / 32 : 1;
    ek_attention job = {m, s, keys, values, capacity, start, tokens, ranges};
    run(attention_task, &job);
    add_product(m, s, &ly->o, s->att, tokens);
}

static void mlp_block(const ek_model *m, const ek_layer *ly, ek_scratch *s, int tokens) {
    const int hidden = m->hidden, inter = m->inter;
    for (int t = 0; t < tokens; t++)
        rms_norm(s->x + (size_t)t * hidden, ly->ffn_norm, s->normed + (size_t)t * hidden, hidden, m->eps);
    ek_input in = quantized(s, s->normed, tokens, hidden);
    const ek_mat *gu[2] = {&ly->gate, &ly->up};
    float *outs[2] = {s->gate, s->up};
    products(gu, outs, s->lora, 2, &in);
    size_t i = 0, n = (size_t)tokens * inter;
#if EK_VNNI
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(s->gate + i), u = _mm512_loadu_ps(s->up + i);
        __m512 sig = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_storeu_ps(s->gate + i, _mm512_mul_ps(sig, u));
    }
#endif
    for (; i < n; i++) {
        float g = s->gate[i];
        s->gate[i] = g / (1.f + expf(-g)) * s->up[i];
    }
    add_product(m, s, &ly->down, s->gate, tokens);
}

/* One embedding row of a Q8_0 matrix, dequantised. */
static void embed_row(const ek_mat *e, int row, float *out) {
    const int nb = e->cols / 32, g = row / 16, lane = row % 16;
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = e->codes + ((size_t)g * nb + b) * 512 + lane * 4;
        const float d = half_to_float(e->scale[((size_t)g * nb + b) * 16 + lane]);
        for (int L = 0; L < 8; L++)
            for (int j = 0; j < 4; j++)
                out[b * 32 + L * 4 + j] = d * (float)((int32_t)p[L * 64 + j] - 128);
    }
}

/* Run `tokens` tokens (ids, or embeddings when ids is NULL) at positions start.. through the model,
 * writing their keys and values into the cache ([layers][kv_heads][capacity][head_dim] each) and
 * the last token's logits into logits [vocab]. Returns 0, or -1 for arguments out of range. */
static int forward(const ek_model *m, ek_scratch *s, ek_half *keys, ek_half *values, int capacity, int start, int tokens,
                   const int32_t *ids, const float *embeds, float *logits) {
    if (tokens < 1 || tokens > s->max_tokens || start < 0 || start + tokens > capacity || capacity > s->capacity ||
        start + tokens > m->positions)
        return -1;
    const int hidden = m->hidden;
    for (int t = 0; t < tokens; t++) {
        if (ids) {
            if (ids[t] < 0 || ids[t] >= m->embed.rows)
                return -1;
            embed_row(&m->embed, ids[t], s->x + (size_t)t * hidden);
        } else {
            memcpy(s->x + (size_t)t * hidden, embeds + (size_t)t * hidden, sizeof(float) * hidden);
        }
    }
    const size_t per_layer = (size_t)m->kv_heads * capacity * m->head_dim;
    for (int l = 0; l < m->layers; l++) {
        attention_block(m, &m->layer[l], s, keys + l * per_layer, values + l * per_layer, capacity, start, tokens);
        mlp_block(m, &m->layer[l], s, tokens);
    }
    const float *last = s->x + (size_t)(tokens - 1) * hidden;
    rms_norm(last, m->final_norm, s->normed, hidden, m->eps);
    ek_input in = quantized(s, s->normed, 1, hidden);
    const ek_mat *head[1] = {&m->head};
    float *out[1] = {logits};
    products(head, out, s->lora, 1, &in);
    return 0;
}

/* forward(), one caller at a time (decoders used from several threads take turns). */
int ek_forward(const ek_model *m, ek_scratch *s, ek_half *keys, ek_half *values, int capacity, int start, int tokens,
               const int32_t *ids, const float *embeds, float *logits) {
    pthread_mutex_lock(&calls);
    int status = forward(m, s, keys, values, capacity, start, tokens, ids, embeds, logits);
    pthread_mutex_unlock(&calls);
    return status;
}

/* out [tokens][rows] = w·x for x [tokens][cols]: one product alone (the tests' window on the kernels). */
int ek_product(const ek_mat *w, const float *x, int tokens, float *out) {
    ek_scratch s = {0};
    s.xq = zalloc((size_t)tokens * w->cols);
    s.xd = zalloc((size_t)tokens * w->cols / 32 * 4);
    s.xs = zalloc((size_t)tokens * w->cols / 32 * 4);
    s.xc = zalloc((size_t)tokens * w->cols / 32 * 4);
    s.lora = zalloc((size_t)tokens * (w->rank + 1) * 4);
    int status = -1;
    if (s.xq && s.xd && s.xs && s.xc && s.lora) {
        ek_input in = quantized(&s, x, tokens, w->cols);
        const ek_mat *mats[1] = {w};
        float *outs[1] = {out};
        pthread_mutex_lock(&calls);
        products(mats, outs, s.lora, 1, &in);
        pthread_mutex_unlock(&calls);
        status = 0;
    }
    free(s.xq); free(s.xd); free(s.xs); free(s.xc); free(s.lora);
    return status;
}
