/*
 * proto.c -- the MessagePack codec of the agent <-> console protocol
 * (proto.h; byte-level definition in docs/PROTOCOL.md).
 *
 * Every message is one MessagePack map. PUB messages are an envelope
 *
 *   { "v": 1, "t": "step", "run": "...", "seq": 42, "ts": <unix ns>, "body": {...} }
 *
 * and control requests/replies are flat maps with "v" and "op" / "ok".
 * Keys are short strings; a figure that was not reported is an absent key;
 * NaN and +-Inf travel as float64 and survive. Unknown keys are ignored
 * (additions within a version); a known key with the wrong type, a missing
 * required key, a wrong version, truncated or oversized input is an error.
 *
 * Decoding first walks the raw bytes (scan_bytes) to check that every
 * container's declared size fits in what is left of the input, so that a
 * tiny hostile message cannot make msgpack-c allocate gigabytes, then lets
 * msgpack-c build the object tree in a zone.
 */
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Names                                                               */
/* ------------------------------------------------------------------ */

const char *tp_msg_type_name(tp_msg_type t) {
    switch (t) {
    case TP_MSG_HEADER: return "header";
    case TP_MSG_STEP: return "step";
    case TP_MSG_KNOB_EVENT: return "knob_event";
    case TP_MSG_RUN_END: return "run_end";
    case TP_MSG_HEARTBEAT: return "heartbeat";
    }
    return "unknown";
}

const char *tp_knob_status_name(tp_knob_status s) {
    switch (s) {
    case TP_KNOB_REQUESTED: return "requested";
    case TP_KNOB_APPLIED: return "applied";
    case TP_KNOB_REJECTED: return "rejected";
    }
    return "unknown";
}

const char *tp_op_name(tp_op op) {
    switch (op) {
    case TP_OP_GET_STATE: return "get_state";
    case TP_OP_GET_KNOBS: return "get_knobs";
    case TP_OP_SET_KNOBS: return "set_knobs";
    case TP_OP_REPLAY: return "replay";
    }
    return "unknown";
}

static const char *const path_names[] = {"fallback", "exact", "taylor", "hybrid"};

void tp_buf_free(tp_buf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_append(tp_buf *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Writer: nested maps/arrays whose sizes are counted as they are       */
/* written (one scratch buffer per depth, reused)                       */
/* ------------------------------------------------------------------ */

enum { W_MAX_DEPTH = 6 };

typedef struct {
    msgpack_sbuffer sb[W_MAX_DEPTH];
    msgpack_packer pk[W_MAX_DEPTH];
    uint32_t count[W_MAX_DEPTH];
    int is_map[W_MAX_DEPTH];
    int depth; /* current level; 0 = top (holds exactly the root object) */
    int failed;
} writer;

static int sbuf_write(void *data, const char *buf, size_t len) {
    msgpack_sbuffer *sb = data;
    if (sb->size + len > sb->alloc) {
        size_t cap = sb->alloc ? sb->alloc : 1024;
        while (cap < sb->size + len) cap *= 2;
        char *d = realloc(sb->data, cap);
        if (!d) return -1;
        sb->data = d;
        sb->alloc = cap;
    }
    memcpy(sb->data + sb->size, buf, len);
    sb->size += len;
    return 0;
}

static void w_init(writer *w) {
    memset(w, 0, sizeof *w);
    for (int i = 0; i < W_MAX_DEPTH; i++) msgpack_packer_init(&w->pk[i], &w->sb[i], sbuf_write);
}

static void w_free(writer *w) {
    for (int i = 0; i < W_MAX_DEPTH; i++) free(w->sb[i].data);
}

static msgpack_packer *w_pk(writer *w) {
    w->count[w->depth]++;
    return &w->pk[w->depth];
}

static void w_open(writer *w, int is_map) {
    if (w->depth + 1 >= W_MAX_DEPTH) {
        w->failed = 1;
        return;
    }
    w->count[w->depth]++;
    w->depth++;
    w->sb[w->depth].size = 0;
    w->count[w->depth] = 0;
    w->is_map[w->depth] = is_map;
}

static void w_close(writer *w) {
    int d = w->depth;
    if (d == 0) {
        w->failed = 1;
        return;
    }
    msgpack_packer *parent = &w->pk[d - 1];
    int rc = w->is_map[d] ? msgpack_pack_map(parent, w->count[d] / 2)
                          : msgpack_pack_array(parent, w->count[d]);
    if (rc != 0) w->failed = 1;
    if (w->sb[d].size && sbuf_write(&w->sb[d - 1], w->sb[d].data, w->sb[d].size) != 0)
        w->failed = 1;
    w->depth--;
}

static void w_str(writer *w, const char *s) {
    size_t n = strlen(s);
    msgpack_packer *pk = w_pk(w);
    if (msgpack_pack_str(pk, n) != 0 || msgpack_pack_str_body(pk, s, n) != 0) w->failed = 1;
}
static void w_i64(writer *w, int64_t v) {
    if (msgpack_pack_int64(w_pk(w), v) != 0) w->failed = 1;
}
static void w_u64(writer *w, uint64_t v) {
    if (msgpack_pack_uint64(w_pk(w), v) != 0) w->failed = 1;
}
static void w_f64(writer *w, double v) {
    if (msgpack_pack_double(w_pk(w), v) != 0) w->failed = 1;
}
static void w_bool(writer *w, int v) {
    if ((v ? msgpack_pack_true(w_pk(w)) : msgpack_pack_false(w_pk(w))) != 0) w->failed = 1;
}
static void w_bin(writer *w, const void *p, size_t n) {
    msgpack_packer *pk = w_pk(w);
    if (msgpack_pack_bin(pk, n) != 0 || msgpack_pack_bin_body(pk, p, n) != 0) w->failed = 1;
}

/* key/value pairs */
static void kv_str(writer *w, const char *k, const char *v) { w_str(w, k), w_str(w, v); }
static void kv_i64(writer *w, const char *k, int64_t v) { w_str(w, k), w_i64(w, v); }
static void kv_u64(writer *w, const char *k, uint64_t v) { w_str(w, k), w_u64(w, v); }
static void kv_f64(writer *w, const char *k, double v) { w_str(w, k), w_f64(w, v); }
static void kv_bool(writer *w, const char *k, int v) { w_str(w, k), w_bool(w, v); }
static void kv_map(writer *w, const char *k) { w_str(w, k), w_open(w, 1); }
static void kv_array(writer *w, const char *k) { w_str(w, k), w_open(w, 0); }

/* Moves the finished root object into out. */
static int w_finish(writer *w, tp_buf *out, char *err, size_t errlen) {
    if (w->failed || w->depth != 0) {
        seterr(err, errlen, "encode: out of memory or nesting error");
        return -1;
    }
    if (w->sb[0].size > TP_MAX_MESSAGE_BYTES) {
        seterr(err, errlen, "encode: message of %zu bytes is larger than the limit of %u bytes",
               w->sb[0].size, TP_MAX_MESSAGE_BYTES);
        return -1;
    }
    out->len = 0;
    if (buf_append(out, w->sb[0].data, w->sb[0].size) != 0) {
        seterr(err, errlen, "encode: out of memory");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Raw scan: sizes fit, nesting bounded, no truncation, one object       */
/* ------------------------------------------------------------------ */

enum { SCAN_MAX_DEPTH = 16 };

static uint64_t be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Walks one object at *pos; returns 0 or -1 with err. */
static int scan_object(const unsigned char *d, size_t len, size_t *pos, int depth, char *err,
                       size_t errlen) {
    if (depth > SCAN_MAX_DEPTH) {
        seterr(err, errlen, "nesting deeper than %d levels", SCAN_MAX_DEPTH);
        return -1;
    }
    if (*pos >= len) goto truncated;
    unsigned c = d[(*pos)++];
    uint64_t skip = 0, items = 0; /* bytes to skip, child objects to walk */
    int lenbytes = 0;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        return 0;
    } else if (c >= 0x80 && c <= 0x8f) {
        items = 2 * (uint64_t)(c & 0x0f);
    } else if (c >= 0x90 && c <= 0x9f) {
        items = c & 0x0f;
    } else if (c >= 0xa0 && c <= 0xbf) {
        skip = c & 0x1f;
    } else {
        switch (c) {
        case 0xc4: case 0xd9: lenbytes = 1; break; /* bin8 str8 */
        case 0xc5: case 0xda: lenbytes = 2; break;
        case 0xc6: case 0xdb: lenbytes = 4; break;
        case 0xc7: lenbytes = 1; skip = 1; break;  /* ext8: + type byte */
        case 0xc8: lenbytes = 2; skip = 1; break;
        case 0xc9: lenbytes = 4; skip = 1; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break; /* fixext */
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: case 0xdd: { /* array16/32 */
            int n = c == 0xdc ? 2 : 4;
            if (len - *pos < (size_t)n) goto truncated;
            items = be(d + *pos, n);
            *pos += n;
            break;
        }
        case 0xde: case 0xdf: {
            int n = c == 0xde ? 2 : 4;
            if (len - *pos < (size_t)n) goto truncated;
            items = 2 * be(d + *pos, n);
            *pos += n;
            break;
        }
        default:
            seterr(err, errlen, "invalid MessagePack byte 0x%02x at offset %zu", c, *pos - 1);
            return -1;
        }
    }
    if (lenbytes) {
        if (len - *pos < (size_t)lenbytes) goto truncated;
        skip += be(d + *pos, lenbytes);
        *pos += lenbytes;
    }
    if (skip > len - *pos) goto truncated;
    *pos += skip;
    /* every child needs at least one byte */
    if (items > len - *pos) goto truncated;
    for (uint64_t i = 0; i < items; i++)
        if (scan_object(d, len, pos, depth + 1, err, errlen) != 0) return -1;
    return 0;
truncated:
    seterr(err, errlen, "truncated message (%zu bytes)", len);
    return -1;
}

/* A decoded object tree (owned by the zone). */
typedef struct {
    msgpack_zone zone;
    msgpack_object root;
} tree;

static int parse(const void *data, size_t len, tree *t, char *err, size_t errlen) {
    if (!data || len == 0) {
        seterr(err, errlen, "empty message");
        return -1;
    }
    if (len > TP_MAX_MESSAGE_BYTES) {
        seterr(err, errlen, "message of %zu bytes is larger than the limit of %u bytes", len,
               TP_MAX_MESSAGE_BYTES);
        return -1;
    }
    size_t pos = 0;
    if (scan_object(data, len, &pos, 0, err, errlen) != 0) return -1;
    if (pos != len) {
        seterr(err, errlen, "%zu trailing bytes after the message", len - pos);
        return -1;
    }
    if (!msgpack_zone_init(&t->zone, 4096)) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack(data, len, &off, &t->zone, &t->root);
    if (rc != MSGPACK_UNPACK_SUCCESS) {
        msgpack_zone_destroy(&t->zone);
        seterr(err, errlen, "malformed MessagePack (%d)", (int)rc);
        return -1;
    }
    if (t->root.type != MSGPACK_OBJECT_MAP) {
        msgpack_zone_destroy(&t->zone);
        seterr(err, errlen, "message is not a map");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Reader helpers. Each takes a map and a key; `where` names the map in  */
/* error messages ("step.layers[3]").                                   */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *where;
    char *err;
    size_t errlen;
} rd;

static int key_is(const msgpack_object *k, const char *s) {
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

/* Checks that m is a map with string keys and no duplicate keys. */
static int check_map(const msgpack_object *m, rd *r) {
    if (m->type != MSGPACK_OBJECT_MAP) {
        seterr(r->err, r->errlen, "%s: expected a map", r->where);
        return -1;
    }
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            seterr(r->err, r->errlen, "%s: a key is not a string", r->where);
            return -1;
        }
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *kj = &m->via.map.ptr[j].key;
            if (kj->via.str.size == k->via.str.size &&
                memcmp(kj->via.str.ptr, k->via.str.ptr, k->via.str.size) == 0) {
                seterr(r->err, r->errlen, "%s: duplicate key '%.*s'", r->where,
                       (int)k->via.str.size, k->via.str.ptr);
                return -1;
            }
        }
    }
    return 0;
}

static const msgpack_object *find(const msgpack_object *m, const char *key) {
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (key_is(&m->via.map.ptr[i].key, key)) return &m->via.map.ptr[i].val;
    return NULL;
}

static int missing(rd *r, const char *key) {
    seterr(r->err, r->errlen, "%s: missing key '%s'", r->where, key);
    return -1;
}

static const char *type_word(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "string";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "?";
}

static int wrong(rd *r, const char *key, const char *want, const msgpack_object *o) {
    seterr(r->err, r->errlen, "%s.%s: expected %s, got %s", r->where, key, want, type_word(o));
    return -1;
}

/* Integer in [lo, hi]. required=0: absent leaves *out and returns 1. */
static int get_int_range(const msgpack_object *m, const char *key, int required, int64_t lo,
                         int64_t hi, int64_t *out, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return required ? missing(r, key) : 1;
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX) goto range;
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return wrong(r, key, "an integer", o);
    }
    if (v < lo || v > hi) goto range;
    *out = v;
    return 0;
range:
    seterr(r->err, r->errlen, "%s.%s: integer out of range [%lld, %lld]", r->where, key,
           (long long)lo, (long long)hi);
    return -1;
}

