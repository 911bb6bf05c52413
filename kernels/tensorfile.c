/*
 * tensorfile.c -- .npy and .safetensors reading and writing; the formats are
 * described at the top of tensorfile.h. Both parsers are hand-written and
 * bounded: every length read from a file is checked against the file's size
 * before it is used, the JSON parser limits nesting depth, and every shape
 * product is checked for overflow and against the bytes present.
 */
#include "tensorfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    NPY_HEADER_MAX = 1 << 24,          /* refuse absurd npy header lengths (16 MiB) */
    ST_HEADER_MAX = 100 * 1000 * 1000, /* safetensors' own limit on the JSON header */
    JSON_DEPTH_MAX = 32,
    CHUNK_ELEMS = 1 << 18,             /* conversion chunk (elements) */
};

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

static int fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, const char *path, const char *fmt, ...) {
    if (!err || errlen == 0) return TK_ERR;
    int n = snprintf(err, errlen, "%s: ", path ? path : "(null)");
    if (n < 0) n = 0;
    if ((size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return TK_ERR;
}

/* ------------------------------------------------------------------ */
/* Conversions                                                         */
/* ------------------------------------------------------------------ */

uint16_t tkf_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* a carry may reach Inf: correct */
    return (uint16_t)h;
}

float tkf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        float f = (float)mant * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    if (exp == 31)
        x = sign | 0x7f800000u | (mant << 13);
    else
        x = sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t tkf_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu)) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float tkf_bf16_to_f32(uint16_t b) {
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t load_u16(const unsigned char *p, int big) {
    return big ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[1] << 8 | p[0]);
}
static uint32_t load_u32(const unsigned char *p, int big) {
    return big ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
               : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static uint64_t load_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static void store_u16_le(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void store_u32_le(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------------ */
/* Shapes                                                              */
/* ------------------------------------------------------------------ */

tkf_format tkf_format_of(const char *path) {
    if (!path) return TKF_FORMAT_UNKNOWN;
    size_t n = strlen(path);
    if (n >= 4 && strcmp(path + n - 4, ".npy") == 0) return TKF_FORMAT_NPY;
    if (n >= 12 && strcmp(path + n - 12, ".safetensors") == 0) return TKF_FORMAT_SAFETENSORS;
    return TKF_FORMAT_UNKNOWN;
}

/* Product of a shape with overflow detection. 0 ok, -1 overflow. */
static int shape_product(int ndim, const int64_t *shape, int64_t *out) {
    int64_t p = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && p > INT64_MAX / shape[i]) return -1;
        p *= shape[i];
    }
    *out = p;
    return 0;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t off = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
}

void tkf_free(tkf_tensor *t) {
    if (!t) return;
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------ */
/* File access                                                         */
/* ------------------------------------------------------------------ */

typedef struct {
    FILE *f;
    const char *path;
    uint64_t size;
} rfile;

static int rfile_open(rfile *r, const char *path, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->f = fopen(path, "rb");
    if (!r->f) return fail(err, errlen, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(r->f), &st) != 0) {
        int e = errno;
        fclose(r->f);
        r->f = NULL;
        return fail(err, errlen, path, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        fclose(r->f);
        r->f = NULL;
        return fail(err, errlen, path, "not a regular file");
    }
    r->size = (uint64_t)st.st_size;
    return 0;
}

static void rfile_close(rfile *r) {
    if (r->f) fclose(r->f);
    r->f = NULL;
}

static int rfile_read(rfile *r, uint64_t off, void *buf, size_t n, const char *what, char *err,
                      size_t errlen) {
    if (off > r->size || n > r->size - off)
        return fail(err, errlen, r->path, "truncated: %s needs %zu bytes at offset %llu, file is %llu bytes",
                    what, n, (unsigned long long)off, (unsigned long long)r->size);
    if (off > (uint64_t)INT64_MAX || fseeko(r->f, (off_t)off, SEEK_SET) != 0)
        return fail(err, errlen, r->path, "cannot seek to %s: %s", what, strerror(errno));
    if (n && fread(buf, 1, n, r->f) != n)
        return fail(err, errlen, r->path, "cannot read %s: %s", what,
                    ferror(r->f) ? strerror(errno) : "unexpected end of file");
    return 0;
}

/* Reads count elements of dtype at off into out (f32), with byte order. */
static int read_elements(rfile *r, uint64_t off, int64_t count, tk_dtype dtype, int big_endian,
                         float *out, char *err, size_t errlen) {
    size_t es = tk_dtype_size(dtype);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (dtype == TK_DTYPE_F32 && !big_endian) /* the file's bytes are already our floats */
        return rfile_read(r, off, out, (size_t)count * 4, "tensor data", err, errlen);
#endif
    unsigned char *chunk = malloc((size_t)CHUNK_ELEMS * es);
    if (!chunk) return fail(err, errlen, r->path, "out of memory");
    int64_t done = 0;
    while (done < count) {
        size_t n = (size_t)((count - done) < CHUNK_ELEMS ? (count - done) : CHUNK_ELEMS);
        if (rfile_read(r, off + (uint64_t)done * es, chunk, n * es, "tensor data", err, errlen)) {
            free(chunk);
            return TK_ERR;
        }
        float *o = out + done;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *p = chunk + i * es;
            switch (dtype) {
            case TK_DTYPE_F32: {
                uint32_t x = load_u32(p, big_endian);
                memcpy(&o[i], &x, 4);
                break;
            }
            case TK_DTYPE_F16: o[i] = tkf_f16_to_f32(load_u16(p, big_endian)); break;
            case TK_DTYPE_BF16: o[i] = tkf_bf16_to_f32(load_u16(p, big_endian)); break;
            }
        }
        done += (int64_t)n;
    }
    free(chunk);
    return 0;
}

static int alloc_data(tkf_tensor *t, const char *path, char *err, size_t errlen) {
    if ((uint64_t)t->count > SIZE_MAX / sizeof(float))
        return fail(err, errlen, path, "shape needs more memory than can be addressed");
    t->data = malloc((size_t)(t->count ? t->count : 1) * sizeof(float));
    if (!t->data)
        return fail(err, errlen, path, "out of memory allocating %lld floats", (long long)t->count);
    return 0;
}

/* ------------------------------------------------------------------ */
/* .npy header (a Python dict literal)                                 */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *s;
    size_t n, pos;
} cursor;

