/* features_test.c -- the Taylor feature map: R(d,P), order, weights, and the
 * identity <psi(q), psi(k)> = kappa_P(s q.k). */
#include "feature_map.h"
#include "harness.h"
#include "kernels.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* kappa_P(x) and the sum of |terms| (the scale a rounding error is relative
 * to when terms cancel), computed here apart from the library. */
static void kappa_ref(int P, double x, double *kappa, double *abs_terms) {
    double k = 0, a = 0, t = 1;
    for (int p = 0; p < P; p++) {
        k += t;
        a += fabs(t);
        t = t * x / (p + 1);
    }
    *kappa = k;
    *abs_terms = a;
}

static void test_inner_product_of_features_equals_kappa_for_random_d_and_P(void) {
    uint64_t seed = 99;
    double worst = 0;
    int cases = 0;
    for (int d = 1; d <= 8; d++)
        for (int P = 1; P <= 6; P++) {
            tki_features f;
            char err[128];
            TH_CHECK(tki_features_build(&f, d, P, 1 << 20, err, sizeof err) == 0);
            double *w = malloc(f.R * sizeof *w), *pq = malloc(f.R * sizeof *pq),
                   *pk = malloc(f.R * sizeof *pk);
            for (int rep = 0; rep < 40; rep++) {
                double q[8], k[8];
                double mag = 0.25 + 2.0 * tu_uniform(&seed); /* |s q.k| up to ~4 */
                for (int i = 0; i < d; i++) q[i] = mag * tu_normal(&seed), k[i] = mag * tu_normal(&seed);
                double s = (0.5 + tu_uniform(&seed)) / sqrt((double)d);
                tki_features_weights(&f, s, w);
                tki_features_eval(&f, q, w, pq);
                tki_features_eval(&f, k, w, pk);
                double ip = 0, qk = 0;
                for (int64_t r = 0; r < f.R; r++) ip += pq[r] * pk[r];
                for (int i = 0; i < d; i++) qk += q[i] * k[i];
                double kap, scale;
                kappa_ref(P, s * qk, &kap, &scale);
                double rel = fabs(ip - kap) / scale;
                if (rel > worst) worst = rel;
                TH_CHECKF(rel <= 1e-12, "d=%d P=%d: <psi,psi>=%.17g kappa=%.17g rel %.3g", d, P, ip,
                          kap, rel);
                cases++;
            }
            free(w), free(pq), free(pk);
            tki_features_free(&f);
        }
    TH_CHECK(cases == 8 * 6 * 40);
    printf("# worst relative error %.3g over %d cases\n", worst, cases);
}

static void test_feature_count_matches_the_spec_table(void) {
    TH_EQ_INT(taylor_feature_count(16, 2), 17);
    TH_EQ_INT(taylor_feature_count(16, 3), 153);
    TH_EQ_INT(taylor_feature_count(16, 4), 969);
    TH_EQ_INT(taylor_feature_count(32, 4), 6545);
    TH_EQ_INT(taylor_feature_count(128, 3), 8385);
    TH_EQ_INT(taylor_feature_count(128, 4), 366145);
    TH_EQ_INT(taylor_feature_count(1, 6), 6);
    TH_EQ_INT(taylor_feature_count(7, 1), 1);
}

