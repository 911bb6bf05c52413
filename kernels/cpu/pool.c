/*
 * pool.c -- a small persistent thread pool. The calling thread is worker 0;
 * threads-1 helpers sleep on a condition variable between runs. A run hands
 * out items one at a time from an atomic counter (items are coarse: a query
 * block of a head, a key chunk), and the caller waits until every helper has
 * finished its last item.
 */
#include "cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tkcpu_pool {
    int threads;
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation; /* bumped per run */
    int busy;            /* helpers still inside the current run */
    int quit;
    /* the current run */
    tkcpu_task_fn fn;
    void *arg;
    int64_t n;
    atomic_llong next;
};

typedef struct {
    tkcpu_pool *p;
    int worker;
} helper_arg;

static void drain(tkcpu_pool *p, int worker) {
    for (;;) {
        int64_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        p->fn(p->arg, i, worker);
    }
}

static void *helper_main(void *a) {
    helper_arg ha = *(helper_arg *)a;
    free(a);
    tkcpu_pool *p = ha.p;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        drain(p, ha.worker);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int tkcpu_pool_create(int threads, tkcpu_pool **out, char *err, size_t errlen) {
    *out = NULL;
    if (threads < 1) threads = 1;
    tkcpu_pool *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "cpu backend: out of memory for the thread pool");
        return TK_ERR_NOMEM;
    }
    p->threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->next, 0);
    if (threads > 1) {
        p->tid = calloc((size_t)threads, sizeof *p->tid);
        if (!p->tid) {
            tkcpu_pool_destroy(p);
            snprintf(err, errlen, "cpu backend: out of memory for the thread pool");
            return TK_ERR_NOMEM;
        }
        for (int w = 1; w < threads; w++) {
            helper_arg *ha = malloc(sizeof *ha);
            int rc = ha ? 0 : -1;
            if (ha) {
                ha->p = p;
                ha->worker = w;
                rc = pthread_create(&p->tid[w], NULL, helper_main, ha);
                if (rc) free(ha);
            }
            if (rc) {
                p->threads = w; /* join the ones started */
                tkcpu_pool_destroy(p);
                snprintf(err, errlen, "cpu backend: cannot start thread %d of %d", w, threads);
                return TK_ERR;
            }
        }
    }
    *out = p;
    return TK_OK;
}

void tkcpu_pool_destroy(tkcpu_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int w = 1; p->tid && w < p->threads; w++) pthread_join(p->tid[w], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->tid);
    free(p);
}

int tkcpu_pool_threads(const tkcpu_pool *p) { return p ? p->threads : 1; }

void tkcpu_pool_run(tkcpu_pool *p, int64_t n, tkcpu_task_fn fn, void *arg) {
    if (n <= 0) return;
    if (p->threads == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++) fn(arg, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store(&p->next, 0);
    p->busy = p->threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int tkcpu_default_threads(void) {
    const char *e = getenv("TK_CPU_THREADS");
    if (e && *e) {
        int t = atoi(e);
        if (t >= 1 && t <= 64) return t;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    return (int)n;
}
