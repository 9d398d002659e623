/* Threads for the delegate: a small pool sized by the interpreter's thread
 * count (TfLiteContext.recommended_num_threads), and the split of one GQ
 * fully connected call over it: by output rows at batch 1 (each thread
 * streams its own slice of the packed weights), by batch rows otherwise.
 * Calls below GQ_PARALLEL_MIN_WORK multiply-adds run on the caller alone:
 * waking a thread costs more than they take. Pure C11 + POSIX threads. */
#ifndef GQ_THREADS_H_
#define GQ_THREADS_H_

#include <stddef.h>

#include "../kernels/gq_fc.h"

/* About 0.2 ms of single-thread kernel time at batch 1. */
#define GQ_PARALLEL_MIN_WORK ((size_t)1 << 22)

typedef struct gq_pool gq_pool;

/* threads - 1 workers (the caller is the last thread); NULL when threads < 2
 * or nothing could be started: callers then run alone. */
gq_pool* gq_pool_create(int threads);
void gq_pool_destroy(gq_pool* pool);
int gq_pool_threads(const gq_pool* pool); /* 1 for NULL */

/* Runs fn(ctx, 0..tasks-1) on the pool and the caller; returns when all
 * are done. Jobs must not be submitted concurrently to one pool. */
void gq_pool_run(gq_pool* pool, int tasks, void (*fn)(void* ctx, int task), void* ctx);

/* Workspace bytes for gq_fc_run_parallel with this many threads; 0 on
 * overflow. args->workspace must be that big (64-byte aligned). */
size_t gq_fc_parallel_workspace(int threads, size_t batch, size_t in_features);

/* gq_fc_run, split over the pool when the call is big enough. */
void gq_fc_run_parallel(gq_pool* pool, const gq_fc_kernel_info* kernel, const gq_fc_args* args);

#endif /* GQ_THREADS_H_ */