/* -1 if tuple a < tuple b in (degree, lexicographic) order. */
static int cmp_feature(const tki_features *f, int64_t a, int64_t b) {
    if (f->degree[a] != f->degree[b]) return f->degree[a] < f->degree[b] ? -1 : 1;
    for (int t = 0; t < f->degree[a]; t++) {
        uint16_t x = f->idx[a * f->max_degree + t], y = f->idx[b * f->max_degree + t];
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
}

static void test_feature_count_equals_the_number_of_features_generated(void) {
    int dims[] = {1, 2, 3, 5, 8, 16, 32, 128};
    for (size_t a = 0; a < sizeof dims / sizeof dims[0]; a++)
        for (int P = 1; P <= 6; P++) {
            int d = dims[a];
            int64_t R = taylor_feature_count(d, P);
            if (R > 400000) continue;
            tki_features f;
            char err[128];
            TH_CHECK(tki_features_build(&f, d, P, R, err, sizeof err) == 0);
            /* count the distinct non-decreasing tuples the table holds */
            int64_t n = 0;
            for (int64_t r = 0; r < f.R; r++) {
                int ok = f.degree[r] < P;
                for (int t = 1; t < f.degree[r]; t++)
                    ok &= f.idx[r * f.max_degree + t - 1] <= f.idx[r * f.max_degree + t];
                n += ok && (r == 0 || cmp_feature(&f, r - 1, r) < 0); /* distinct */
            }
            TH_CHECKF(n == R, "d=%d P=%d: %lld valid features, R=%lld", d, P, (long long)n,
                      (long long)R);
            tki_features_free(&f);
        }
}

static void test_features_are_ordered_by_degree_then_lexicographically(void) {
    tki_features f;
    char err[128];
    TH_CHECK(tki_features_build(&f, 5, 5, 1 << 20, err, sizeof err) == 0);
    for (int64_t r = 1; r < f.R; r++) TH_CHECKF(cmp_feature(&f, r - 1, r) < 0, "feature %lld", (long long)r);
    /* first features: constant, x_0..x_4, then (0,0) */
    TH_EQ_INT(f.degree[0], 0);
    for (int i = 0; i < 5; i++) TH_EQ_INT(f.idx[(1 + i) * f.max_degree], i);
    TH_EQ_INT(f.degree[6], 2);
    TH_EQ_INT(f.idx[6 * f.max_degree], 0);
    TH_EQ_INT(f.idx[6 * f.max_degree + 1], 0);
    /* the parent is the tuple without its last index */
    for (int64_t r = 1; r < f.R; r++) {
        int64_t pa = f.parent[r];
        TH_EQ_INT(f.degree[pa], f.degree[r] - 1);
        for (int t = 0; t < f.degree[pa]; t++)
            TH_EQ_INT(f.idx[pa * f.max_degree + t], f.idx[r * f.max_degree + t]);
        TH_EQ_INT(f.last[r], f.idx[r * f.max_degree + f.degree[r] - 1]);
    }
    tki_features_free(&f);
}

static void test_each_feature_is_the_weighted_monomial_of_the_spec(void) {
    uint64_t seed = 7;
    for (int d = 1; d <= 5; d++)
        for (int P = 1; P <= 5; P++) {
            tki_features f;
            char err[128];
            TH_CHECK(tki_features_build(&f, d, P, 1 << 20, err, sizeof err) == 0);
            double x[5], s = 0.37;
            for (int i = 0; i < d; i++) x[i] = tu_normal(&seed);
            double *w = malloc(f.R * sizeof *w), *psi = malloc(f.R * sizeof *psi);
            tki_features_weights(&f, s, w);
            tki_features_eval(&f, x, w, psi);
            for (int64_t r = 0; r < f.R; r++) {
                int count[5] = {0};
                for (int t = 0; t < f.degree[r]; t++) count[f.idx[r * f.max_degree + t]]++;
                double mono = 1, fact = 1;
                for (int i = 0; i < d; i++)
                    for (int c = 1; c <= count[i]; c++) mono *= x[i], fact *= c;
                double want = pow(s, f.degree[r] / 2.0) * mono / sqrt(fact);
                TH_CHECKF(fabs(psi[r] - want) <= 1e-14 * (1 + fabs(want)), "d=%d P=%d r=%lld: %g vs %g",
                          d, P, (long long)r, psi[r], want);
            }
            free(w), free(psi);
            tki_features_free(&f);
        }
}

static void test_float_features_agree_with_double_features(void) {
    tki_features f;
    char err[128];
    TH_CHECK(tki_features_build(&f, 8, 4, 1 << 20, err, sizeof err) == 0);
    double xd[8], wd[400], pd[400];
    float xf[8], wf[400], pf[400];
    uint64_t seed = 3;
    for (int i = 0; i < 8; i++) xd[i] = tu_normal(&seed), xf[i] = (float)xd[i];
    tki_features_weights(&f, 0.3, wd);
    for (int64_t r = 0; r < f.R; r++) wf[r] = (float)wd[r];
    tki_features_eval(&f, xd, wd, pd);
    tki_features_eval_f32(&f, xf, wf, pf);
    for (int64_t r = 0; r < f.R; r++) TH_CHECK(fabs(pf[r] - pd[r]) <= 1e-5 * (1 + fabs(pd[r])));
    tki_features_free(&f);
}

static void test_a_feature_count_past_the_limit_is_refused_with_a_message(void) {
    tki_features f;
    char err[128] = "";
    TH_CHECK(tki_features_build(&f, 128, 4, 20000, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "R(128,4)") != NULL);
    TH_CHECK(f.R == 0 && f.coef == NULL);
    TH_CHECK(tki_features_build(&f, 0, 4, 20000, err, sizeof err) != 0);
    TH_EQ_INT(taylor_feature_count(60000, 200), -1);
}

/* docs/MATH.md carries a table of R(d,P); it must say what the code does. */
static void test_the_feature_count_table_of_docs_math_is_current(void) {
    FILE *f = fopen("docs/MATH.md", "r");
    if (!f) th_skip("docs/MATH.md not found from %s", "the working directory");
    char line[512];
    int in_table = 0, rows = 0, cells = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "<!-- feature-count-table -->")) { in_table = 1; continue; }
        if (strstr(line, "<!-- end feature-count-table -->")) break;
        if (!in_table || line[0] != '|' || line[2] == 'd' || line[1] == '-') continue;
        char *p = line + 1;
        int d = (int)strtol(p, &p, 10);
        for (int P = 1; P <= 6; P++) {
            p = strchr(p, '|');
            TH_CHECK(p != NULL);
            long long r = strtoll(p + 1, &p, 10);
            TH_CHECKF(r == taylor_feature_count(d, P), "docs/MATH.md says R(%d,%d)=%lld, code %lld", d, P,
                      r, (long long)taylor_feature_count(d, P));
            cells++;
        }
        rows++;
    }
    fclose(f);
    TH_EQ_INT(rows, 8);
    TH_EQ_INT(cells, 48);
}

static const th_test tests[] = {
    TH_TEST(test_inner_product_of_features_equals_kappa_for_random_d_and_P),
    TH_TEST(test_feature_count_matches_the_spec_table),
    TH_TEST(test_feature_count_equals_the_number_of_features_generated),
    TH_TEST(test_features_are_ordered_by_degree_then_lexicographically),
    TH_TEST(test_each_feature_is_the_weighted_monomial_of_the_spec),
    TH_TEST(test_float_features_agree_with_double_features),
    TH_TEST(test_a_feature_count_past_the_limit_is_refused_with_a_message),
    TH_TEST(test_the_feature_count_table_of_docs_math_is_current),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }
