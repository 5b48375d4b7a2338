/* The OpenMP runtime PyTorch already runs on, for the batch-step kernels (batch_attention.c,
 * delta_rows.c): libgomp's GOMP_parallel and omp_get_thread_num, looked up in the process by
 * expertkit/runtime/openmp.py and handed over once through ek_set_openmp. A kernel splits its work
 * over the threads that run PyTorch's matrix products (they wait, spinning, between PyTorch's
 * operators); a pool of its own would compete with them for the same cores. Never set (no such
 * runtime found): everything runs on the calling thread. Each library holds its own copy. */
#ifndef EXPERTKIT_OPENMP_H
#define EXPERTKIT_OPENMP_H

#include <stdatomic.h>

typedef void (*ek_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

static struct {
    ek_parallel_fn parallel;
    int (*thread_num)(void);
} openmp;

void ek_set_openmp(void *parallel, void *thread_num) {
    openmp.parallel = (ek_parallel_fn)parallel;
    openmp.thread_num = (int (*)(void))thread_num;
}

/* One split job: work(job, t) on each thread t of the team, counted as it starts. */
typedef struct {
    void (*work)(void *, int);
    void *job;
    int threads;
    atomic_int team;
} ek_split;

static void ek_split_part(void *arg) {
    ek_split *s = arg;
    const int t = openmp.thread_num();
    if (t >= 0 && t < s->threads) { /* a team never exceeds what was asked; per-thread buffers are sized so */
        atomic_fetch_add(&s->team, 1);
        s->work(s->job, t);
    }
}

/* work(job, t) on up to `threads` of the runtime's threads (t from 0; each takes its share from a
 * counter in job), or on the calling thread alone (t 0) when the runtime was not given or threads < 2.
 * Returns how many threads ran it. */
static int ek_split_run(void (*work)(void *, int), void *job, int threads) {
    if (openmp.parallel == NULL || openmp.thread_num == NULL || threads < 2) {
        work(job, 0);
        return 1;
    }
    ek_split s = {work, job, threads, 0};
    openmp.parallel(ek_split_part, &s, (unsigned)threads, 0);
    return atomic_load(&s.team);
}

#endif