static int get_int(const msgpack_object *m, const char *key, int required, int *out, rd *r) {
    int64_t v;
    int rc = get_int_range(m, key, required, INT32_MIN, INT32_MAX, &v, r);
    if (rc == 0) *out = (int)v;
    return rc < 0 ? -1 : 0;
}
static int get_i64(const msgpack_object *m, const char *key, int required, int64_t *out, rd *r) {
    int rc = get_int_range(m, key, required, INT64_MIN, INT64_MAX, out, r);
    return rc < 0 ? -1 : 0;
}
static int get_u32(const msgpack_object *m, const char *key, int required, uint32_t *out, rd *r) {
    int64_t v;
    int rc = get_int_range(m, key, required, 0, UINT32_MAX, &v, r);
    if (rc == 0) *out = (uint32_t)v;
    return rc < 0 ? -1 : 0;
}
static int get_u64(const msgpack_object *m, const char *key, int required, uint64_t *out, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return required ? missing(r, key) : 0;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            seterr(r->err, r->errlen, "%s.%s: must not be negative", r->where, key);
            return -1;
        }
        return wrong(r, key, "an unsigned integer", o);
    }
    *out = o->via.u64;
    return 0;
}

/* A number (float or integer). Absent: *out = NaN, returns 1. */
static int get_num(const msgpack_object *m, const char *key, int required, double *out, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) {
        *out = NAN;
        return required ? missing(r, key) : 1;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 0;
    default: return wrong(r, key, "a number", o);
    }
}

static int get_bool(const msgpack_object *m, const char *key, int required, int *out, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return required ? missing(r, key) : 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return wrong(r, key, "a bool", o);
    *out = o->via.boolean ? 1 : 0;
    return 0;
}

/* A string into a fixed buffer; too long or containing NUL is an error. */
static int copy_str(const msgpack_object *o, const char *key, char *out, size_t cap, rd *r) {
    if (o->type != MSGPACK_OBJECT_STR) return wrong(r, key, "a string", o);
    if (o->via.str.size >= cap) {
        seterr(r->err, r->errlen, "%s.%s: string longer than %zu bytes", r->where, key, cap - 1);
        return -1;
    }
    if (memchr(o->via.str.ptr, '\0', o->via.str.size)) {
        seterr(r->err, r->errlen, "%s.%s: string contains a NUL byte", r->where, key);
        return -1;
    }
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = '\0';
    return 0;
}

static int get_str(const msgpack_object *m, const char *key, int required, char *out, size_t cap,
                   rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return required ? missing(r, key) : 0;
    return copy_str(o, key, out, cap, r);
}

/* An array (absent: size 0 unless required). */
static int get_array(const msgpack_object *m, const char *key, int required,
                     const msgpack_object **out, rd *r) {
    const msgpack_object *o = find(m, key);
    *out = NULL;
    if (!o) return required ? missing(r, key) : 0;
    if (o->type != MSGPACK_OBJECT_ARRAY) return wrong(r, key, "an array", o);
    *out = o;
    return 0;
}

static int get_submap(const msgpack_object *m, const char *key, int required,
                      const msgpack_object **out, rd *r) {
    const msgpack_object *o = find(m, key);
    *out = NULL;
    if (!o) return required ? missing(r, key) : 0;
    if (o->type != MSGPACK_OBJECT_MAP) return wrong(r, key, "a map", o);
    *out = o;
    return 0;
}

/* A name from a list (a string); *out = index. */
static int get_name(const msgpack_object *m, const char *key, int required,
                    const char *(*name_of)(int), int count, int *out, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return required ? missing(r, key) : 0;
    char s[TP_NAME_LEN];
    if (copy_str(o, key, s, sizeof s, r) != 0) return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(name_of(i), s) == 0) {
            *out = i;
            return 0;
        }
    seterr(r->err, r->errlen, "%s.%s: unknown name '%s'", r->where, key, s);
    return -1;
}