static void skip_ws(cursor *c) {
    while (c->pos < c->n && (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n' ||
                             c->s[c->pos] == '\r'))
        c->pos++;
}

static int peek(cursor *c) { return c->pos < c->n ? (unsigned char)c->s[c->pos] : -1; }

/* Python string literal in ' or " (no escapes needed for npy keys and descrs). */
static int py_string(cursor *c, char *buf, size_t len) {
    int q = peek(c);
    if (q != '\'' && q != '"') return -1;
    c->pos++;
    size_t k = 0;
    while (c->pos < c->n && c->s[c->pos] != q) {
        if (c->s[c->pos] == '\\' || k + 1 >= len) return -1;
        buf[k++] = c->s[c->pos++];
    }
    if (c->pos >= c->n) return -1;
    c->pos++;
    buf[k] = '\0';
    return 0;
}

static int starts(cursor *c, const char *word) {
    size_t n = strlen(word);
    if (c->n - c->pos < n || memcmp(c->s + c->pos, word, n) != 0) return 0;
    c->pos += n;
    return 1;
}

/* A non-negative decimal integer (optional trailing L). 0 ok, -1 not an integer, -2 overflow. */
static int py_int(cursor *c, int64_t *out) {
    int64_t v = 0;
    size_t start = c->pos;
    while (c->pos < c->n && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
        int d = c->s[c->pos] - '0';
        if (v > (INT64_MAX - d) / 10) return -2;
        v = v * 10 + d;
        c->pos++;
    }
    if (c->pos == start) return -1;
    if (peek(c) == 'L') c->pos++;
    *out = v;
    return 0;
}

static int npy_parse_header(const char *path, const char *hdr, size_t len, tkf_tensor *t,
                            int *big_endian, char *err, size_t errlen) {
    cursor c = {hdr, len, 0};
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0;
    char key[64], descr[64];
    skip_ws(&c);
    if (peek(&c) != '{') return fail(err, errlen, path, "npy header is not a dict (expected '{')");
    c.pos++;
    for (;;) {
        skip_ws(&c);
        if (peek(&c) == '}') {
            c.pos++;
            break;
        }
        if (py_string(&c, key, sizeof key))
            return fail(err, errlen, path, "npy header: expected a quoted key at byte %zu", c.pos);
        skip_ws(&c);
        if (peek(&c) != ':') return fail(err, errlen, path, "npy header: expected ':' after '%s'", key);
        c.pos++;
        skip_ws(&c);
        if (strcmp(key, "descr") == 0) {
            if (have_descr++) return fail(err, errlen, path, "npy header: duplicate key 'descr'");
            if (py_string(&c, descr, sizeof descr))
                return fail(err, errlen, path, "npy header: 'descr' is not a dtype string");
        } else if (strcmp(key, "fortran_order") == 0) {
            if (have_fortran++) return fail(err, errlen, path, "npy header: duplicate key 'fortran_order'");
            if (starts(&c, "True"))
                fortran = 1;
            else if (starts(&c, "False"))
                fortran = 0;
            else
                return fail(err, errlen, path, "npy header: 'fortran_order' is not True or False");
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++) return fail(err, errlen, path, "npy header: duplicate key 'shape'");
            if (peek(&c) != '(') return fail(err, errlen, path, "npy header: 'shape' is not a tuple");
            c.pos++;
            t->ndim = 0;
            for (;;) {
                skip_ws(&c);
                if (peek(&c) == ')') {
                    c.pos++;
                    break;
                }
                if (t->ndim >= TKF_MAX_DIMS)
                    return fail(err, errlen, path, "shape has more than %d dimensions", TKF_MAX_DIMS);
                int64_t d;
                int rc = py_int(&c, &d);
                if (rc == -2) return fail(err, errlen, path, "shape entry %d is too large", t->ndim);
                if (rc)
                    return fail(err, errlen, path,
                                "shape entry %d is not a non-negative integer (at byte %zu of the header)",
                                t->ndim, c.pos);
                t->shape[t->ndim++] = d;
                skip_ws(&c);
                if (peek(&c) == ',') {
                    c.pos++;
                    continue;
                }
                if (peek(&c) != ')') return fail(err, errlen, path, "npy header: malformed 'shape' tuple");
            }
        } else {
            return fail(err, errlen, path, "npy header: unexpected key '%s'", key);
        }
        skip_ws(&c);
        if (peek(&c) == ',') {
            c.pos++;
            continue;
        }
        if (peek(&c) == '}') {
            c.pos++;
            break;
        }
        return fail(err, errlen, path, "npy header: expected ',' or '}' at byte %zu", c.pos);
    }
    skip_ws(&c);
    if (c.pos != c.n) return fail(err, errlen, path, "npy header: trailing bytes after the dict");
    if (!have_descr || !have_fortran || !have_shape)
        return fail(err, errlen, path, "npy header: missing key '%s'",
                    !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    if (fortran)
        return fail(err, errlen, path, "fortran_order=True is not supported (write the array in C order)");
    char order = descr[0];
    const char *kind = descr + 1;
    if (order != '<' && order != '>' && order != '=' && order != '|') kind = descr, order = '=';
    if (strcmp(kind, "f4") == 0)
        t->file_dtype = TK_DTYPE_F32;
    else if (strcmp(kind, "f2") == 0)
        t->file_dtype = TK_DTYPE_F16;
    else
        return fail(err, errlen, path, "dtype '%s' is not supported (float32 '<f4' or float16 '<f2')", descr);
    if (order == '|')
        return fail(err, errlen, path, "dtype '%s' has no byte order", descr);
    *big_endian = order == '>';
    if (shape_product(t->ndim, t->shape, &t->count))
        return fail(err, errlen, path, "shape product overflows");
    return 0;
}

static int npy_read(const char *path, tkf_tensor *out, char *err, size_t errlen) {
    rfile r;
    if (rfile_open(&r, path, err, errlen)) return TK_ERR;
    unsigned char pre[12];
    int rc = TK_ERR;
    char *hdr = NULL;
    if (r.size < 10) {
        fail(err, errlen, path, "truncated: %llu bytes is too short for an npy file", (unsigned long long)r.size);
        goto done;
    }
    if (rfile_read(&r, 0, pre, 10, "npy preamble", err, errlen)) goto done;
    if (memcmp(pre, "\x93NUMPY", 6) != 0) {
        fail(err, errlen, path, "bad magic: not an npy file");
        goto done;
    }
    int major = pre[6];
    uint64_t hlen, hstart;
    if (major == 1) {
        hlen = load_u16(pre + 8, 0);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (rfile_read(&r, 0, pre, 12, "npy preamble", err, errlen)) goto done;
        hlen = load_u32(pre + 8, 0);
        hstart = 12;
    } else {
        fail(err, errlen, path, "npy version %d.%d is not supported (1.0, 2.0, 3.0)", major, pre[7]);
        goto done;
    }
    if (hlen > r.size - hstart) {
        fail(err, errlen, path, "header length %llu runs past the end of the file (%llu bytes)",
             (unsigned long long)hlen, (unsigned long long)r.size);
        goto done;
    }
    if (hlen > NPY_HEADER_MAX) {
        fail(err, errlen, path, "header length %llu is implausibly large", (unsigned long long)hlen);
        goto done;
    }
    hdr = malloc((size_t)hlen + 1);
    if (!hdr) {
        fail(err, errlen, path, "out of memory");
        goto done;
    }
    if (rfile_read(&r, hstart, hdr, (size_t)hlen, "npy header", err, errlen)) goto done;
    hdr[hlen] = '\0';
    if (memchr(hdr, '\0', (size_t)hlen)) {
        fail(err, errlen, path, "npy header contains a NUL byte");
        goto done;
    }
    int big = 0;
    tkf_tensor t;
    memset(&t, 0, sizeof t);
    if (npy_parse_header(path, hdr, (size_t)hlen, &t, &big, err, errlen)) goto done;
    uint64_t data_off = hstart + hlen;
    uint64_t have = r.size - data_off;
    size_t es = tk_dtype_size(t.file_dtype);
    if ((uint64_t)t.count > UINT64_MAX / es || (uint64_t)t.count * es != have) {
        char sh[160];
        shape_text(t.ndim, t.shape, sh, sizeof sh);
        fail(err, errlen, path, "shape %s of %s needs %llu data bytes, file has %llu", sh,
             tk_dtype_name(t.file_dtype), (unsigned long long)((uint64_t)t.count * es),
             (unsigned long long)have);
        goto done;
    }
    if (alloc_data(&t, path, err, errlen)) goto done;
    if (read_elements(&r, data_off, t.count, t.file_dtype, big, t.data, err, errlen)) {
        tkf_free(&t);
        goto done;
    }
    *out = t;
    rc = 0;
done:
    free(hdr);
    rfile_close(&r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* A small JSON parser (for the safetensors header)                    */
/* ------------------------------------------------------------------ */

typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct {
    jtype type;
    int next;        /* next sibling (-1 none); in an object keys and values alternate */
    int first;       /* first child (arrays, objects), -1 none */
    int count;       /* children (objects: members, i.e. pairs) */
    size_t str, len; /* J_STR: decoded text at sbuf+str; J_NUM: raw text at src+str */
} jnode;

typedef struct {
    const char *src;
    size_t n, pos;
    jnode *nodes;
    int count, cap;
    char *sbuf;
    size_t slen;
    const char *why;
} jparser;

static int jnew(jparser *p, jtype t) {
    if (p->count == p->cap) {
        int cap = p->cap ? p->cap * 2 : 64;
        jnode *n = realloc(p->nodes, (size_t)cap * sizeof *n);
        if (!n) {
            p->why = "out of memory";
            return -1;
        }
        p->nodes = n;
        p->cap = cap;
    }
    jnode *n = &p->nodes[p->count];
    memset(n, 0, sizeof *n);
    n->type = t;
    n->next = n->first = -1;
    return p->count++;
}

static void jws(jparser *p) {
    while (p->pos < p->n && (p->src[p->pos] == ' ' || p->src[p->pos] == '\t' ||
                             p->src[p->pos] == '\n' || p->src[p->pos] == '\r'))
        p->pos++;
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int jhex4(jparser *p, unsigned *out) {
    if (p->n - p->pos < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)p->src[p->pos + (size_t)i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static void jput(jparser *p, unsigned char ch) { p->sbuf[p->slen++] = (char)ch; }

/* Decoded strings never grow past their source, so sbuf (n+1 bytes) suffices. */
static int jstring(jparser *p) {
    int id = jnew(p, J_STR);
    if (id < 0) return -1;
    p->pos++; /* opening quote */
    size_t start = p->slen;
    for (;;) {
        if (p->pos >= p->n) {
            p->why = "unterminated string";
            return -1;
        }
        unsigned char ch = (unsigned char)p->src[p->pos++];
        if (ch == '"') break;
        if (ch < 0x20) {
            p->why = "control character in a string";
            return -1;
        }
        if (ch != '\\') {
            jput(p, ch);
            continue;
        }
        if (p->pos >= p->n) {
            p->why = "unterminated escape";
            return -1;
        }
        ch = (unsigned char)p->src[p->pos++];
        switch (ch) {
        case '"': case '\\': case '/': jput(p, ch); break;
        case 'b': jput(p, '\b'); break;
        case 'f': jput(p, '\f'); break;
        case 'n': jput(p, '\n'); break;
        case 'r': jput(p, '\r'); break;
        case 't': jput(p, '\t'); break;
        case 'u': {
            unsigned cp;
            if (jhex4(p, &cp)) {
                p->why = "bad \\u escape";
                return -1;
            }
            if (cp >= 0xd800 && cp < 0xdc00) {
                unsigned lo;
                if (p->n - p->pos < 6 || p->src[p->pos] != '\\' || p->src[p->pos + 1] != 'u') {
                    p->why = "unpaired surrogate";
                    return -1;
                }
                p->pos += 2;
                if (jhex4(p, &lo) || lo < 0xdc00 || lo >= 0xe000) {
                    p->why = "unpaired surrogate";
                    return -1;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                p->why = "unpaired surrogate";
                return -1;
            }
            if (cp == 0) {
                p->why = "NUL in a string";
                return -1;
            }
            if (cp < 0x80) {
                jput(p, (unsigned char)cp);
            } else if (cp < 0x800) {
                jput(p, (unsigned char)(0xc0 | cp >> 6));
                jput(p, (unsigned char)(0x80 | (cp & 0x3f)));
            } else if (cp < 0x10000) {
                jput(p, (unsigned char)(0xe0 | cp >> 12));
                jput(p, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
                jput(p, (unsigned char)(0x80 | (cp & 0x3f)));
            } else {
                jput(p, (unsigned char)(0xf0 | cp >> 18));
                jput(p, (unsigned char)(0x80 | ((cp >> 12) & 0x3f)));
                jput(p, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
                jput(p, (unsigned char)(0x80 | (cp & 0x3f)));
            }
            break;
        }
        default: p->why = "bad escape"; return -1;
        }
    }
    p->nodes[id].str = start;
    p->nodes[id].len = p->slen - start;
    jput(p, '\0');
    return id;
}

static int jvalue(jparser *p, int depth);

static int jcontainer(jparser *p, int depth, int is_obj) {
    int id = jnew(p, is_obj ? J_OBJ : J_ARR);
    if (id < 0) return -1;
    char close = is_obj ? '}' : ']';
    p->pos++;
    jws(p);
    int last = -1;
    if (p->pos < p->n && p->src[p->pos] == close) {
        p->pos++;
        return id;
    }
    for (;;) {
        jws(p);
        int child;
        if (is_obj) {
            if (p->pos >= p->n || p->src[p->pos] != '"') {
                p->why = "expected a string key";
                return -1;
            }
            int key = jstring(p);
            if (key < 0) return -1;
            jws(p);
            if (p->pos >= p->n || p->src[p->pos] != ':') {
                p->why = "expected ':'";
                return -1;
            }
            p->pos++;
            int val = jvalue(p, depth + 1);
            if (val < 0) return -1;
            p->nodes[key].next = val;
            child = key;
            if (last < 0)
                p->nodes[id].first = key;
            else
                p->nodes[last].next = key;
            last = val;
        } else {
            child = jvalue(p, depth + 1);
            if (child < 0) return -1;
            if (last < 0)
                p->nodes[id].first = child;
            else
                p->nodes[last].next = child;
            last = child;
        }
        p->nodes[id].count++;
        jws(p);
        if (p->pos >= p->n) {
            p->why = is_obj ? "unterminated object" : "unterminated array";
            return -1;
        }
        char ch = p->src[p->pos++];
        if (ch == ',') continue;
        if (ch == close) return id;
        p->why = is_obj ? "expected ',' or '}'" : "expected ',' or ']'";
        return -1;
    }
}

static int jvalue(jparser *p, int depth) {
    if (depth > JSON_DEPTH_MAX) {
        p->why = "nested too deeply";
        return -1;
    }
    jws(p);
    if (p->pos >= p->n) {
        p->why = "unexpected end";
        return -1;
    }
    char ch = p->src[p->pos];
    if (ch == '{') return jcontainer(p, depth, 1);
    if (ch == '[') return jcontainer(p, depth, 0);
    if (ch == '"') return jstring(p);
    static const struct { const char *word; jtype t; } words[] = {
        {"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if (p->n - p->pos >= n && memcmp(p->src + p->pos, words[i].word, n) == 0) {
            p->pos += n;
            return jnew(p, words[i].t);
        }
    }
    /* number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
    size_t s = p->pos;
    if (p->pos < p->n && p->src[p->pos] == '-') p->pos++;
    size_t digits = p->pos;
    while (p->pos < p->n && p->src[p->pos] >= '0' && p->src[p->pos] <= '9') p->pos++;
    if (p->pos == digits || (p->src[digits] == '0' && p->pos - digits > 1)) {
        p->why = "invalid value";
        p->pos = s;
        return -1;
    }
    if (p->pos < p->n && p->src[p->pos] == '.') {
        size_t f = ++p->pos;
        while (p->pos < p->n && p->src[p->pos] >= '0' && p->src[p->pos] <= '9') p->pos++;
        if (p->pos == f) {
            p->why = "invalid number";
            return -1;
        }
    }
    if (p->pos < p->n && (p->src[p->pos] == 'e' || p->src[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->n && (p->src[p->pos] == '+' || p->src[p->pos] == '-')) p->pos++;
        size_t e = p->pos;
        while (p->pos < p->n && p->src[p->pos] >= '0' && p->src[p->pos] <= '9') p->pos++;
        if (p->pos == e) {
            p->why = "invalid number";
            return -1;
        }
    }
    int id = jnew(p, J_NUM);
    if (id < 0) return -1;
    p->nodes[id].str = s;
    p->nodes[id].len = p->pos - s;
    return id;
}

static const char *jstr(const jparser *p, int id) { return p->sbuf + p->nodes[id].str; }

/* A JSON number that is a non-negative integer fitting int64. */
static int jint(const jparser *p, int id, int64_t *out) {
    const jnode *n = &p->nodes[id];
    if (n->type != J_NUM) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n->len; i++) {
        char ch = p->src[n->str + i];
        if (ch < '0' || ch > '9') return -1;
        if (v > (INT64_MAX - (ch - '0')) / 10) return -1;
        v = v * 10 + (ch - '0');
    }
    *out = v;
    return 0;
}

/* Member of object id named key, or -1. */
static int jget(const jparser *p, int id, const char *key) {
    for (int k = p->nodes[id].first; k >= 0; k = p->nodes[p->nodes[k].next].next)
        if (strcmp(jstr(p, k), key) == 0) return p->nodes[k].next;
    return -1;
}

static void jfree(jparser *p) {
    free(p->nodes);
    free(p->sbuf);
}

/* ------------------------------------------------------------------ */
/* .safetensors                                                        */
/* ------------------------------------------------------------------ */

typedef struct {
    char *name;            /* points into the parser's string buffer */
    int known_dtype;       /* 1 if F32/F16/BF16 */
    tk_dtype dtype;
    int ndim;
    int64_t shape[TKF_MAX_DIMS];
    int64_t count;
    uint64_t begin, end;   /* offsets into the data buffer */
} st_entry;

typedef struct {
    rfile r;
    jparser jp;
    char *hdr;
    uint64_t data_off, data_len;
    st_entry *e;
    int n;
} st_file;

static void st_close(st_file *s) {
    rfile_close(&s->r);
    jfree(&s->jp);
    free(s->hdr);
    free(s->e);
    memset(s, 0, sizeof *s);
}

static int dtype_of_name(const char *s, tk_dtype *d, size_t *size) {
    if (!strcmp(s, "F32")) return *d = TK_DTYPE_F32, *size = 4, 1;
    if (!strcmp(s, "F16")) return *d = TK_DTYPE_F16, *size = 2, 1;
    if (!strcmp(s, "BF16")) return *d = TK_DTYPE_BF16, *size = 2, 1;
    /* sizes of the other safetensors dtypes, for bounds checks only */
    static const struct { const char *n; size_t sz; } other[] = {
        {"F64", 8}, {"I64", 8}, {"U64", 8}, {"I32", 4}, {"U32", 4}, {"I16", 2}, {"U16", 2},
        {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (!strcmp(s, other[i].n)) return *size = other[i].sz, 0;
    *size = 0;
    return 0;
}

static int st_open(st_file *s, const char *path, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (rfile_open(&s->r, path, err, errlen)) return TK_ERR;
    unsigned char pre[8];
    if (s->r.size < 8) {
        fail(err, errlen, path, "truncated: %llu bytes is too short for a safetensors file",
             (unsigned long long)s->r.size);
        goto bad;
    }
    if (rfile_read(&s->r, 0, pre, 8, "header length", err, errlen)) goto bad;
    uint64_t hlen = load_u64_le(pre);
    if (hlen > s->r.size - 8) {
        fail(err, errlen, path, "header length %llu runs past the end of the file (%llu bytes)",
             (unsigned long long)hlen, (unsigned long long)s->r.size);
        goto bad;
    }
    if (hlen > ST_HEADER_MAX) {
        fail(err, errlen, path, "header length %llu exceeds the %d-byte limit", (unsigned long long)hlen,
             ST_HEADER_MAX);
        goto bad;
    }
    if (hlen < 2) {
        fail(err, errlen, path, "header length %llu is too short for a JSON object", (unsigned long long)hlen);
        goto bad;
    }
    s->hdr = malloc((size_t)hlen + 1);
    s->jp.sbuf = malloc((size_t)hlen + 1);
    if (!s->hdr || !s->jp.sbuf) {
        fail(err, errlen, path, "out of memory");
        goto bad;
    }
    if (rfile_read(&s->r, 8, s->hdr, (size_t)hlen, "JSON header", err, errlen)) goto bad;
    s->hdr[hlen] = '\0';
    s->data_off = 8 + hlen;
    s->data_len = s->r.size - s->data_off;
    s->jp.src = s->hdr;
    s->jp.n = (size_t)hlen;
    int root = jvalue(&s->jp, 0);
    if (root >= 0) {
        jws(&s->jp);
        if (s->jp.pos != s->jp.n) {
            s->jp.why = "trailing bytes after the JSON object";
            root = -1;
        }
    }
    if (root < 0) {
        fail(err, errlen, path, "bad JSON header: %s at byte %zu", s->jp.why ? s->jp.why : "error",
             s->jp.pos);
        goto bad;
    }
    const jparser *p = &s->jp;
    if (p->nodes[root].type != J_OBJ) {
        fail(err, errlen, path, "bad header: the JSON is not an object");
        goto bad;
    }
    s->e = calloc((size_t)p->nodes[root].count + 1, sizeof *s->e);
    if (!s->e) {
        fail(err, errlen, path, "out of memory");
        goto bad;
    }
    for (int k = p->nodes[root].first; k >= 0; k = p->nodes[p->nodes[k].next].next) {
        const char *name = jstr(p, k);
        int v = p->nodes[k].next;
        if (!strcmp(name, "__metadata__")) {
            if (p->nodes[v].type != J_OBJ) {
                fail(err, errlen, path, "bad header: __metadata__ is not an object");
                goto bad;
            }
            continue;
        }
        if (p->nodes[k].len == 0) {
            fail(err, errlen, path, "bad header: a tensor has an empty name");
            goto bad;
        }
        for (int i = 0; i < s->n; i++)
            if (!strcmp(s->e[i].name, name)) {
                fail(err, errlen, path, "bad header: tensor '%s' appears twice", name);
                goto bad;
            }
        st_entry *e = &s->e[s->n];
        e->name = (char *)name;
        if (p->nodes[v].type != J_OBJ) {
            fail(err, errlen, path, "tensor '%s': entry is not an object", name);
            goto bad;
        }
        int dt = jget(p, v, "dtype"), sh = jget(p, v, "shape"), of = jget(p, v, "data_offsets");
        if (dt < 0 || sh < 0 || of < 0) {
            fail(err, errlen, path, "tensor '%s': missing '%s'", name,
                 dt < 0 ? "dtype" : sh < 0 ? "shape" : "data_offsets");
            goto bad;
        }
        if (p->nodes[dt].type != J_STR) {
            fail(err, errlen, path, "tensor '%s': dtype is not a string", name);
            goto bad;
        }
        size_t es;
        e->known_dtype = dtype_of_name(jstr(p, dt), &e->dtype, &es);
        if (es == 0) {
            fail(err, errlen, path, "tensor '%s': unknown dtype '%s'", name, jstr(p, dt));
            goto bad;
        }
        if (p->nodes[sh].type != J_ARR) {
            fail(err, errlen, path, "tensor '%s': shape is not an array", name);
            goto bad;
        }
        if (p->nodes[sh].count > TKF_MAX_DIMS) {
            fail(err, errlen, path, "tensor '%s': shape has %d dimensions, at most %d", name,
                 p->nodes[sh].count, TKF_MAX_DIMS);
            goto bad;
        }
        for (int c = p->nodes[sh].first; c >= 0; c = p->nodes[c].next) {
            if (jint(p, c, &e->shape[e->ndim])) {
                fail(err, errlen, path, "tensor '%s': shape entry %d is not a non-negative integer", name,
                     e->ndim);
                goto bad;
            }
            e->ndim++;
        }
        if (shape_product(e->ndim, e->shape, &e->count) || (uint64_t)e->count > UINT64_MAX / es) {
            fail(err, errlen, path, "tensor '%s': shape product overflows", name);
            goto bad;
        }
        int64_t b, en;
        int c0 = p->nodes[of].type == J_ARR && p->nodes[of].count == 2 ? p->nodes[of].first : -1;
        if (c0 < 0 || jint(p, c0, &b) || jint(p, p->nodes[c0].next, &en)) {
            fail(err, errlen, path, "tensor '%s': data_offsets is not [begin, end] of non-negative integers",
                 name);
            goto bad;
        }
        e->begin = (uint64_t)b;
        e->end = (uint64_t)en;
        if (e->begin > e->end || e->end > s->data_len) {
            fail(err, errlen, path, "tensor '%s': data_offsets [%llu, %llu] fall outside the %llu-byte data buffer",
                 name, (unsigned long long)e->begin, (unsigned long long)e->end,
                 (unsigned long long)s->data_len);
            goto bad;
        }
        if (e->end - e->begin != (uint64_t)e->count * es) {
            char t[160];
            shape_text(e->ndim, e->shape, t, sizeof t);
            fail(err, errlen, path, "tensor '%s': shape %s of %s needs %llu bytes, data_offsets give %llu",
                 name, t, jstr(p, dt), (unsigned long long)((uint64_t)e->count * es),
                 (unsigned long long)(e->end - e->begin));
            goto bad;
        }
        s->n++;
    }
    return 0;
bad:
    st_close(s);
    return TK_ERR;
}

static int st_read(const char *path, const char *name, tkf_tensor *out, char *err, size_t errlen) {
    st_file s;
    if (st_open(&s, path, err, errlen)) return TK_ERR;
    st_entry *e = NULL;
    if (name) {
        for (int i = 0; i < s.n; i++)
            if (!strcmp(s.e[i].name, name)) e = &s.e[i];
        if (!e) {
            fail(err, errlen, path, "no tensor named '%s' (the file holds %d tensor%s%s%s)", name, s.n,
                 s.n == 1 ? "" : "s", s.n ? ", e.g. " : "", s.n ? s.e[0].name : "");
            st_close(&s);
            return TK_ERR;
        }
    } else {
        if (s.n != 1) {
            fail(err, errlen, path, "holds %d tensors; name one (FILE.safetensors:NAME)", s.n);
            st_close(&s);
            return TK_ERR;
        }
        e = &s.e[0];
    }
    if (!e->known_dtype) {
        fail(err, errlen, path, "tensor '%s': dtype is not supported (F32, F16 or BF16)", e->name);
        st_close(&s);
        return TK_ERR;
    }
    tkf_tensor t;
    memset(&t, 0, sizeof t);
    t.ndim = e->ndim;
    memcpy(t.shape, e->shape, sizeof t.shape);
    t.count = e->count;
    t.file_dtype = e->dtype;
    if (alloc_data(&t, path, err, errlen) ||
        read_elements(&s.r, s.data_off + e->begin, t.count, t.file_dtype, 0, t.data, err, errlen)) {
        tkf_free(&t);
        st_close(&s);
        return TK_ERR;
    }
    st_close(&s);
    *out = t;
    return 0;
}

int tkf_safetensors_names(const char *path, char ***names_out, int *n_out, char *err, size_t errlen) {
    *names_out = NULL;
    *n_out = 0;
    st_file s;
    if (st_open(&s, path, err, errlen)) return TK_ERR;
    size_t bytes = (size_t)(s.n + 1) * sizeof(char *);
    for (int i = 0; i < s.n; i++) bytes += strlen(s.e[i].name) + 1;
    char **names = malloc(bytes);
    if (!names) {
        st_close(&s);
        return fail(err, errlen, path, "out of memory");
    }
    char *q = (char *)(names + s.n + 1);
    for (int i = 0; i < s.n; i++) {
        size_t n = strlen(s.e[i].name) + 1;
        memcpy(q, s.e[i].name, n);
        names[i] = q;
        q += n;
    }
    names[s.n] = NULL;
    *names_out = names;
    *n_out = s.n;
    st_close(&s);
    return 0;
}

int tkf_read(const char *path, const char *name, tkf_tensor *out, char *err, size_t errlen) {
    if (!out) return fail(err, errlen, path, "no output tensor");
    memset(out, 0, sizeof *out);
    if (!path) return fail(err, errlen, path, "no file name");
    switch (tkf_format_of(path)) {
    case TKF_FORMAT_NPY:
        if (name) return fail(err, errlen, path, "an .npy file holds one unnamed tensor ('%s' asked)", name);
        return npy_read(path, out, err, errlen);
    case TKF_FORMAT_SAFETENSORS: return st_read(path, name, out, err, errlen);
    default: return fail(err, errlen, path, "unknown tensor file extension (use .npy or .safetensors)");
    }
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *path;
    char tmp[4096];
    FILE *f;
} wfile;

static int wfile_open(wfile *w, const char *path, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    w->path = path;
    if ((size_t)snprintf(w->tmp, sizeof w->tmp, "%s.tmp.XXXXXX", path) >= sizeof w->tmp)
        return fail(err, errlen, path, "path too long");
    int fd = mkstemp(w->tmp);
    if (fd < 0) return fail(err, errlen, path, "cannot create a temporary file: %s", strerror(errno));
    (void)fchmod(fd, 0644); /* mkstemp gives 0600; a tensor file is not a secret */
    w->f = fdopen(fd, "wb");
    if (!w->f) {
        int e = errno;
        close(fd);
        unlink(w->tmp);
        return fail(err, errlen, path, "cannot open the temporary file: %s", strerror(e));
    }
    return 0;
}

static int wfile_write(wfile *w, const void *buf, size_t n, char *err, size_t errlen) {
    if (n && fwrite(buf, 1, n, w->f) != n) return fail(err, errlen, w->path, "write failed: %s", strerror(errno));
    return 0;
}

/* ok: commit (flush, sync, rename); !ok: discard. */
static int wfile_finish(wfile *w, int ok, char *err, size_t errlen) {
    int rc = ok ? 0 : TK_ERR;
    if (ok && (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0))
        rc = fail(err, errlen, w->path, "write failed: %s", strerror(errno));
    if (fclose(w->f) != 0 && rc == 0) rc = fail(err, errlen, w->path, "write failed: %s", strerror(errno));
    w->f = NULL;
    if (rc == 0 && rename(w->tmp, w->path) != 0)
        rc = fail(err, errlen, w->path, "cannot rename the temporary file into place: %s", strerror(errno));
    if (rc != 0) unlink(w->tmp);
    return rc;
}

static int write_elements(wfile *w, const float *data, int64_t count, tk_dtype dtype, char *err,
                          size_t errlen) {
    size_t es = tk_dtype_size(dtype);
    unsigned char *chunk = malloc((size_t)CHUNK_ELEMS * es);
    if (!chunk) return fail(err, errlen, w->path, "out of memory");
    for (int64_t done = 0; done < count;) {
        size_t n = (size_t)((count - done) < CHUNK_ELEMS ? (count - done) : CHUNK_ELEMS);
        for (size_t i = 0; i < n; i++) {
            float f = data[done + (int64_t)i];
            unsigned char *p = chunk + i * es;
            if (dtype == TK_DTYPE_F32) {
                uint32_t x;
                memcpy(&x, &f, 4);
                store_u32_le(p, x);
            } else {
                store_u16_le(p, dtype == TK_DTYPE_F16 ? tkf_f32_to_f16(f) : tkf_f32_to_bf16(f));
            }
        }
        if (wfile_write(w, chunk, n * es, err, errlen)) {
            free(chunk);
            return TK_ERR;
        }
        done += (int64_t)n;
    }
    free(chunk);
    return 0;
}

static int check_shape(const char *path, int ndim, const int64_t *shape, int64_t *count, char *err,
                       size_t errlen) {
    if (ndim < 0 || ndim > TKF_MAX_DIMS)
        return fail(err, errlen, path, "%d dimensions: 0 to %d supported", ndim, TKF_MAX_DIMS);
    if (ndim > 0 && !shape) return fail(err, errlen, path, "no shape");
    if (shape_product(ndim, shape, count)) return fail(err, errlen, path, "shape product overflows or is negative");
    return 0;
}

static int npy_write(const char *path, int ndim, const int64_t *shape, const float *data,
                     tk_dtype dtype, char *err, size_t errlen) {
    int64_t count;
    if (check_shape(path, ndim, shape, &count, err, errlen)) return TK_ERR;
    if (dtype == TK_DTYPE_BF16)
        return fail(err, errlen, path, "npy has no bfloat16; write f32 or f16, or use .safetensors");
    char dict[512];
    size_t off = (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                  dtype == TK_DTYPE_F32 ? "<f4" : "<f2");
    for (int i = 0; i < ndim; i++)
        off += (size_t)snprintf(dict + off, sizeof dict - off, "%lld%s", (long long)shape[i],
                                ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
    off += (size_t)snprintf(dict + off, sizeof dict - off, "), }");
    size_t total = 10 + off + 1; /* preamble + dict + '\n' */
    size_t padded = (total + 63) / 64 * 64;
    unsigned char head[640];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    store_u16_le(head + 8, (uint16_t)(padded - 10));
    memcpy(head + 10, dict, off);
    memset(head + 10 + off, ' ', padded - total);
    head[padded - 1] = '\n';
    wfile w;
    if (wfile_open(&w, path, err, errlen)) return TK_ERR;
    int ok = wfile_write(&w, head, padded, err, errlen) == 0 &&
             write_elements(&w, data, count, dtype, err, errlen) == 0;
    return wfile_finish(&w, ok, err, errlen);
}

/* Appends s to the buffer as a JSON string. */
static int json_put_string(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t need = *len + strlen(s) * 6 + 3;
    if (need > *cap) {
        size_t c = need * 2;
        char *b = realloc(*buf, c);
        if (!b) return -1;
        *buf = b;
        *cap = c;
    }
    char *o = *buf + *len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20) {
            o += sprintf(o, "\\u%04x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *len = (size_t)(o - *buf);
    return 0;
}

static int json_put(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int json_put(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return -1;
        if (*buf && (size_t)n < *cap - *len) {
            *len += (size_t)n;
            return 0;
        }
        size_t c = (*cap + (size_t)n + 1) * 2;
        char *b = realloc(*buf, c);
        if (!b) return -1;
        *buf = b;
        *cap = c;
    }
}

int tkf_write_safetensors(const char *path, int n, const char *const *names,
                          const tkf_tensor *const *tensors, tk_dtype dtype, char *err,
                          size_t errlen) {
    if (!path) return fail(err, errlen, path, "no file name");
    if (n < 1 || !names || !tensors) return fail(err, errlen, path, "no tensors to write");
    const char *dn = dtype == TK_DTYPE_F32 ? "F32" : dtype == TK_DTYPE_F16 ? "F16" : "BF16";
    size_t es = tk_dtype_size(dtype);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    uint64_t offset = 0;
    int rc = TK_ERR;
    if (json_put(&buf, &len, &cap, "{")) goto oom;
    for (int i = 0; i < n; i++) {
        int64_t count;
        if (!names[i] || !*names[i] || !strcmp(names[i], "__metadata__")) {
            fail(err, errlen, path, "tensor %d: name must be non-empty and not __metadata__", i);
            goto out;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(names[i], names[j])) {
                fail(err, errlen, path, "tensor name '%s' given twice", names[i]);
                goto out;
            }
        if (!tensors[i] || check_shape(path, tensors[i]->ndim, tensors[i]->shape, &count, err, errlen))
            goto out;
        if (tensors[i]->count != count || (count > 0 && !tensors[i]->data)) {
            fail(err, errlen, path, "tensor '%s': count %lld does not match its shape", names[i],
                 (long long)tensors[i]->count);
            goto out;
        }
        if (i && json_put(&buf, &len, &cap, ",")) goto oom;
        if (json_put_string(&buf, &len, &cap, names[i])) goto oom;
        if (json_put(&buf, &len, &cap, ":{\"dtype\":\"%s\",\"shape\":[", dn)) goto oom;
        for (int d = 0; d < tensors[i]->ndim; d++)
            if (json_put(&buf, &len, &cap, "%s%lld", d ? "," : "", (long long)tensors[i]->shape[d])) goto oom;
        uint64_t bytes = (uint64_t)count * es;
        if (json_put(&buf, &len, &cap, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                     (unsigned long long)(offset + bytes)))
            goto oom;
        offset += bytes;
    }
    if (json_put(&buf, &len, &cap, "}")) goto oom;
    while (len % 8)
        if (json_put(&buf, &len, &cap, " ")) goto oom;
    {
        unsigned char pre[8];
        for (int i = 0; i < 8; i++) pre[i] = (unsigned char)((uint64_t)len >> (8 * i));
        wfile w;
        if (wfile_open(&w, path, err, errlen)) goto out;
        int ok = wfile_write(&w, pre, 8, err, errlen) == 0 && wfile_write(&w, buf, len, err, errlen) == 0;
        for (int i = 0; ok && i < n; i++)
            ok = write_elements(&w, tensors[i]->data, tensors[i]->count, dtype, err, errlen) == 0;
        rc = wfile_finish(&w, ok, err, errlen);
    }
    goto out;
oom:
    fail(err, errlen, path, "out of memory");
out:
    free(buf);
    return rc;
}

int tkf_write(const char *path, const char *name, int ndim, const int64_t *shape, const float *data,
              tk_dtype dtype, char *err, size_t errlen) {
    if (!path) return fail(err, errlen, path, "no file name");
    if (dtype != TK_DTYPE_F32 && dtype != TK_DTYPE_F16 && dtype != TK_DTYPE_BF16)
        return fail(err, errlen, path, "unknown dtype %d", (int)dtype);
    switch (tkf_format_of(path)) {
    case TKF_FORMAT_NPY: return npy_write(path, ndim, shape, data, dtype, err, errlen);
    case TKF_FORMAT_SAFETENSORS: {
        tkf_tensor t;
        memset(&t, 0, sizeof t);
        int64_t count;
        if (check_shape(path, ndim, shape, &count, err, errlen)) return TK_ERR;
        t.ndim = ndim;
        for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
        t.count = count;
        t.data = (float *)data;
        const tkf_tensor *tp = &t;
        const char *nm = name ? name : "tensor";
        return tkf_write_safetensors(path, 1, &nm, &tp, dtype, err, errlen);
    }
    default: return fail(err, errlen, path, "unknown tensor file extension (use .npy or .safetensors)");
    }
}
