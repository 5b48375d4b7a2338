/* The OpenMP runtime PyTorch already runs on, for the batch-step kernels (batch_attention.c,
 * delta_rows.c): libgomp's GOMP_parallel and omp_get_thread_num, looked up in the process by
 * expertkit/runtime/openmp.py and handed over once through ek_set_openmp. A kernel splits its work
 * over the threads that run PyTorch's matrix products (they wait, spinning, between PyTorch's
 * operators); a pool of its own would compete with them for the same cores. Never set (no such
 * runtime found): everything runs on the calling thread. Each library holds its own copy. */
#ifndef EXPERTKIT_OPENMP_H
#define EXPERTKIT_OPENMP_H

typedef void (*ek_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

static struct {
    ek_parallel_fn parallel;
    int (*thread_num)(void);
} openmp;

void ek_set_openmp(void *parallel, void *thread_num) {
    openmp.parallel = (ek_parallel_fn)parallel;
    openmp.thread_num = (int (*)(void))thread_num;
}

/* Whether work may go to `threads` threads of the runtime (else the calling thread does it all). */
static inline int ek_openmp_splits(int threads) {
    return openmp.parallel != NULL && openmp.thread_num != NULL && threads > 1;
}

#endif