static const char *reason_of(int i) { return tk_reason_name((tk_reason)i); }
static const char *path_of(int i) { return (i >= 0 && i < 4) ? path_names[i] : "?"; }
static const char *status_of(int i) { return tp_knob_status_name((tp_knob_status)i); }
static const char *op_of(int i) { return tp_op_name((tp_op)(i + 1)); }
static const char *type_of(int i) { return tp_msg_type_name((tp_msg_type)(i + 1)); }

/* ------------------------------------------------------------------ */
/* Config maps: { knob name: value } with bool / int / float / choice   */
/* ------------------------------------------------------------------ */

static void put_config(writer *w, const char *key, const tk_config *c) {
    kv_map(w, key);
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        double v = tk_config_get(c, k);
        w_str(w, k->name);
        switch (k->type) {
        case TK_KNOB_BOOL: w_bool(w, v != 0); break;
        case TK_KNOB_INT: w_i64(w, (int64_t)v); break;
        case TK_KNOB_FLOAT: w_f64(w, v); break;
        case TK_KNOB_ENUM: {
            char buf[64];
            w_str(w, tk_knob_choice(k, (int)v, buf, sizeof buf) ? buf : "?");
            break;
        }
        }
    }
    w_close(w);
}

/* Starts from the defaults; unknown knob names are ignored (a newer agent). */
static int read_config(const msgpack_object *m, tk_config *c, rd *r) {
    rd sub = {r->where, r->err, r->errlen};
    if (check_map(m, &sub) != 0) return -1;
    tk_config_defaults(c);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *ko = &m->via.map.ptr[i].key, *vo = &m->via.map.ptr[i].val;
        char name[TP_NAME_LEN];
        if (copy_str(ko, "key", name, sizeof name, r) != 0) return -1;
        const tk_knob *k = tk_knob_find(name);
        if (!k) continue;
        double v = 0;
        char e[200];
        if (k->type == TK_KNOB_BOOL) {
            if (vo->type != MSGPACK_OBJECT_BOOLEAN) return wrong(r, k->name, "a bool", vo);
            v = vo->via.boolean;
        } else if (k->type == TK_KNOB_ENUM) {
            char s[64], buf[64];
            if (copy_str(vo, k->name, s, sizeof s, r) != 0) return -1;
            int found = -1;
            for (int j = 0; tk_knob_choice(k, j, buf, sizeof buf); j++)
                if (strcmp(buf, s) == 0) found = j;
            if (found < 0) {
                seterr(r->err, r->errlen, "%s.%s: '%s' is not one of %s", r->where, k->name, s,
                       k->choices);
                return -1;
            }
            v = found;
        } else if (vo->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            v = (double)vo->via.u64;
        } else if (vo->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            v = (double)vo->via.i64;
        } else if (k->type == TK_KNOB_FLOAT &&
                   (vo->type == MSGPACK_OBJECT_FLOAT64 || vo->type == MSGPACK_OBJECT_FLOAT32)) {
            v = vo->via.f64;
        } else {
            return wrong(r, k->name, k->type == TK_KNOB_INT ? "an integer" : "a number", vo);
        }
        if (tk_config_set_number(c, k, v, e, sizeof e) != 0) {
            seterr(r->err, r->errlen, "%s: %s", r->where, e);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Knob changes: [ {"k": name, "v": value, "old": value} ]              */
/* ------------------------------------------------------------------ */

static void put_changes(writer *w, const char *key, int n, const tp_knob_change *ch, int with_old) {
    kv_array(w, key);
    for (int i = 0; i < n; i++) {
        w_open(w, 1);
        kv_str(w, "k", ch[i].name);
        kv_str(w, "v", ch[i].value);
        if (with_old && ch[i].old_value[0]) kv_str(w, "old", ch[i].old_value);
        w_close(w);
    }
    w_close(w);
}

/* A value given as string, bool, integer or float, turned into text. */
static int value_text(const msgpack_object *o, const char *key, char *out, size_t cap, rd *r) {
    switch (o->type) {
    case MSGPACK_OBJECT_STR: return copy_str(o, key, out, cap, r);
    case MSGPACK_OBJECT_BOOLEAN: snprintf(out, cap, "%s", o->via.boolean ? "true" : "false"); return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: snprintf(out, cap, "%llu", (unsigned long long)o->via.u64); return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: snprintf(out, cap, "%lld", (long long)o->via.i64); return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: snprintf(out, cap, "%.17g", o->via.f64); return 0;
    default: return wrong(r, key, "a string, bool or number", o);
    }
}

enum { MAX_CHANGES = 256 };

static int read_changes(const msgpack_object *arr, int *n_out, tp_knob_change **out, rd *r) {
    *n_out = 0;
    *out = NULL;
    if (!arr || arr->via.array.size == 0) return 0;
    if (arr->via.array.size > MAX_CHANGES) {
        seterr(r->err, r->errlen, "%s: more than %d knob changes", r->where, MAX_CHANGES);
        return -1;
    }
    tp_knob_change *ch = calloc(arr->via.array.size, sizeof *ch);
    if (!ch) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const msgpack_object *m = &arr->via.array.ptr[i];
        char where[64];
        snprintf(where, sizeof where, "%s[%u]", r->where, i);
        rd sub = {where, r->err, r->errlen};
        const msgpack_object *v;
        if (check_map(m, &sub) != 0 || get_str(m, "k", 1, ch[i].name, sizeof ch[i].name, &sub) != 0)
            goto fail;
        if (!(v = find(m, "v"))) {
            missing(&sub, "v");
            goto fail;
        }
        if (value_text(v, "v", ch[i].value, sizeof ch[i].value, &sub) != 0) goto fail;
        const msgpack_object *old = find(m, "old");
        if (old && value_text(old, "old", ch[i].old_value, sizeof ch[i].old_value, &sub) != 0)
            goto fail;
    }
    *n_out = (int)arr->via.array.size;
    *out = ch;
    return 0;
fail:
    free(ch);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Bodies                                                              */
/* ------------------------------------------------------------------ */

static void put_header(writer *w, const tp_header *h) {
    kv_str(w, "agent", h->agent_id);
    kv_str(w, "agent_version", h->agent_version);
    kv_str(w, "model_name", h->model_name);
    kv_str(w, "sampler", h->sampler);
    kv_str(w, "backend", h->backend);
    kv_map(w, "model");
    kv_str(w, "name", h->model.name);
    kv_i64(w, "heads", h->model.heads);
    kv_i64(w, "head_dim", h->model.head_dim);
    kv_i64(w, "n_double", h->model.n_double);
    kv_i64(w, "n_single", h->model.n_single);
    kv_i64(w, "text_tokens", h->model.text_tokens);
    kv_i64(w, "grid_h", h->model.grid_h);
    kv_i64(w, "grid_w", h->model.grid_w);
    w_close(w);
    kv_i64(w, "total_steps", h->total_steps);
    kv_i64(w, "started_ns", h->started_ns);
    kv_array(w, "knobs");
    for (int i = 0; i < h->n_knobs; i++) {
        const tp_knob_desc *k = &h->knobs[i];
        w_open(w, 1);
        kv_str(w, "name", k->name);
        kv_str(w, "type", k->type);
        kv_str(w, "group", k->group);
        kv_bool(w, "live", k->live);
        kv_f64(w, "def", k->def);
        kv_f64(w, "min", k->min);
        kv_f64(w, "max", k->max);
        kv_str(w, "choices", k->choices);
        kv_str(w, "desc", k->description);
        w_close(w);
    }
    w_close(w);
    kv_array(w, "reasons");
    for (int i = 0; i < h->n_reasons; i++) w_str(w, h->reasons[i]);
    w_close(w);
    put_config(w, "initial", &h->initial);
    put_config(w, "current", &h->current);
    kv_u64(w, "config_version", h->config_version);
    kv_i64(w, "last_step", h->last_step);
}

static int read_header(const msgpack_object *b, tp_header *h, rd *r) {
    const msgpack_object *m, *arr;
    if (get_str(b, "agent", 1, h->agent_id, sizeof h->agent_id, r) ||
        get_str(b, "agent_version", 0, h->agent_version, sizeof h->agent_version, r) ||
        get_str(b, "model_name", 1, h->model_name, sizeof h->model_name, r) ||
        get_str(b, "sampler", 1, h->sampler, sizeof h->sampler, r) ||
        get_str(b, "backend", 1, h->backend, sizeof h->backend, r) ||
        get_int(b, "total_steps", 1, &h->total_steps, r) ||
        get_i64(b, "started_ns", 1, &h->started_ns, r) ||
        get_u32(b, "config_version", 1, &h->config_version, r) ||
        get_int(b, "last_step", 1, &h->last_step, r) || get_submap(b, "model", 1, &m, r))
        return -1;
    rd rm = {"header.model", r->err, r->errlen};
    if (check_map(m, &rm) || get_str(m, "name", 1, h->model.name, sizeof h->model.name, &rm) ||
        get_int(m, "heads", 1, &h->model.heads, &rm) ||
        get_int(m, "head_dim", 1, &h->model.head_dim, &rm) ||
        get_int(m, "n_double", 1, &h->model.n_double, &rm) ||
        get_int(m, "n_single", 1, &h->model.n_single, &rm) ||
        get_int(m, "text_tokens", 1, &h->model.text_tokens, &rm) ||
        get_int(m, "grid_h", 1, &h->model.grid_h, &rm) ||
        get_int(m, "grid_w", 1, &h->model.grid_w, &rm))
        return -1;
    if (get_array(b, "knobs", 1, &arr, r)) return -1;
    if (arr->via.array.size > 4096) {
        seterr(r->err, r->errlen, "header.knobs: too many knobs");
        return -1;
    }
    h->n_knobs = (int)arr->via.array.size;
    h->knobs = calloc(h->n_knobs ? h->n_knobs : 1, sizeof *h->knobs);
    if (!h->knobs) return seterr(r->err, r->errlen, "out of memory"), -1;
    for (int i = 0; i < h->n_knobs; i++) {
        const msgpack_object *k = &arr->via.array.ptr[i];
        tp_knob_desc *d = &h->knobs[i];
        char where[48];
        snprintf(where, sizeof where, "header.knobs[%d]", i);
        rd rk = {where, r->err, r->errlen};
        if (check_map(k, &rk) || get_str(k, "name", 1, d->name, sizeof d->name, &rk) ||
            get_str(k, "type", 1, d->type, sizeof d->type, &rk) ||
            get_str(k, "group", 0, d->group, sizeof d->group, &rk) ||
            get_bool(k, "live", 1, &d->live, &rk) || get_num(k, "def", 1, &d->def, &rk) < 0 ||
            get_num(k, "min", 1, &d->min, &rk) < 0 || get_num(k, "max", 1, &d->max, &rk) < 0 ||
            get_str(k, "choices", 0, d->choices, sizeof d->choices, &rk) ||
            get_str(k, "desc", 0, d->description, sizeof d->description, &rk))
            return -1;
    }
    if (get_array(b, "reasons", 1, &arr, r)) return -1;
    if (arr->via.array.size > 4096) {
        seterr(r->err, r->errlen, "header.reasons: too many reasons");
        return -1;
    }
    h->n_reasons = (int)arr->via.array.size;
    h->reasons = calloc(h->n_reasons ? h->n_reasons : 1, sizeof *h->reasons);
    if (!h->reasons) return seterr(r->err, r->errlen, "out of memory"), -1;
    for (int i = 0; i < h->n_reasons; i++)
        if (copy_str(&arr->via.array.ptr[i], "reasons[]", h->reasons[i], TP_NAME_LEN, r)) return -1;
    const msgpack_object *ci, *cc;
    if (get_submap(b, "initial", 1, &ci, r) || get_submap(b, "current", 1, &cc, r)) return -1;
    rd r1 = {"header.initial", r->err, r->errlen}, r2 = {"header.current", r->err, r->errlen};
    if (read_config(ci, &h->initial, &r1) || read_config(cc, &h->current, &r2)) return -1;
    return 0;
}

/* Optional figures: written only when their group was reported. */
static void kv_opt(writer *w, const char *k, double v, int have) {
    if (have) kv_f64(w, k, v);
}

static void put_row(writer *w, const tp_layer_row *l) {
    w_open(w, 1);
    int hq = !!(l->have & TP_HAVE_QUALITY), hd = !!(l->have & TP_HAVE_DENOMS);
    int hk = !!(l->have & TP_HAVE_QK), hw = !!(l->have & TP_HAVE_WINDOW);
    kv_i64(w, "layer", l->layer);
    kv_i64(w, "calls", l->calls);
    kv_i64(w, "fallbacks", l->fallbacks);
    kv_str(w, "path", path_of(l->path));
    kv_str(w, "reason", tk_reason_name((tk_reason)l->reason));
    kv_opt(w, "q_raw_mean", l->quality_raw_mean, hq);
    kv_opt(w, "q_raw_max", l->quality_raw_max, hq);
    kv_opt(w, "q_eff_mean", l->quality_eff_mean, hq);
    kv_opt(w, "q_eff_max", l->quality_eff_max, hq);
    kv_opt(w, "cos_min", l->cos_min, hq);
    kv_opt(w, "den_min", l->den_min, hd);
    if (hd) kv_i64(w, "den_le_eps", l->den_le_eps), kv_i64(w, "den_nonfinite", l->den_nonfinite);
    kv_opt(w, "qk_p99", l->qk_p99, hk);
    kv_opt(w, "qk_max", l->qk_max, hk);
    kv_opt(w, "q_norm_mean", l->q_norm_mean, hk);
    kv_opt(w, "k_norm_mean", l->k_norm_mean, hk);
    kv_opt(w, "wm_mean", l->window_mass_mean, hw);
    kv_i64(w, "window", l->window);
    kv_f64(w, "w", l->w);
    kv_i64(w, "R", l->R);
    kv_opt(w, "attn_ms", l->attn_ms, !!(l->have & TP_HAVE_TIME));
    w_close(w);
}

/* Reads an optional figure; sets *have_bit in *have when present. */
static int opt(const msgpack_object *m, const char *key, double *out, unsigned bit, unsigned *have,
               rd *r) {
    int rc = get_num(m, key, 0, out, r);
    if (rc < 0) return -1;
    if (rc == 0) *have |= bit;
    return 0;
}
static int opt_i64(const msgpack_object *m, const char *key, int64_t *out, unsigned bit,
                   unsigned *have, rd *r) {
    const msgpack_object *o = find(m, key);
    if (!o) return 0;
    *have |= bit;
    return get_i64(m, key, 1, out, r);
}

static int read_row(const msgpack_object *m, tp_layer_row *l, rd *r) {
    memset(l, 0, sizeof *l);
    unsigned h = 0;
    if (check_map(m, r) || get_int(m, "layer", 1, &l->layer, r) ||
        get_int(m, "calls", 1, &l->calls, r) || get_int(m, "fallbacks", 1, &l->fallbacks, r) ||
        get_name(m, "path", 1, path_of, 4, &l->path, r) ||
        get_name(m, "reason", 1, reason_of, TK_REASON_COUNT, &l->reason, r) ||
        opt(m, "q_raw_mean", &l->quality_raw_mean, TP_HAVE_QUALITY, &h, r) ||
        opt(m, "q_raw_max", &l->quality_raw_max, TP_HAVE_QUALITY, &h, r) ||
        opt(m, "q_eff_mean", &l->quality_eff_mean, TP_HAVE_QUALITY, &h, r) ||
        opt(m, "q_eff_max", &l->quality_eff_max, TP_HAVE_QUALITY, &h, r) ||
        opt(m, "cos_min", &l->cos_min, TP_HAVE_QUALITY, &h, r) ||
        opt(m, "den_min", &l->den_min, TP_HAVE_DENOMS, &h, r) ||
        opt_i64(m, "den_le_eps", &l->den_le_eps, TP_HAVE_DENOMS, &h, r) ||
        opt_i64(m, "den_nonfinite", &l->den_nonfinite, TP_HAVE_DENOMS, &h, r) ||
        opt(m, "qk_p99", &l->qk_p99, TP_HAVE_QK, &h, r) ||
        opt(m, "qk_max", &l->qk_max, TP_HAVE_QK, &h, r) ||
        opt(m, "q_norm_mean", &l->q_norm_mean, TP_HAVE_QK, &h, r) ||
        opt(m, "k_norm_mean", &l->k_norm_mean, TP_HAVE_QK, &h, r) ||
        opt(m, "wm_mean", &l->window_mass_mean, TP_HAVE_WINDOW, &h, r) ||
        get_int(m, "window", 1, &l->window, r) || get_num(m, "w", 1, &l->w, r) < 0 ||
        get_i64(m, "R", 1, &l->R, r) || opt(m, "attn_ms", &l->attn_ms, TP_HAVE_TIME, &h, r))
        return -1;
    l->have = h;
    return 0;
}

static void put_step(writer *w, const tp_step *s) {
    int hq = !!(s->have & TP_HAVE_QUALITY), hd = !!(s->have & TP_HAVE_DENOMS);
    int hk = !!(s->have & TP_HAVE_QK), hw = !!(s->have & TP_HAVE_WINDOW);
    kv_i64(w, "step", s->step);
    kv_f64(w, "sigma", s->sigma);
    kv_f64(w, "wall_ms", s->wall_ms);
    kv_f64(w, "attn_ms", s->attn_ms);
    kv_u64(w, "config_version", s->config_version);
    kv_i64(w, "calls", s->calls);
    kv_i64(w, "n_exact", s->n_exact);
    kv_i64(w, "n_taylor", s->n_taylor);
    kv_i64(w, "n_hybrid", s->n_hybrid);
    kv_i64(w, "n_fallback", s->n_fallback);
    kv_map(w, "reasons");
    for (int i = 1; i < TK_REASON_COUNT; i++)
        if (s->reason_counts[i]) kv_i64(w, tk_reason_name((tk_reason)i), s->reason_counts[i]);
    w_close(w);
    kv_i64(w, "probe_fallbacks", s->probe_fallbacks);
    kv_opt(w, "q_raw_mean", s->quality_raw_mean, hq);
    kv_opt(w, "q_raw_p50", s->quality_raw_p50, hq);
    kv_opt(w, "q_raw_p95", s->quality_raw_p95, hq);
    kv_opt(w, "q_raw_max", s->quality_raw_max, hq);
    kv_opt(w, "q_eff_mean", s->quality_eff_mean, hq);
    kv_opt(w, "q_eff_p50", s->quality_eff_p50, hq);
    kv_opt(w, "q_eff_p95", s->quality_eff_p95, hq);
    kv_opt(w, "q_eff_max", s->quality_eff_max, hq);
    kv_opt(w, "cos_min", s->cos_min, hq);
    kv_opt(w, "den_min", s->den_min, hd);
    kv_opt(w, "den_max", s->den_max, hd);
    kv_opt(w, "den_mean", s->den_mean, hd);
    if (hd) kv_i64(w, "den_le_eps", s->den_le_eps), kv_i64(w, "den_nonfinite", s->den_nonfinite);
    kv_opt(w, "qk_p50", s->qk_p50, hk);
    kv_opt(w, "qk_p99", s->qk_p99, hk);
    kv_opt(w, "qk_max", s->qk_max, hk);
    kv_opt(w, "q_norm_mean", s->q_norm_mean, hk);
    kv_opt(w, "k_norm_mean", s->k_norm_mean, hk);
    kv_opt(w, "wm_mean", s->window_mass_mean, hw);
    kv_opt(w, "wm_min", s->window_mass_min, hw);
    kv_i64(w, "window", s->window);
    kv_f64(w, "w", s->w);
    kv_array(w, "layers");
    for (int i = 0; i < s->n_layers; i++) put_row(w, &s->layers[i]);
    w_close(w);
}

static int read_step(const msgpack_object *b, tp_step *s, rd *r) {
    unsigned h = 0;
    const msgpack_object *rs, *arr;
    if (get_int(b, "step", 1, &s->step, r) || get_num(b, "sigma", 1, &s->sigma, r) < 0 ||
        get_num(b, "wall_ms", 1, &s->wall_ms, r) < 0 ||
        get_num(b, "attn_ms", 1, &s->attn_ms, r) < 0 ||
        get_u32(b, "config_version", 1, &s->config_version, r) ||
        get_int(b, "calls", 1, &s->calls, r) || get_int(b, "n_exact", 1, &s->n_exact, r) ||
        get_int(b, "n_taylor", 1, &s->n_taylor, r) || get_int(b, "n_hybrid", 1, &s->n_hybrid, r) ||
        get_int(b, "n_fallback", 1, &s->n_fallback, r) ||
        get_i64(b, "probe_fallbacks", 1, &s->probe_fallbacks, r) ||
        opt(b, "q_raw_mean", &s->quality_raw_mean, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_raw_p50", &s->quality_raw_p50, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_raw_p95", &s->quality_raw_p95, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_raw_max", &s->quality_raw_max, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_eff_mean", &s->quality_eff_mean, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_eff_p50", &s->quality_eff_p50, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_eff_p95", &s->quality_eff_p95, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "q_eff_max", &s->quality_eff_max, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "cos_min", &s->cos_min, TP_HAVE_QUALITY, &h, r) ||
        opt(b, "den_min", &s->den_min, TP_HAVE_DENOMS, &h, r) ||
        opt(b, "den_max", &s->den_max, TP_HAVE_DENOMS, &h, r) ||
        opt(b, "den_mean", &s->den_mean, TP_HAVE_DENOMS, &h, r) ||
        opt_i64(b, "den_le_eps", &s->den_le_eps, TP_HAVE_DENOMS, &h, r) ||
        opt_i64(b, "den_nonfinite", &s->den_nonfinite, TP_HAVE_DENOMS, &h, r) ||
        opt(b, "qk_p50", &s->qk_p50, TP_HAVE_QK, &h, r) ||
        opt(b, "qk_p99", &s->qk_p99, TP_HAVE_QK, &h, r) ||
        opt(b, "qk_max", &s->qk_max, TP_HAVE_QK, &h, r) ||
        opt(b, "q_norm_mean", &s->q_norm_mean, TP_HAVE_QK, &h, r) ||
        opt(b, "k_norm_mean", &s->k_norm_mean, TP_HAVE_QK, &h, r) ||
        opt(b, "wm_mean", &s->window_mass_mean, TP_HAVE_WINDOW, &h, r) ||
        opt(b, "wm_min", &s->window_mass_min, TP_HAVE_WINDOW, &h, r) ||
        get_int(b, "window", 1, &s->window, r) || get_num(b, "w", 1, &s->w, r) < 0 ||
        get_submap(b, "reasons", 1, &rs, r) || get_array(b, "layers", 1, &arr, r))
        return -1;
    s->have = h;
    rd rr = {"step.reasons", r->err, r->errlen};
    if (check_map(rs, &rr)) return -1;
    for (uint32_t i = 0; i < rs->via.map.size; i++) {
        char name[TP_NAME_LEN];
        tk_reason reason;
        if (copy_str(&rs->via.map.ptr[i].key, "key", name, sizeof name, &rr)) return -1;
        if (tk_reason_from_name(name, &reason) != 0 || reason == TK_REASON_NONE) {
            seterr(r->err, r->errlen, "step.reasons: unknown reason '%s'", name);
            return -1;
        }
        if (get_i64(rs, name, 1, &s->reason_counts[reason], &rr)) return -1;
    }
    if (arr->via.array.size > 100000) {
        seterr(r->err, r->errlen, "step.layers: too many rows");
        return -1;
    }
    s->n_layers = (int)arr->via.array.size;
    if (s->n_layers) {
        s->layers = calloc(s->n_layers, sizeof *s->layers);
        if (!s->layers) return seterr(r->err, r->errlen, "out of memory"), -1;
    }
    for (int i = 0; i < s->n_layers; i++) {
        char where[48];
        snprintf(where, sizeof where, "step.layers[%d]", i);
        rd rl = {where, r->err, r->errlen};
        if (read_row(&arr->via.array.ptr[i], &s->layers[i], &rl)) return -1;
    }
    return 0;
}

static void put_knob_event(writer *w, const tp_knob_event *k) {
    kv_str(w, "id", k->request_id);
    kv_str(w, "origin", k->origin);
    kv_str(w, "status", tp_knob_status_name(k->status));
    kv_u64(w, "config_version", k->config_version);
    kv_i64(w, "effective_step", k->effective_step);
    if (k->error[0]) kv_str(w, "error", k->error);
    put_changes(w, "changes", k->n_changes, k->changes, 1);
}

static int read_knob_event(const msgpack_object *b, tp_knob_event *k, rd *r) {
    int status = 0;
    const msgpack_object *arr;
    if (get_str(b, "id", 1, k->request_id, sizeof k->request_id, r) ||
        get_str(b, "origin", 1, k->origin, sizeof k->origin, r) ||
        get_name(b, "status", 1, status_of, 3, &status, r) ||
        get_u32(b, "config_version", 1, &k->config_version, r) ||
        get_int(b, "effective_step", 1, &k->effective_step, r) ||
        get_str(b, "error", 0, k->error, sizeof k->error, r) ||
        get_array(b, "changes", 1, &arr, r))
        return -1;
    k->status = (tp_knob_status)status;
    rd rc = {"knob_event.changes", r->err, r->errlen};
    return read_changes(arr, &k->n_changes, &k->changes, &rc);
}

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

int tp_encode_msg(const tp_msg *m, tp_buf *out, char *err, size_t errlen) {
    if (!m || !out) {
        seterr(err, errlen, "encode: NULL argument");
        return -1;
    }
    if (m->type < TP_MSG_HEADER || m->type > TP_MSG_HEARTBEAT) {
        seterr(err, errlen, "encode: unknown message type %d", (int)m->type);
        return -1;
    }
    writer w;
    w_init(&w);
    w_open(&w, 1);
    kv_u64(&w, "v", m->version ? m->version : TP_PROTOCOL_VERSION);
    kv_str(&w, "t", tp_msg_type_name(m->type));
    kv_str(&w, "run", m->run_id);
    kv_u64(&w, "seq", m->seq);
    kv_i64(&w, "ts", m->t_ns);
    kv_map(&w, "body");
    switch (m->type) {
    case TP_MSG_HEADER: put_header(&w, &m->u.header); break;
    case TP_MSG_STEP: put_step(&w, &m->u.step); break;
    case TP_MSG_KNOB_EVENT: put_knob_event(&w, &m->u.knob); break;
    case TP_MSG_RUN_END:
        kv_str(&w, "status", m->u.end.status);
        kv_i64(&w, "steps_done", m->u.end.steps_done);
        kv_str(&w, "message", m->u.end.message);
        break;
    case TP_MSG_HEARTBEAT:
        kv_u64(&w, "dropped", m->u.hb.dropped);
        kv_u64(&w, "last_seq", m->u.hb.last_seq);
        kv_i64(&w, "step", m->u.hb.step);
        kv_i64(&w, "total_steps", m->u.hb.total_steps);
        break;
    }
    w_close(&w);
    w_close(&w);
    int rc = w_finish(&w, out, err, errlen);
    w_free(&w);
    return rc;
}

static int check_version(const msgpack_object *root, uint32_t *version, rd *r) {
    if (get_u32(root, "v", 1, version, r)) return -1;
    if (*version != TP_PROTOCOL_VERSION) {
        seterr(r->err, r->errlen, "protocol version %u is not supported (this side speaks %d)",
               *version, TP_PROTOCOL_VERSION);
        return -1;
    }
    return 0;
}

int tp_decode_msg(const void *data, size_t len, tp_msg *m, char *err, size_t errlen) {
    if (!m) return -1;
    memset(m, 0, sizeof *m);
    tree t;
    if (parse(data, len, &t, err, errlen) != 0) return -1;
    rd r = {"message", err, errlen};
    const msgpack_object *root = &t.root, *body;
    int type = 0, rc = -1;
    if (check_map(root, &r) || check_version(root, &m->version, &r) ||
        get_name(root, "t", 1, type_of, 5, &type, &r) ||
        get_str(root, "run", 1, m->run_id, sizeof m->run_id, &r) ||
        get_u64(root, "seq", 1, &m->seq, &r) || get_i64(root, "ts", 1, &m->t_ns, &r) ||
        get_submap(root, "body", 1, &body, &r))
        goto done;
    m->type = (tp_msg_type)(type + 1);
    char where[16];
    snprintf(where, sizeof where, "%s", tp_msg_type_name(m->type));
    rd rb = {where, err, errlen};
    if (check_map(body, &rb)) goto done;
    switch (m->type) {
    case TP_MSG_HEADER: rc = read_header(body, &m->u.header, &rb); break;
    case TP_MSG_STEP: rc = read_step(body, &m->u.step, &rb); break;
    case TP_MSG_KNOB_EVENT: rc = read_knob_event(body, &m->u.knob, &rb); break;
    case TP_MSG_RUN_END: {
        tp_run_end *e = &m->u.end;
        rc = (get_str(body, "status", 1, e->status, sizeof e->status, &rb) ||
              get_int(body, "steps_done", 1, &e->steps_done, &rb) ||
              get_str(body, "message", 0, e->message, sizeof e->message, &rb))
                 ? -1
                 : 0;
        if (rc == 0 && strcmp(e->status, "finished") != 0 && strcmp(e->status, "failed") != 0) {
            seterr(err, errlen, "run_end.status: '%s' is not finished or failed", e->status);
            rc = -1;
        }
        break;
    }
    case TP_MSG_HEARTBEAT: {
        tp_heartbeat *h = &m->u.hb;
        rc = (get_u64(body, "dropped", 1, &h->dropped, &rb) ||
              get_u64(body, "last_seq", 1, &h->last_seq, &rb) ||
              get_int(body, "step", 1, &h->step, &rb) ||
              get_int(body, "total_steps", 1, &h->total_steps, &rb))
                 ? -1
                 : 0;
        break;
    }
    }
done:
    msgpack_zone_destroy(&t.zone);
    if (rc != 0) {
        tp_msg_free(m);
        memset(m, 0, sizeof *m);
    }
    return rc;
}

void tp_msg_free(tp_msg *m) {
    if (!m) return;
    switch (m->type) {
    case TP_MSG_HEADER:
        free(m->u.header.knobs);
        free(m->u.header.reasons);
        m->u.header.knobs = NULL;
        m->u.header.reasons = NULL;
        m->u.header.n_knobs = m->u.header.n_reasons = 0;
        break;
    case TP_MSG_STEP:
        free(m->u.step.layers);
        m->u.step.layers = NULL;
        m->u.step.n_layers = 0;
        break;
    case TP_MSG_KNOB_EVENT:
        free(m->u.knob.changes);
        m->u.knob.changes = NULL;
        m->u.knob.n_changes = 0;
        break;
    default: break;
    }
}

/* ------------------------------------------------------------------ */
/* Control                                                             */
/* ------------------------------------------------------------------ */

int tp_encode_request(const tp_request *q, tp_buf *out, char *err, size_t errlen) {
    if (!q || !out) {
        seterr(err, errlen, "encode: NULL argument");
        return -1;
    }
    if (q->op < TP_OP_GET_STATE || q->op > TP_OP_REPLAY) {
        seterr(err, errlen, "encode: unknown op %d", (int)q->op);
        return -1;
    }
    writer w;
    w_init(&w);
    w_open(&w, 1);
    kv_u64(&w, "v", q->version ? q->version : TP_PROTOCOL_VERSION);
    kv_str(&w, "op", tp_op_name(q->op));
    if (q->request_id[0]) kv_str(&w, "id", q->request_id);
    if (q->origin[0]) kv_str(&w, "origin", q->origin);
    if (q->op == TP_OP_SET_KNOBS) {
        if (q->expected_version >= 0) kv_i64(&w, "expect", q->expected_version);
        put_changes(&w, "set", q->n_changes, q->changes, 0);
    }
    if (q->op == TP_OP_REPLAY) {
        if (q->run_id[0]) kv_str(&w, "run", q->run_id);
        kv_u64(&w, "from", q->from_seq);
        kv_u64(&w, "to", q->to_seq);
    }
    w_close(&w);
    int rc = w_finish(&w, out, err, errlen);
    w_free(&w);
    return rc;
}

int tp_decode_request(const void *data, size_t len, tp_request *q, char *err, size_t errlen) {
    if (!q) return -1;
    memset(q, 0, sizeof *q);
    q->expected_version = -1;
    tree t;
    if (parse(data, len, &t, err, errlen) != 0) return -1;
    rd r = {"request", err, errlen};
    const msgpack_object *root = &t.root, *arr = NULL;
    int op = 0, rc = -1;
    if (check_map(root, &r) || check_version(root, &q->version, &r) ||
        get_name(root, "op", 1, op_of, 4, &op, &r) ||
        get_str(root, "id", 0, q->request_id, sizeof q->request_id, &r) ||
        get_str(root, "origin", 0, q->origin, sizeof q->origin, &r))
        goto done;
    q->op = (tp_op)(op + 1);
    if (q->op == TP_OP_SET_KNOBS) {
        if (get_int_range(root, "expect", 0, 0, UINT32_MAX, &q->expected_version, &r) < 0 ||
            get_array(root, "set", 1, &arr, &r))
            goto done;
        rd rs = {"request.set", err, errlen};
        if (read_changes(arr, &q->n_changes, &q->changes, &rs)) goto done;
        if (q->n_changes == 0) {
            seterr(err, errlen, "request.set: no knob changes");
            goto done;
        }
    }
    if (q->op == TP_OP_REPLAY) {
        if (get_str(root, "run", 0, q->run_id, sizeof q->run_id, &r) ||
            get_u64(root, "from", 1, &q->from_seq, &r) || get_u64(root, "to", 1, &q->to_seq, &r))
            goto done;
        if (q->from_seq > q->to_seq) {
            seterr(err, errlen, "request: replay range from %llu > to %llu",
                   (unsigned long long)q->from_seq, (unsigned long long)q->to_seq);
            goto done;
        }
    }
    rc = 0;
done:
    msgpack_zone_destroy(&t.zone);
    if (rc != 0) tp_request_free(q);
    return rc;
}

void tp_request_free(tp_request *q) {
    if (!q) return;
    free(q->changes);
    q->changes = NULL;
    q->n_changes = 0;
}

int tp_encode_reply(const tp_reply *p, tp_buf *out, char *err, size_t errlen) {
    if (!p || !out) {
        seterr(err, errlen, "encode: NULL argument");
        return -1;
    }
    writer w;
    w_init(&w);
    w_open(&w, 1);
    kv_u64(&w, "v", p->version ? p->version : TP_PROTOCOL_VERSION);
    kv_bool(&w, "ok", p->ok);
    if (!p->ok || p->error[0]) kv_str(&w, "error", p->error);
    kv_str(&w, "run", p->run_id);
    kv_i64(&w, "step", p->step);
    kv_i64(&w, "total_steps", p->total_steps);
    kv_u64(&w, "config_version", p->config_version);
    kv_i64(&w, "effective_step", p->effective_step);
    kv_bool(&w, "duplicate", p->duplicate);
    kv_u64(&w, "last_seq", p->last_seq);
    kv_u64(&w, "dropped", p->dropped);
    if (p->has_config) put_config(&w, "config", &p->config);
    if (p->n_messages > 0) {
        kv_array(&w, "messages");
        for (int i = 0; i < p->n_messages; i++) w_bin(&w, p->messages[i].data, p->messages[i].len);
        w_close(&w);
        kv_u64(&w, "replay_first_missing", p->replay_first_missing);
        kv_u64(&w, "replay_missing", p->replay_missing);
    } else if (p->replay_missing) {
        kv_array(&w, "messages");
        w_close(&w);
        kv_u64(&w, "replay_first_missing", p->replay_first_missing);
        kv_u64(&w, "replay_missing", p->replay_missing);
    }
    w_close(&w);
    int rc = w_finish(&w, out, err, errlen);
    w_free(&w);
    return rc;
}

int tp_decode_reply(const void *data, size_t len, tp_reply *p, char *err, size_t errlen) {
    if (!p) return -1;
    memset(p, 0, sizeof *p);
    tree t;
    if (parse(data, len, &t, err, errlen) != 0) return -1;
    rd r = {"reply", err, errlen};
    const msgpack_object *root = &t.root, *cfg, *arr;
    int rc = -1;
    if (check_map(root, &r) || check_version(root, &p->version, &r) ||
        get_bool(root, "ok", 1, &p->ok, &r) ||
        get_str(root, "error", 0, p->error, sizeof p->error, &r) ||
        get_str(root, "run", 1, p->run_id, sizeof p->run_id, &r) ||
        get_int(root, "step", 1, &p->step, &r) ||
        get_int(root, "total_steps", 1, &p->total_steps, &r) ||
        get_u32(root, "config_version", 1, &p->config_version, &r) ||
        get_int(root, "effective_step", 1, &p->effective_step, &r) ||
        get_bool(root, "duplicate", 0, &p->duplicate, &r) ||
        get_u64(root, "last_seq", 1, &p->last_seq, &r) ||
        get_u64(root, "dropped", 1, &p->dropped, &r) ||
        get_u64(root, "replay_first_missing", 0, &p->replay_first_missing, &r) ||
        get_u64(root, "replay_missing", 0, &p->replay_missing, &r) ||
        get_submap(root, "config", 0, &cfg, &r) || get_array(root, "messages", 0, &arr, &r))
        goto done;
    if (cfg) {
        rd rc2 = {"reply.config", err, errlen};
        if (read_config(cfg, &p->config, &rc2)) goto done;
        p->has_config = 1;
    }
    if (arr && arr->via.array.size) {
        p->messages = calloc(arr->via.array.size, sizeof *p->messages);
        if (!p->messages) {
            seterr(err, errlen, "out of memory");
            goto done;
        }
        for (uint32_t i = 0; i < arr->via.array.size; i++) {
            const msgpack_object *o = &arr->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_BIN) {
                wrong(&r, "messages[]", "bin", o);
                goto done;
            }
            p->n_messages = (int)i + 1;
            if (buf_append(&p->messages[i], o->via.bin.ptr, o->via.bin.size) != 0) {
                seterr(err, errlen, "out of memory");
                goto done;
            }
        }
    }
    rc = 0;
done:
    msgpack_zone_destroy(&t.zone);
    if (rc != 0) tp_reply_free(p);
    return rc;
}

void tp_reply_free(tp_reply *p) {
    if (!p) return;
    for (int i = 0; i < p->n_messages; i++) tp_buf_free(&p->messages[i]);
    free(p->messages);
    p->messages = NULL;
    p->n_messages = 0;
}

/* ------------------------------------------------------------------ */
/* Text lines (`taylorscope tap`)                                      */
/* ------------------------------------------------------------------ */

static void tx(tp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tx(tp_buf *b, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = sizeof line - 1;
    buf_append(b, line, (size_t)n);
}

/* key=value with value quoted (and " \ escaped) when it holds spaces. */
static void tx_str(tp_buf *b, const char *key, const char *v) {
    int plain = *v != '\0';
    for (const char *p = v; *p; p++)
        if (*p == ' ' || *p == '"' || *p == '\\' || *p == '=' || (unsigned char)*p < 0x20) plain = 0;
    if (plain) {
        tx(b, " %s=%s", key, v);
        return;
    }
    tx(b, " %s=\"", key);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\') buf_append(b, "\\", 1);
        if ((unsigned char)*p < 0x20)
            buf_append(b, " ", 1);
        else
            buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}

/* Numbers: %.6g, and nan / inf / -inf spelled out. */
static void tx_num(tp_buf *b, const char *key, double v) {
    if (isnan(v))
        tx(b, " %s=nan", key);
    else if (isinf(v))
        tx(b, " %s=%s", key, v > 0 ? "inf" : "-inf");
    else
        tx(b, " %s=%.6g", key, v);
}

int tp_msg_to_text(const tp_msg *m, tp_buf *out) {
    if (!m || !out) return -1;
    out->len = 0;
    if (buf_append(out, "", 0) != 0) return -1;
    tx(out, "seq=%llu run=%s type=%s", (unsigned long long)m->seq, m->run_id,
       tp_msg_type_name(m->type));
    switch (m->type) {
    case TP_MSG_HEADER: {
        const tp_header *h = &m->u.header;
        tx_str(out, "model", h->model_name);
        tx_str(out, "sampler", h->sampler);
        tx_str(out, "backend", h->backend);
        tx(out, " heads=%d head_dim=%d layers=%d tokens=%d steps=%d knobs=%d config_version=%u "
                "last_step=%d",
           h->model.heads, h->model.head_dim, h->model.n_double + h->model.n_single,
           h->model.text_tokens + h->model.grid_h * h->model.grid_w, h->total_steps, h->n_knobs,
           h->config_version, h->last_step);
        char buf[64];
        const tk_knob *mk = tk_knob_find("mode");
        if (mk) tx(out, " mode=%s", tk_config_format(&h->current, mk, buf, sizeof buf));
        tx_str(out, "agent", h->agent_id);
        break;
    }
    case TP_MSG_STEP: {
        const tp_step *s = &m->u.step;
        tx(out, " step=%d", s->step);
        tx_num(out, "sigma", s->sigma);
        tx_num(out, "wall_ms", s->wall_ms);
        tx_num(out, "attn_ms", s->attn_ms);
        tx(out, " config_version=%u calls=%d exact=%d taylor=%d hybrid=%d fallback=%d",
           s->config_version, s->calls, s->n_exact, s->n_taylor, s->n_hybrid, s->n_fallback);
        if (s->have & TP_HAVE_QUALITY) {
            tx_num(out, "q_raw_mean", s->quality_raw_mean);
            tx_num(out, "q_raw_p95", s->quality_raw_p95);
            tx_num(out, "q_raw_max", s->quality_raw_max);
            tx_num(out, "q_eff_mean", s->quality_eff_mean);
            tx_num(out, "cos_min", s->cos_min);
        }
        if (s->have & TP_HAVE_DENOMS) {
            tx_num(out, "den_min", s->den_min);
            tx(out, " den_le_eps=%lld den_nonfinite=%lld", (long long)s->den_le_eps,
               (long long)s->den_nonfinite);
        }
        if (s->have & TP_HAVE_QK) tx_num(out, "qk_p99", s->qk_p99);
        if (s->have & TP_HAVE_WINDOW) tx_num(out, "wm_mean", s->window_mass_mean);
        tx(out, " window=%d", s->window);
        tx_num(out, "w", s->w);
        int any = 0;
        for (int i = 1; i < TK_REASON_COUNT; i++)
            if (s->reason_counts[i]) {
                tx(out, "%s%s:%lld", any ? "," : " reasons=", tk_reason_name((tk_reason)i),
                   (long long)s->reason_counts[i]);
                any = 1;
            }
        tx(out, " layers=%d", s->n_layers);
        break;
    }
    case TP_MSG_KNOB_EVENT: {
        const tp_knob_event *k = &m->u.knob;
        tx(out, " status=%s config_version=%u effective_step=%d", tp_knob_status_name(k->status),
           k->config_version, k->effective_step);
        tx_str(out, "origin", k->origin);
        if (k->request_id[0]) tx_str(out, "id", k->request_id);
        for (int i = 0; i < k->n_changes; i++) {
            char key[TP_NAME_LEN + 8];
            snprintf(key, sizeof key, "set.%s", k->changes[i].name);
            tx_str(out, key, k->changes[i].value);
            if (k->changes[i].old_value[0]) {
                snprintf(key, sizeof key, "was.%s", k->changes[i].name);
                tx_str(out, key, k->changes[i].old_value);
            }
        }
        if (k->error[0]) tx_str(out, "error", k->error);
        break;
    }
    case TP_MSG_RUN_END:
        tx_str(out, "status", m->u.end.status);
        tx(out, " steps_done=%d", m->u.end.steps_done);
        if (m->u.end.message[0]) tx_str(out, "message", m->u.end.message);
        break;
    case TP_MSG_HEARTBEAT:
        tx(out, " dropped=%llu last_seq=%llu step=%d total_steps=%d",
           (unsigned long long)m->u.hb.dropped, (unsigned long long)m->u.hb.last_seq, m->u.hb.step,
           m->u.hb.total_steps);
        break;
    }
    return buf_append(out, "", 0);
}

/* ------------------------------------------------------------------ */
/* Endpoints                                                           */
/* ------------------------------------------------------------------ */

/* Creates dir 0700 or checks an existing one: a real directory (not a
 * link), owned by us, no access for group or others. */
static int private_dir(const char *dir, char *err, size_t errlen) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        seterr(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(dir, &st) != 0) {
        seterr(err, errlen, "cannot stat %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        seterr(err, errlen, "%s exists and is not a directory", dir);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        seterr(err, errlen, "%s is owned by uid %u, not by us (uid %u); refusing to use it", dir,
               (unsigned)st.st_uid, (unsigned)geteuid());
        return -1;
    }
    if (st.st_mode & 077) {
        seterr(err, errlen, "%s has mode %03o; it must be 0700 (chmod 700 %s)", dir,
               (unsigned)(st.st_mode & 0777), dir);
        return -1;
    }
    return 0;
}

int tp_default_endpoints(const char *name, char *pub_url, size_t pub_len, char *ctl_url,
                         size_t ctl_len, char *err, size_t errlen) {
    if (!name || !*name) name = "default";
    if (strlen(name) > 32) {
        seterr(err, errlen, "endpoint name '%s' is longer than 32 characters", name);
        return -1;
    }
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.')) {
            seterr(err, errlen, "endpoint name '%s': use letters, digits, '-', '_', '.'", name);
            return -1;
        }
    char dir[256];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (xdg && *xdg == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) &&
        strlen(xdg) + 16 < sizeof dir)
        snprintf(dir, sizeof dir, "%s/taylorscope", xdg);
    else
        snprintf(dir, sizeof dir, "/tmp/taylorscope-%u", (unsigned)geteuid());
    if (private_dir(dir, err, errlen) != 0) return -1;
    /* sockaddr_un.sun_path holds 108 bytes */
    if (strlen(dir) + strlen(name) + 12 > 107) {
        seterr(err, errlen, "ipc path under %s is too long for a unix socket", dir);
        return -1;
    }
    if (pub_url) snprintf(pub_url, pub_len, "ipc://%s/agent-%s.pub", dir, name);
    if (ctl_url) snprintf(ctl_url, ctl_len, "ipc://%s/agent-%s.ctl", dir, name);
    return 0;
}

/* Whether a process listens on the unix socket at path: it is in
 * /proc/net/unix with the listening flag (__SO_ACCEPTCON, 0x10000). A file
 * left by a killed agent is not listed. Connecting to find out is no
 * option: nng's ipc listener stalls on a peer that connects and closes
 * without its handshake, and an nng dial would count as a subscriber. */
static int socket_listening(const char *path) {
    FILE *f = fopen("/proc/net/unix", "r");
    if (!f) return 1; /* cannot tell: assume it is */
    char line[1024];
    int listening = 0;
    size_t plen = strlen(path);
    while (!listening && fgets(line, sizeof line, f)) {
        unsigned long flags = 0;
        char *p = line, *end;
        /* Num: RefCount Protocol Flags Type St Inode Path */
        for (int field = 0; field < 3 && p; field++) p = strchr(p + 1, ' ');
        if (!p) continue;
        flags = strtoul(p, &end, 16);
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == ' ')) line[--n] = '\0';
        if (n >= plen + 1 && line[n - plen - 1] == ' ' && !strcmp(line + n - plen, path) &&
            (flags & 0x10000))
            listening = 1;
    }
    fclose(f);
    return listening;
}

int tp_find_default_agents(char *urls, size_t url_len, int max, int *found, char *dir,
                           size_t dir_len, char *err, size_t errlen) {
    char pub[512];
    *found = 0;
    if (tp_default_endpoints("default", pub, sizeof pub, NULL, 0, err, errlen) != 0) return -1;
    char *folder = pub + 6; /* after ipc:// */
    *strrchr(folder, '/') = '\0';
    if (dir) snprintf(dir, dir_len, "%s", folder);
    DIR *d = opendir(folder);
    if (!d) {
        seterr(err, errlen, "cannot read %s: %s", folder, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 11 || strncmp(e->d_name, "agent-", 6) != 0 || strcmp(e->d_name + n - 4, ".pub") != 0)
            continue;
        char path[768];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", folder, e->d_name);
        if (stat(path, &st) != 0 || !S_ISSOCK(st.st_mode) || !socket_listening(path)) continue;
        if (*found < max) snprintf(urls + (size_t)*found * url_len, url_len, "ipc://%s", path);
        (*found)++;
    }
    closedir(d);
    return 0;
}

int tp_control_url_for(const char *pub_url, char *ctl_url, size_t len, char *err, size_t errlen) {
    if (!pub_url || !ctl_url || len == 0) {
        seterr(err, errlen, "no URL");
        return -1;
    }
    size_t n = strlen(pub_url);
    if (!strncmp(pub_url, "ipc://", 6) || !strncmp(pub_url, "inproc://", 9)) {
        const char *base = strchr(pub_url, ':') + 3;
        if (!*base) {
            seterr(err, errlen, "'%s' names no path", pub_url);
            return -1;
        }
        int w;
        if (n > 4 && !strcmp(pub_url + n - 4, ".pub"))
            w = snprintf(ctl_url, len, "%.*s.ctl", (int)(n - 4), pub_url);
        else
            w = snprintf(ctl_url, len, "%s.ctl", pub_url);
        if (w < 0 || (size_t)w >= len) {
            seterr(err, errlen, "control URL for '%s' is too long", pub_url);
            return -1;
        }
        return 0;
    }
    if (!strncmp(pub_url, "tcp://", 6) || !strncmp(pub_url, "tcp4://", 7) ||
        !strncmp(pub_url, "tcp6://", 7)) {
        const char *colon = strrchr(pub_url, ':');
        const char *scheme_end = strstr(pub_url, "://");
        char *end = NULL;
        if (!colon || colon < scheme_end + 3) goto bad_tcp;
        errno = 0;
        long port = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || *end || port < 1 || port > 65534) goto bad_tcp;
        int w = snprintf(ctl_url, len, "%.*s:%ld", (int)(colon - pub_url), pub_url, port + 1);
        if (w < 0 || (size_t)w >= len) {
            seterr(err, errlen, "control URL for '%s' is too long", pub_url);
            return -1;
        }
        return 0;
    bad_tcp:
        seterr(err, errlen, "'%s': a tcp URL needs a port in 1..65534 (tcp://HOST:PORT)", pub_url);
        return -1;
    }
    seterr(err, errlen, "'%s': unsupported URL (use ipc://PATH or tcp://HOST:PORT)", pub_url);
    return -1;
}
