/* A small thread pool for the delegate's kernels, and the split of one
 * GQ fully connected call over it. See gq_threads.h. Pure C11 + POSIX
 * threads (in libc on glibc >= 2.34 and on Android's bionic). */
#define _POSIX_C_SOURCE 200809L
#include "gq_threads.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/gq_fc_internal.h"

struct gq_pool {
  pthread_mutex_t lock;
  pthread_cond_t wake;  /* workers wait here for a new generation */
  pthread_cond_t done;  /* the caller waits here for the last task */
  int workers;
  pthread_t* threads;
  int started;          /* threads actually created */
  /* The current job, valid while pending > 0. */
  void (*fn)(void* ctx, int task);
  void* ctx;
  int tasks;
  int next;             /* next task to hand out */
  int pending;          /* tasks not finished */
  unsigned generation;  /* bumped for every job */
  int stop;
};

/* Takes and runs tasks of the current job until none are left. Called with
 * the lock held; returns with it held. */
static void drain(gq_pool* pool) {
  while (pool->next < pool->tasks) {
    const int task = pool->next++;
    pthread_mutex_unlock(&pool->lock);
    pool->fn(pool->ctx, task);
    pthread_mutex_lock(&pool->lock);
    if (--pool->pending == 0) {
      pthread_cond_signal(&pool->done);
    }
  }
}

static void* worker(void* arg) {
  gq_pool* pool = (gq_pool*)arg;
  unsigned seen = 0;
  pthread_mutex_lock(&pool->lock);
  for (;;) {
    while (!pool->stop && pool->generation == seen) {
      pthread_cond_wait(&pool->wake, &pool->lock);
    }
    if (pool->stop) {
      break;
    }
    seen = pool->generation;
    drain(pool);
  }
  pthread_mutex_unlock(&pool->lock);
  return NULL;
}

gq_pool* gq_pool_create(int threads) {
  if (threads < 2) {
    return NULL;
  }
  gq_pool* pool = calloc(1, sizeof *pool);
  if (pool == NULL) {
    return NULL;
  }
  pool->workers = threads - 1; /* the caller is the last thread */
  pool->threads = calloc((size_t)pool->workers, sizeof(pthread_t));
  if (pool->threads == NULL || pthread_mutex_init(&pool->lock, NULL) != 0) {
    free(pool->threads);
    free(pool);
    return NULL;
  }
  if (pthread_cond_init(&pool->wake, NULL) != 0 || pthread_cond_init(&pool->done, NULL) != 0) {
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool);
    return NULL;
  }
  for (int i = 0; i < pool->workers; ++i) {
    if (pthread_create(&pool->threads[i], NULL, worker, pool) != 0) {
      break; /* run with the threads we got */
    }
    pool->started++;
  }
  if (pool->started == 0) {
    gq_pool_destroy(pool);
    return NULL;
  }
  return pool;
}

void gq_pool_destroy(gq_pool* pool) {
  if (pool == NULL) {
    return;
  }
  pthread_mutex_lock(&pool->lock);
  pool->stop = 1;
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->lock);
  for (int i = 0; i < pool->started; ++i) {
    pthread_join(pool->threads[i], NULL);
  }
  pthread_cond_destroy(&pool->wake);
  pthread_cond_destroy(&pool->done);
  pthread_mutex_destroy(&pool->lock);
  free(pool->threads);
  free(pool);
}

int gq_pool_threads(const gq_pool* pool) { return pool != NULL ? pool->started + 1 : 1; }

void gq_pool_run(gq_pool* pool, int tasks, void (*fn)(void* ctx, int task), void* ctx) {
  if (pool == NULL || tasks <= 1) {
    for (int t = 0; t < tasks; ++t) {
      fn(ctx, t);
    }
    return;
  }
  pthread_mutex_lock(&pool->lock);
  pool->fn = fn;
  pool->ctx = ctx;
  pool->tasks = tasks;
  pool->next = 0;
  pool->pending = tasks;
  pool->generation++;
  pthread_cond_broadcast(&pool->wake);
  drain(pool); /* the caller works too */
  while (pool->pending > 0) {
    pthread_cond_wait(&pool->done, &pool->lock);
  }
  pthread_mutex_unlock(&pool->lock);
}

/* ------------------------------------------------ fully connected split */

typedef struct fc_split {
  const gq_fc_kernel_info* kernel;
  const gq_fc_args* args;
  uint8_t* workspaces;
  size_t workspace_stride;
  int tasks;
  int by_rows; /* 1: output rows (batch 1), 0: batch rows */
} fc_split;

/* [begin, end) of part t of n over count items, in whole multiples of align. */
static void part(size_t count, int n, int t, size_t align, size_t* begin, size_t* end) {
  const size_t units = (count + align - 1) / align;
  const size_t b = units * (size_t)t / (size_t)n * align;
  const size_t e = units * (size_t)(t + 1) / (size_t)n * align;
  *begin = b < count ? b : count;
  *end = e < count ? e : count;
}

static void fc_task(void* ctx, int t) {
  const fc_split* s = (const fc_split*)ctx;
  const gq_fc_args* a = s->args;
  gq_fc_args mine = *a;
  mine.workspace = s->workspaces + (size_t)t * s->workspace_stride;
  size_t begin, end;
  if (s->by_rows) {
    /* Batch 1: y is one row, so a range of outputs is a contiguous slice
     * of y, of the packed rows and of the bias. Ranges are multiples of 16
     * rows so every part keeps the kernels' row tiles whole. */
    part(a->out_features, s->tasks, t, 16, &begin, &end);
    const size_t row_bytes = gq_fc_row_bytes(a->bits, a->in_features);
    mine.out_features = end - begin;
    mine.packed = a->packed + begin * row_bytes;
    mine.bias = a->bias != NULL ? a->bias + begin : NULL;
    mine.y = a->y + begin;
  } else {
    part(a->batch, s->tasks, t, 1, &begin, &end);
    mine.batch = end - begin;
    mine.x = a->x + begin * a->in_features;
    mine.y = a->y + begin * a->out_features;
  }
  if (end > begin) {
    gq_fc_run(s->kernel, &mine);
  }
}

size_t gq_fc_parallel_workspace(int threads, size_t batch, size_t in_features) {
  /* Every part gets a workspace for the whole batch: batch parts need less,
   * row parts of batch 1 need the batch-1 size. Each is 64-byte aligned. */
  const size_t one = gq_fc_workspace_size(batch, in_features);
  if (one == 0 || threads < 1 || one > SIZE_MAX / (size_t)threads) {
    return 0;
  }
  return one * (size_t)threads;
}

void gq_fc_run_parallel(gq_pool* pool, const gq_fc_kernel_info* kernel, const gq_fc_args* args) {
  const int threads = gq_pool_threads(pool);
  const size_t work = args->batch * args->in_features * args->out_features;
  const int by_rows = args->batch == 1;
  const size_t items = by_rows ? (args->out_features + 15) / 16 : args->batch;
  if (threads < 2 || work < GQ_PARALLEL_MIN_WORK || items < 2) {
    gq_fc_run(kernel, args);
    return;
  }
  fc_split s;
  s.kernel = kernel;
  s.args = args;
  s.workspaces = (uint8_t*)args->workspace;
  s.workspace_stride = gq_fc_workspace_size(args->batch, args->in_features);
  s.tasks = (size_t)threads < items ? threads : (int)items;
  s.by_rows = by_rows;
  gq_pool_run(pool, s.tasks, fc_task, &s);
}
