/*
 * vec.c -- the row kernels of the cpu backend, written once with GCC vector
 * types (16 floats) and compiled three times: for AVX-512, for AVX2+FMA and
 * for plain x86-64 (or whatever the target is). The widest one the processor
 * supports is chosen at run time, so the build needs no -march flag.
 *
 * exp2 for x <= 0: x = n + f with n = round(x), f in [-1/2, 1/2];
 * 2^f = sum_{k<=7} (f ln2)^k / k! (truncation error < 6e-9 relative, so the
 * float rounding, ~6e-8, dominates); 2^n is put into the exponent bits.
 * x < -126 (and -inf, NaN) gives 0: those weights are below float's normal
 * range and are exactly what a masked or out-of-window key must get.
 */
#include "cpu.h"

#include <math.h>
#include <string.h>

/* The vector helpers below are static and always inlined, so no vector ever
 * crosses a call boundary and the ABI note GCC gives for them is moot. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));

#define VL 16

static inline __attribute__((always_inline)) v16f vload(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) void vstore(float *p, v16f v) { memcpy(p, &v, sizeof v); }
static inline __attribute__((always_inline)) v16f vsplat(float x) {
    v16f v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
    return v;
}
static inline __attribute__((always_inline)) v16f vselect(v16i mask, v16f a, v16f b) {
    return (v16f)(((v16i)a & mask) | ((v16i)b & ~mask));
}
static inline __attribute__((always_inline)) v16f vmax(v16f a, v16f b) { return vselect(a > b, a, b); }

static inline __attribute__((always_inline)) v16f vexp2_neg(v16f x) {
    v16i ok = x >= vsplat(-126.0f);
    x = vselect(ok, x, vsplat(0.0f));
    const v16f magic = vsplat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    v16f r = (x + magic) - magic;
    v16f f = x - r;
    v16f p = vsplat(1.525273380405984e-05f);
    p = p * f + vsplat(1.5403530393381606e-04f);
    p = p * f + vsplat(1.3333558146428443e-03f);
    p = p * f + vsplat(9.618129107628477e-03f);
    p = p * f + vsplat(5.550410866482158e-02f);
    p = p * f + vsplat(2.402265069591007e-01f);
    p = p * f + vsplat(6.931471805599453e-01f);
    p = p * f + vsplat(1.0f);
    v16i n = __builtin_convertvector(r, v16i);
    v16i bits = (n + 127) << 23;
    v16f y = p * (v16f)bits;
    return (v16f)((v16i)y & ok);
}

/* Loads n < 16 floats, filling the rest with `fill`. */
static inline __attribute__((always_inline)) v16f vload_part(const float *p, int64_t n, float fill) {
    float t[VL];
    for (int i = 0; i < VL; i++) t[i] = i < n ? p[i] : fill;
    return vload(t);
}

static inline __attribute__((always_inline)) float hmax(v16f v) {
    float m = v[0];
    for (int i = 1; i < VL; i++) m = v[i] > m ? v[i] : m;
    return m;
}
static inline __attribute__((always_inline)) double hsum(v16f v) {
    double s = 0;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

/* ---- bodies ---- */

#define BODY_MAX                                                        \
    {                                                                   \
        if (n <= 0) return -INFINITY;                                   \
        v16f m = vsplat(-INFINITY);                                     \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) m = vmax(m, vload(x + i));         \
        if (i < n) m = vmax(m, vload_part(x + i, n - i, -INFINITY));    \
        return hmax(m);                                                 \
    }

#define BODY_EXP2_SHIFT_SUM                                             \
    {                                                                   \
        v16f mv = vsplat(m), acc = vsplat(0.0f);                        \
        double total = 0;                                               \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) {                                  \
            v16f e = vexp2_neg(vload(x + i) - mv);                      \
            vstore(x + i, e);                                           \
            acc += e;                                                   \
            if (((i / VL) & 63) == 63) {                                \
                total += hsum(acc);                                     \
                acc = vsplat(0.0f);                                     \
            }                                                           \
        }                                                               \
        if (i < n) {                                                    \
            v16f e = vexp2_neg(vload_part(x + i, n - i, -INFINITY) - mv); \
            for (int64_t k = 0; k < n - i; k++) x[i + k] = e[k];        \
            acc += e;                                                   \
        }                                                               \
        return total + hsum(acc);                                       \
    }

#define BODY_SCALE                                                      \
    {                                                                   \
        v16f av = vsplat(a);                                            \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) vstore(y + i, vload(y + i) * av);  \
        for (; i < n; i++) y[i] *= a;                                   \
    }

#define BODY_MUL3                                                       \
    {                                                                   \
        v16f cv = vsplat(c);                                            \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) vstore(y + i, vload(a + i) * vload(b + i) * cv); \
        for (; i < n; i++) y[i] = a[i] * b[i] * c;                      \
    }

#define BODY_ADD                                                        \
    {                                                                   \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) vstore(y + i, vload(y + i) + vload(x + i)); \
        for (; i < n; i++) y[i] += x[i];                                \
    }

#define BODY_AXPBY                                                      \
    {                                                                   \
        v16f av = vsplat(a), bv = vsplat(b);                            \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) vstore(y + i, av * vload(y + i) + bv * vload(x + i)); \
        for (; i < n; i++) y[i] = a * y[i] + b * x[i];                  \
    }

#define BODY_SUM                                                        \
    {                                                                   \
        v16f acc = vsplat(0.0f);                                        \
        double total = 0;                                               \
        int64_t i = 0;                                                  \
        for (; i + VL <= n; i += VL) {                                  \
            acc += vload(x + i);                                        \
            if (((i / VL) & 63) == 63) {                                \
                total += hsum(acc);                                     \
                acc = vsplat(0.0f);                                     \
            }                                                           \
        }                                                               \
        for (; i < n; i++) total += x[i];                               \
        return total + hsum(acc);                                       \
    }

/* kappa_P(y) = 1 + y (1 + y/2 (1 + y/3 (...))), Horner from the top degree */
#define BODY_KAPPA                                                      \
    {                                                                   \
        v16f sv = vsplat(s), one = vsplat(1.0f);                        \
        float inv[16];                                                  \
        int top = terms - 1 < 15 ? terms - 1 : 15;                      \
        for (int p = 1; p <= top; p++) inv[p] = 1.0f / (float)p;        \
        int64_t i = 0;                                                  \
        for (; top == terms - 1 && i + VL <= n; i += VL) {              \
            v16f y = vload(x + i) * sv, acc = one;                      \
            for (int p = top; p >= 1; p--) acc = one + y * acc * vsplat(inv[p]); \
            vstore(x + i, acc);                                         \
        }                                                               \
        for (; i < n; i++) {                                            \
            float y = x[i] * s, acc = 1.0f;                             \
            for (int p = terms - 1; p >= 1; p--) acc = 1.0f + y * acc * (1.0f / (float)p); \
            x[i] = acc;                                                 \
        }                                                               \
    }

#define BODY_WINDOW_MASK                                                \
    {                                                                   \
        typedef int v16i_ __attribute__((vector_size(64)));             \
        v16i_ qyv = {0}, qxv = {0}, rv = {0};                           \
        for (int l = 0; l < VL; l++) qyv[l] = qy, qxv[l] = qx, rv[l] = rad; \
        v16f ninf = vsplat(-INFINITY), zero = vsplat(0.0f);             \
        int64_t inside = 0, i = 0;                                      \
        for (; i + VL <= n; i += VL) {                                  \
            v16i_ a, c;                                                 \
            memcpy(&a, cy + i, sizeof a);                               \
            memcpy(&c, cx + i, sizeof c);                               \
            v16i_ dy = a - qyv, dx = c - qxv;                           \
            v16i_ in = (dy <= rv) & (dy >= -rv) & (dx <= rv) & (dx >= -rv); \
            vstore(srow + i, vselect(in, vload(srow + i), ninf));       \
            if (krow) vstore(krow + i, vselect(in, vload(krow + i), zero)); \
            for (int l = 0; l < VL; l++) inside -= in[l];               \
        }                                                               \
        for (; i < n; i++) {                                            \
            int dy = cy[i] - qy, dx = cx[i] - qx;                       \
            if (dy <= rad && dy >= -rad && dx <= rad && dx >= -rad) {   \
                inside++;                                               \
            } else {                                                    \
                srow[i] = -INFINITY;                                    \
                if (krow) krow[i] = 0.0f;                               \
            }                                                           \
        }                                                               \
        return inside;                                                  \
    }

/* Φ rows 1..R-1 from their parents (features.c): the first cols (a multiple
 * of 16) columns of rows of stride ld. */
#define BODY_FEATURE_ROWS                                               \
    {                                                                   \
        for (int r = 1; r < R; r++) {                                   \
            float *y = phi + (size_t)r * ld;                            \
            const float *a = phi + (size_t)parent[r] * ld;              \
            const float *b = x + (size_t)last[r] * ld;                  \
            v16f cv = vsplat(ratio[r]);                                 \
            for (int i = 0; i < cols; i += VL) vstore(y + i, vload(a + i) * vload(b + i) * cv); \
        }                                                               \
    }

#define VARIANT(suffix, attr)                                                                      \
    attr static float max_##suffix(const float *x, int64_t n) BODY_MAX                              \
    attr static double exp2_shift_sum_##suffix(float *x, int64_t n, float m) BODY_EXP2_SHIFT_SUM    \
    attr static void scale_##suffix(float *y, int64_t n, float a) BODY_SCALE                        \
    attr static void mul3_##suffix(float *y, const float *a, const float *b, float c, int64_t n)    \
        BODY_MUL3                                                                                  \
    attr static void add_##suffix(float *y, const float *x, int64_t n) BODY_ADD                      \
    attr static void axpby_##suffix(float *y, float a, const float *x, float b, int64_t n) BODY_AXPBY \
    attr static double sum_##suffix(const float *x, int64_t n) BODY_SUM                             \
    attr static void kappa_##suffix(float *x, int64_t n, float s, int terms) BODY_KAPPA             \
    attr static int64_t window_mask_##suffix(float *srow, float *krow, const int32_t *cy,          \
                                             const int32_t *cx, int64_t n, int qy, int qx, int rad) \
        BODY_WINDOW_MASK                                                                           \
    attr static void feature_rows_##suffix(float *phi, int ld, int cols, const int32_t *parent,   \
                                           const uint16_t *last, const float *ratio, int R,       \
                                           const float *x) BODY_FEATURE_ROWS

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_VARIANTS 1
VARIANT(avx512, __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))))
VARIANT(avx2, __attribute__((target("avx2,fma"))))
#endif
VARIANT(generic, )

enum { LEVEL_GENERIC = 0, LEVEL_AVX2 = 1, LEVEL_AVX512 = 2 };

static int cpu_level(void) {
#ifdef HAVE_X86_VARIANTS
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        return LEVEL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return LEVEL_AVX2;
#endif
    return LEVEL_GENERIC;
}

static int level_cached = -1;

static int level(void) {
    /* benign: every thread computes the same value */
    int l = __atomic_load_n(&level_cached, __ATOMIC_RELAXED);
    if (l < 0) {
        l = cpu_level();
        __atomic_store_n(&level_cached, l, __ATOMIC_RELAXED);
    }
    return l;
}

int tkcpu_vec_set_isa(const char *name) {
    int want = !strcmp(name, "generic") ? LEVEL_GENERIC
               : !strcmp(name, "avx2")  ? LEVEL_AVX2
               : !strcmp(name, "avx512") ? LEVEL_AVX512
                                         : -1;
    if (want < 0 || want > cpu_level()) return -1;
    __atomic_store_n(&level_cached, want, __ATOMIC_RELAXED);
    return 0;
}

const char *tkcpu_vec_isa(void) {
    static const char *const names[] = {"generic", "avx2", "avx512"};
    return names[level()];
}

#ifdef HAVE_X86_VARIANTS
#define PICK(name) (level() == LEVEL_AVX512 ? name##_avx512 : level() == LEVEL_AVX2 ? name##_avx2 : name##_generic)
#else
#define PICK(name) name##_generic
#endif

float tkcpu_max(const float *x, int64_t n) { return PICK(max)(x, n); }
double tkcpu_exp2_shift_sum(float *x, int64_t n, float m) { return PICK(exp2_shift_sum)(x, n, m); }
void tkcpu_scale(float *y, int64_t n, float a) { PICK(scale)(y, n, a); }
void tkcpu_mul3(float *y, const float *a, const float *b, float c, int64_t n) { PICK(mul3)(y, a, b, c, n); }
void tkcpu_add(float *y, const float *x, int64_t n) { PICK(add)(y, x, n); }
void tkcpu_axpby(float *y, float a, const float *x, float b, int64_t n) { PICK(axpby)(y, a, x, b, n); }
double tkcpu_sum(const float *x, int64_t n) { return PICK(sum)(x, n); }
void tkcpu_kappa(float *x, int64_t n, float s, int terms) { PICK(kappa)(x, n, s, terms); }
void tkcpu_feature_rows(float *phi, int ld, int cols, const int32_t *parent, const uint16_t *last,
                        const float *ratio, int R, const float *x) {
    PICK(feature_rows)(phi, ld, cols, parent, last, ratio, R, x);
}
int64_t tkcpu_window_mask(float *srow, float *krow, const int32_t *cy, const int32_t *cx, int64_t n,
                          int qy, int qx, int rad) {
    return PICK(window_mask)(srow, krow, cy, cx, n, qy, qx, rad);
}

float tkcpu_exp2_neg(float x) {
    float t[VL] = {x};
    v16f e = vexp2_neg(vload(t));
    return e[0];
}
