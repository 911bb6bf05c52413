#!/bin/sh
# gpu-session.sh -- build and run the CUDA backend's tests and benchmark on a
# GPU machine that lacks the host libraries (nng, msgpack, sqlite, ncurses,
# openblas): compiles kernels/cuda/*.cu, the few plain-C kernel files the
# GPU code needs, the ref backend (the oracle of tests/gpu), the test harness,
# tests/gpu/*_test.c and bench/gpu_*.c, and links them against cuBLAS +
# cudart only. The ref backend's few BLAS/LAPACK calls (cblas_dgemm,
# cblas_dsyrk, dsyev_) get a small plain-C stand-in written below when the
# machine has no cblas.h (test use only: slow, but exact enough).
#   sh scripts/gpu-session.sh [test|bench|all|build] [bench args]
# Logs go to $OUT (when set) as gpu-test.log / gpu-bench.log.
set -u
what=${1:-all}
[ $# -gt 0 ] && shift
B=build/gpu
OUTDIR=${OUT:-$B}
mkdir -p "$B" "$OUTDIR"
NV="nvcc -O3 -g -lineinfo -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels -DTK_HAVE_CUDA=1"
CC="gcc -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Ikernels -Itests -DTK_HAVE_CUDA=1 -I/usr/local/cuda/include"
objs=""
for f in kernels/cuda/*.cu; do
    o=$B/$(basename "$f" .cu).o
    objs="$objs $o"
    $NV -c "$f" -o "$o" &
done
SHIM=""
if [ -n "${TKC_FORCE_SHIM:-}" ] || ! echo '#include <cblas.h>' | gcc -E - >/dev/null 2>&1; then
    mkdir -p "$B/shim"
    cat > "$B/shim/cblas.h" <<'H'
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
enum CBLAS_UPLO { CblasUpper = 121, CblasLower = 122 };
void cblas_dgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n, int k,
                 double alpha, const double *A, int lda, const double *B, int ldb, double beta, double *C, int ldc);
void cblas_dsyrk(enum CBLAS_ORDER o, enum CBLAS_UPLO u, enum CBLAS_TRANSPOSE t, int n, int k, double alpha,
                 const double *A, int lda, double beta, double *C, int ldc);
H
    cat > "$B/shim/shim.c" <<'C'
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cblas.h"
static double at(const double *X, int ld, int r, int c, int rowmajor, int tr) {
    if (tr) { int t = r; r = c; c = t; }
    return rowmajor ? X[(size_t)r * ld + c] : X[(size_t)c * ld + r];
}
void cblas_dgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n, int k,
                 double alpha, const double *A, int lda, const double *B, int ldb, double beta, double *C, int ldc) {
    int rm = o == CblasRowMajor;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += at(A, lda, i, p, rm, ta == CblasTrans) * at(B, ldb, p, j, rm, tb == CblasTrans);
            double *c = rm ? &C[(size_t)i * ldc + j] : &C[(size_t)j * ldc + i];
            *c = alpha * s + (beta == 0 ? 0 : beta * *c);
        }
}
void cblas_dsyrk(enum CBLAS_ORDER o, enum CBLAS_UPLO u, enum CBLAS_TRANSPOSE t, int n, int k, double alpha,
                 const double *A, int lda, double beta, double *C, int ldc) {
    (void)u;
    int rm = o == CblasRowMajor, tr = t == CblasTrans;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += at(A, lda, i, p, rm, tr) * at(A, lda, j, p, rm, tr);
            double *c = rm ? &C[(size_t)i * ldc + j] : &C[(size_t)j * ldc + i];
            *c = alpha * s + (beta == 0 ? 0 : beta * *c);
        }
}
/* Jacobi eigen solver: eigenvalues ascending, vectors in the columns (column-major). */
void dsyev_(const char *jobz, const char *uplo, const int *pn, double *a, const int *plda, double *w,
            double *work, const int *lwork, int *info, size_t l1, size_t l2) {
    (void)jobz, (void)l1, (void)l2;
    int n = *pn, lda = *plda;
    *info = 0;
    if (*lwork == -1) { work[0] = 1; return; }
    double *S = malloc(sizeof(double) * n * n), *V = malloc(sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            int lo = (*uplo == 'L' || *uplo == 'l') ? (i >= j) : (i <= j);
            S[i * n + j] = lo ? a[i + (size_t)j * lda] : a[j + (size_t)i * lda];
            V[i * n + j] = i == j;
        }
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++) for (int q = p + 1; q < n; q++) off += S[p * n + q] * S[p * n + q];
        if (off < 1e-26) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = S[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double th = (S[q * n + q] - S[p * n + p]) / (2 * apq);
                double tt = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(tt * tt + 1), s = tt * c;
                for (int r = 0; r < n; r++) {
                    double x = S[r * n + p], y = S[r * n + q];
                    S[r * n + p] = c * x - s * y, S[r * n + q] = s * x + c * y;
                }
                for (int r = 0; r < n; r++) {
                    double x = S[p * n + r], y = S[q * n + r];
                    S[p * n + r] = c * x - s * y, S[q * n + r] = s * x + c * y;
                }
                for (int r = 0; r < n; r++) {
                    double x = V[r * n + p], y = V[r * n + q];
                    V[r * n + p] = c * x - s * y, V[r * n + q] = s * x + c * y;
                }
            }
    }
    int *ord = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) ord[i] = i;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (S[ord[j] * n + ord[j]] < S[ord[i] * n + ord[i]]) { int t = ord[i]; ord[i] = ord[j]; ord[j] = t; }
    for (int c = 0; c < n; c++) {
        w[c] = S[ord[c] * n + ord[c]];
        for (int r = 0; r < n; r++) a[r + (size_t)c * lda] = V[r * n + ord[c]];
    }
    free(S), free(V), free(ord);
}
/* dsyevr_ with range 'I' (eigenpairs il..iu, ascending) over the dsyev_ above. */
void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *pn, double *a, const int *plda,
             const double *vl, const double *vu, const int *il, const int *iu, const double *abstol, int *m,
             double *w, double *z, const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
             const int *liwork, int *info, size_t l1, size_t l2, size_t l3) {
    (void)range, (void)vl, (void)vu, (void)abstol, (void)isuppz, (void)l3;
    int n = *pn;
    *info = 0;
    if (*lwork == -1 || *liwork == -1) { work[0] = 1; iwork[0] = 1; return; }
    double *all = malloc(sizeof(double) * n);
    int one = 1;
    dsyev_(jobz, uplo, pn, a, plda, all, work, &one, info, l1, l2);
    *m = *iu - *il + 1;
    for (int c = 0; c < *m; c++) {
        w[c] = all[*il - 1 + c];
        for (int r = 0; r < n; r++) z[r + (size_t)c * *ldz] = a[r + (size_t)(*il - 1 + c) * *plda];
    }
    free(all);
}
int openblas_get_num_threads(void) { return 1; }
void openblas_set_num_threads(int n) { (void)n; }
C
    SHIM="-I$B/shim"
    gcc -O2 -c "$B/shim/shim.c" -I"$B/shim" -o "$B/shim.o" || exit 1
    shimobj="$B/shim.o"
else
    shimobj=""
    BLASLIB="-lopenblas"
fi
cobjs=""
for f in $(ls kernels/*.c kernels/ref/*.c kernels/cpu/*.c | grep -v -e _test.c -e taylor-attn.c) tests/harness.c; do
    o=$B/c_$(echo "$f" | tr / _ | sed 's/\.c$//').o
    [ "$f" = tests/harness.c ] || cobjs="$cobjs $o"
    $CC $SHIM -pthread -c "$f" -o "$o" &
done
wait
cp "$B/c_tests_harness.o" "$B/harness.o"
for f in tests/gpu/*_test.c bench/gpu_*.c; do
    $CC $SHIM -c "$f" -o "$B/$(basename "$f" .c).o" || exit 1
done
common="$objs $cobjs $shimobj"
for f in tests/gpu/*_test.c; do
    n=$(basename "$f" .c)
    nvcc -o "$B/$n" "$B/$n.o" "$B/harness.o" $common -lcublas ${BLASLIB:-} -lpthread || exit 1
done
for f in bench/gpu_*.c; do
    n=$(basename "$f" .c)
    nvcc -o "$B/$n" "$B/$n.o" $common -lcublas ${BLASLIB:-} -lpthread || exit 1
done
[ "$what" = build ] && exit 0
if [ "$what" = test ] || [ "$what" = all ]; then
    for t in "$B"/*_test; do
        echo "== $t"; "$t"
    done 2>&1 | tee "$OUTDIR/gpu-test.log"
    if command -v compute-sanitizer >/dev/null 2>&1; then
        echo "== compute-sanitizer (small cases)"
        compute-sanitizer --tool memcheck --error-exitcode 9 "$B/attention_test" \
            test_exact_f16_d64_cross_attention_with_key_mask_matches_fp64 \
            test_taylor_p3_eight_blocks_with_mask_and_normalized_qk_matches_fp64 \
            test_negative_denominators_fall_back_at_the_probe_and_leave_o_untouched 2>&1 | tail -8
        echo "compute-sanitizer exit $?"
    fi 2>&1 | tee -a "$OUTDIR/gpu-test.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    for b in "$B"/gpu_*; do
        case "$b" in *.o) continue ;; esac
        "$b" "$@"
    done 2>&1 | tee "$OUTDIR/gpu-bench.log"
fi
