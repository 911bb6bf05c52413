/* proto_test.c -- the wire codec: every message survives a round trip
 * (NaN and Inf included, absent figures stay absent), and bad input of every
 * kind is an error string, never a crash. */
#include "harness.h"
#include "proto.h"

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int same_num(double a, double b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b;
}
#define CHECK_SAME(a, b) TH_CHECKF(same_num((a), (b)), "%s = %g, expected %g", #a, (double)(a), (double)(b))

static void fill_step(tp_msg *m, tp_layer_row *rows, int n_rows) {
    memset(m, 0, sizeof *m);
    m->type = TP_MSG_STEP;
    snprintf(m->run_id, sizeof m->run_id, "run-abc");
    m->seq = 42;
    m->t_ns = 1764250000123456789LL;
    tp_step *s = &m->u.step;
    s->step = 7;
    s->sigma = 0.625;
    s->wall_ms = 12.5;
    s->attn_ms = INFINITY;
    s->config_version = 3;
    s->calls = 57;
    s->n_exact = 1, s->n_taylor = 50, s->n_hybrid = 0, s->n_fallback = 6;
    s->reason_counts[TK_REASON_BELOW_MIN_TOKENS] = 4;
    s->reason_counts[TK_REASON_DENOMINATOR_TOO_SMALL] = 2;
    s->probe_fallbacks = 2;
    s->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS;
    s->quality_raw_mean = NAN;
    s->quality_raw_p50 = 0.01, s->quality_raw_p95 = 0.2, s->quality_raw_max = INFINITY;
    s->quality_eff_mean = 0.001, s->quality_eff_p50 = 0.002, s->quality_eff_p95 = 0.003;
    s->quality_eff_max = 0.004, s->cos_min = 0.99;
    s->den_min = -INFINITY, s->den_max = 1e30, s->den_mean = NAN;
    s->den_le_eps = 17, s->den_nonfinite = 3;
    s->window = -1;
    s->w = 0.5;
    for (int i = 0; i < n_rows; i++) {
        tp_layer_row *l = &rows[i];
        memset(l, 0, sizeof *l);
        l->layer = i;
        l->calls = 1;
        l->path = i % 2 ? TK_PATH_TAYLOR : TK_PATH_FALLBACK;
        l->reason = i % 2 ? TK_REASON_NONE : TK_REASON_SKIPPED_BY_LAYER;
        l->fallbacks = i % 2 ? 0 : 1;
        l->have = i % 2 ? (TP_HAVE_QUALITY | TP_HAVE_QK | TP_HAVE_TIME) : 0;
        l->quality_raw_mean = i == 1 ? NAN : 0.1 * i;
        l->quality_raw_max = -INFINITY;
        l->quality_eff_mean = 0.5, l->quality_eff_max = 0.6, l->cos_min = 0.7;
        l->qk_p99 = 3.5, l->qk_max = INFINITY, l->q_norm_mean = 11, l->k_norm_mean = 12;
        l->window = 8;
        l->w = 1;
        l->R = 6545;
        l->attn_ms = 0.25;
    }
    s->n_layers = n_rows;
    s->layers = rows;
}

static void roundtrip(const tp_msg *in, tp_msg *out) {
    tp_buf b = {0};
    char err[256] = "";
    TH_CHECKF(tp_encode_msg(in, &b, err, sizeof err) == 0, "encode: %s", err);
    TH_CHECKF(tp_decode_msg(b.data, b.len, out, err, sizeof err) == 0, "decode: %s", err);
    tp_buf_free(&b);
}

static void test_step_survives_a_round_trip_with_nan_and_inf(void) {
    tp_layer_row rows[57];
    tp_msg m, d;
    fill_step(&m, rows, 57);
    roundtrip(&m, &d);
    TH_EQ_INT(d.type, TP_MSG_STEP);
    TH_EQ_INT(d.version, TP_PROTOCOL_VERSION);
    TH_EQ_STR(d.run_id, "run-abc");
    TH_EQ_INT(d.seq, 42);
    TH_EQ_INT(d.t_ns, 1764250000123456789LL);
    const tp_step *a = &m.u.step, *b = &d.u.step;
    TH_EQ_INT(b->step, 7);
    CHECK_SAME(b->sigma, 0.625);
    CHECK_SAME(b->attn_ms, INFINITY);
    TH_EQ_INT(b->config_version, 3);
    TH_EQ_INT(b->n_taylor, 50);
    TH_EQ_INT(b->n_fallback, 6);
    for (int i = 0; i < TK_REASON_COUNT; i++) TH_EQ_INT(b->reason_counts[i], a->reason_counts[i]);
    TH_EQ_INT(b->have, TP_HAVE_QUALITY | TP_HAVE_DENOMS);
    CHECK_SAME(b->quality_raw_mean, NAN);
    CHECK_SAME(b->quality_raw_max, INFINITY);
    CHECK_SAME(b->den_min, -INFINITY);
    CHECK_SAME(b->den_mean, NAN);
    CHECK_SAME(b->den_max, 1e30);
    TH_EQ_INT(b->den_le_eps, 17);
    /* not reported stays not reported: NaN with the bit clear */
    TH_CHECK(isnan(b->qk_p99));
    TH_CHECK(isnan(b->window_mass_mean));
    TH_EQ_INT(b->n_layers, 57);
    for (int i = 0; i < 57; i++) {
        const tp_layer_row *x = &a->layers[i], *y = &b->layers[i];
        TH_EQ_INT(y->layer, i);
        TH_EQ_INT(y->path, x->path);
        TH_EQ_INT(y->reason, x->reason);
        TH_EQ_INT(y->have, x->have);
        TH_EQ_INT(y->R, 6545);
        if (x->have & TP_HAVE_QUALITY) {
            CHECK_SAME(y->quality_raw_mean, x->quality_raw_mean);
            CHECK_SAME(y->quality_raw_max, -INFINITY);
            CHECK_SAME(y->qk_max, INFINITY);
            CHECK_SAME(y->attn_ms, 0.25);
        } else {
            TH_CHECK(isnan(y->quality_raw_mean));
            TH_CHECK(isnan(y->attn_ms));
        }
    }
    tp_msg_free(&d);
}

static void fill_header(tp_msg *m) {
    memset(m, 0, sizeof *m);
    m->type = TP_MSG_HEADER;
    snprintf(m->run_id, sizeof m->run_id, "r1");
    m->seq = 1;
    tp_header *h = &m->u.header;
    snprintf(h->agent_id, sizeof h->agent_id, "host:123");
    snprintf(h->agent_version, sizeof h->agent_version, "0.1.0");
    snprintf(h->model_name, sizeof h->model_name, "flux1");
    snprintf(h->sampler, sizeof h->sampler, "euler");
    snprintf(h->backend, sizeof h->backend, "cpu");
    h->model = (tp_model){"flux1", 24, 128, 19, 38, 512, 64, 64};
    h->total_steps = 28;
    h->started_ns = 5;
    h->n_knobs = tk_knob_count();
    h->knobs = calloc(h->n_knobs, sizeof *h->knobs);
    for (int i = 0; i < h->n_knobs; i++) {
        const tk_knob *k = tk_knob_at(i);
        tp_knob_desc *d = &h->knobs[i];
        snprintf(d->name, sizeof d->name, "%s", k->name);
        snprintf(d->type, sizeof d->type, "%s", "float");
        snprintf(d->group, sizeof d->group, "%s", k->group);
        d->live = k->live, d->def = k->def, d->min = k->min, d->max = k->max;
        snprintf(d->choices, sizeof d->choices, "%s", k->choices);
        snprintf(d->description, sizeof d->description, "%s", k->description);
    }
    h->n_reasons = TK_REASON_COUNT;
    h->reasons = calloc(TK_REASON_COUNT, sizeof *h->reasons);
    for (int i = 0; i < TK_REASON_COUNT; i++)
        snprintf(h->reasons[i], TP_NAME_LEN, "%s", tk_reason_name((tk_reason)i));
    tk_config_defaults(&h->initial);
    h->current = h->initial;
    h->current.mode = TK_MODE_HYBRID;
    h->current.qk_norm_power = 0.5;
    h->current.qk_normalize = 1;
    h->current.taylor_layer_start = -1;
    h->current.min_tokens = 7;
    h->config_version = 4;
    h->last_step = -1;
}

static void test_header_carries_model_knob_table_reasons_and_configs(void) {
    tp_msg m, d;
    fill_header(&m);
    roundtrip(&m, &d);
    const tp_header *h = &d.u.header;
    TH_EQ_STR(h->agent_id, "host:123");
    TH_EQ_STR(h->backend, "cpu");
    TH_EQ_INT(h->model.heads, 24);
    TH_EQ_INT(h->model.n_single, 38);
    TH_EQ_INT(h->model.grid_w, 64);
    TH_EQ_INT(h->n_knobs, tk_knob_count());
    for (int i = 0; i < h->n_knobs; i++) {
        TH_EQ_STR(h->knobs[i].name, m.u.header.knobs[i].name);
        CHECK_SAME(h->knobs[i].max, m.u.header.knobs[i].max);
        TH_EQ_STR(h->knobs[i].description, m.u.header.knobs[i].description);
    }
    TH_EQ_INT(h->n_reasons, TK_REASON_COUNT);
    TH_EQ_STR(h->reasons[TK_REASON_BACKEND_ERROR], "backend_error");
    TH_CHECK(memcmp(&h->initial, &m.u.header.initial, sizeof h->initial) == 0);
    TH_CHECK(memcmp(&h->current, &m.u.header.current, sizeof h->current) == 0);
    TH_EQ_INT(h->config_version, 4);
    TH_EQ_INT(h->last_step, -1);
    tp_msg_free(&d);
    tp_msg_free(&m);
}

static void test_knob_event_run_end_and_heartbeat_round_trip(void) {
    tp_knob_change ch[2] = {{"qk_norm_power", "0.5", "0"}, {"mode", "hybrid", "taylor"}};
    tp_msg m = {0}, d;
    m.type = TP_MSG_KNOB_EVENT;
    m.seq = 9;
    snprintf(m.run_id, sizeof m.run_id, "r");
    m.u.knob = (tp_knob_event){"req-1", "console", TP_KNOB_APPLIED, 5, 12, "", 2, ch};
    roundtrip(&m, &d);
    TH_EQ_STR(d.u.knob.request_id, "req-1");
    TH_EQ_STR(d.u.knob.origin, "console");
    TH_EQ_INT(d.u.knob.status, TP_KNOB_APPLIED);
    TH_EQ_INT(d.u.knob.config_version, 5);
    TH_EQ_INT(d.u.knob.effective_step, 12);
    TH_EQ_INT(d.u.knob.n_changes, 2);
    TH_EQ_STR(d.u.knob.changes[1].name, "mode");
    TH_EQ_STR(d.u.knob.changes[1].value, "hybrid");
    TH_EQ_STR(d.u.knob.changes[1].old_value, "taylor");
    tp_msg_free(&d);

    m.u.knob.status = TP_KNOB_REJECTED;
    snprintf(m.u.knob.error, sizeof m.u.knob.error, "knob terms: 99 is out of range");
    roundtrip(&m, &d);
    TH_EQ_INT(d.u.knob.status, TP_KNOB_REJECTED);
    TH_EQ_STR(d.u.knob.error, "knob terms: 99 is out of range");
    tp_msg_free(&d);

    tp_msg e = {0};
    e.type = TP_MSG_RUN_END;
    e.u.end = (tp_run_end){"failed", 3, "host crashed"};
    roundtrip(&e, &d);
    TH_EQ_STR(d.u.end.status, "failed");
    TH_EQ_INT(d.u.end.steps_done, 3);
    TH_EQ_STR(d.u.end.message, "host crashed");

    tp_msg hb = {0};
    hb.type = TP_MSG_HEARTBEAT;
    hb.u.hb = (tp_heartbeat){UINT64_C(1) << 40, 99, 4, 28};
    roundtrip(&hb, &d);
    TH_EQ_INT(d.u.hb.dropped, UINT64_C(1) << 40);
    TH_EQ_INT(d.u.hb.last_seq, 99);
    TH_EQ_INT(d.u.hb.step, 4);
}

static void test_requests_and_replies_round_trip(void) {
    tp_knob_change ch[1] = {{"qk_norm_clip", "8", ""}};
    tp_request q = {0}, dq;
    q.op = TP_OP_SET_KNOBS;
    snprintf(q.request_id, sizeof q.request_id, "id-7");
    snprintf(q.origin, sizeof q.origin, "cli");
    q.expected_version = 3;
    q.n_changes = 1;
    q.changes = ch;
    tp_buf b = {0};
    char err[256];
    TH_CHECK(tp_encode_request(&q, &b, err, sizeof err) == 0);
    TH_CHECKF(tp_decode_request(b.data, b.len, &dq, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(dq.op, TP_OP_SET_KNOBS);
    TH_EQ_STR(dq.request_id, "id-7");
    TH_EQ_INT(dq.expected_version, 3);
    TH_EQ_INT(dq.n_changes, 1);
    TH_EQ_STR(dq.changes[0].value, "8");
    tp_request_free(&dq);

    q.expected_version = -1;
    TH_CHECK(tp_encode_request(&q, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_request(b.data, b.len, &dq, err, sizeof err) == 0);
    TH_EQ_INT(dq.expected_version, -1);
    tp_request_free(&dq);

    tp_request rq = {0};
    rq.op = TP_OP_REPLAY;
    rq.from_seq = 5, rq.to_seq = 9;
    TH_CHECK(tp_encode_request(&rq, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_request(b.data, b.len, &dq, err, sizeof err) == 0);
    TH_EQ_INT(dq.op, TP_OP_REPLAY);
    TH_EQ_INT(dq.from_seq, 5);
    TH_EQ_INT(dq.to_seq, 9);

    tp_buf msgs[2] = {{0}, {0}};
    tp_msg hb = {0};
    hb.type = TP_MSG_HEARTBEAT;
    hb.seq = 5;
    TH_CHECK(tp_encode_msg(&hb, &msgs[0], err, sizeof err) == 0);
    hb.seq = 6;
    TH_CHECK(tp_encode_msg(&hb, &msgs[1], err, sizeof err) == 0);
    tp_reply p = {0}, dp;
    p.ok = 1;
    snprintf(p.run_id, sizeof p.run_id, "r9");
    p.step = 3, p.total_steps = 28, p.config_version = 2, p.effective_step = 4;
    p.last_seq = 99, p.dropped = 1;
    p.has_config = 1;
    tk_config_defaults(&p.config);
    p.config.scale_mul = 0.75;
    p.n_messages = 2;
    p.messages = msgs;
    p.replay_first_missing = 7, p.replay_missing = 3;
    TH_CHECK(tp_encode_reply(&p, &b, err, sizeof err) == 0);
    TH_CHECKF(tp_decode_reply(b.data, b.len, &dp, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(dp.ok, 1);
    TH_EQ_STR(dp.run_id, "r9");
    TH_EQ_INT(dp.effective_step, 4);
    TH_EQ_INT(dp.has_config, 1);
    CHECK_SAME(dp.config.scale_mul, 0.75);
    TH_EQ_INT(dp.n_messages, 2);
    TH_EQ_INT(dp.replay_missing, 3);
    tp_msg d;
    TH_CHECK(tp_decode_msg(dp.messages[1].data, dp.messages[1].len, &d, err, sizeof err) == 0);
    TH_EQ_INT(d.seq, 6);
    tp_reply_free(&dp);
    tp_buf_free(&msgs[0]);
    tp_buf_free(&msgs[1]);

    tp_reply e = {0};
    snprintf(e.error, sizeof e.error, "knob terms: out of range");
    TH_CHECK(tp_encode_reply(&e, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_reply(b.data, b.len, &dp, err, sizeof err) == 0);
    TH_EQ_INT(dp.ok, 0);
    TH_EQ_STR(dp.error, "knob terms: out of range");
    tp_buf_free(&b);
}

static void test_every_truncation_of_a_step_is_an_error_not_a_crash(void) {
    tp_layer_row rows[4];
    tp_msg m, d;
    fill_step(&m, rows, 4);
    tp_buf b = {0};
    char err[256];
    TH_CHECK(tp_encode_msg(&m, &b, err, sizeof err) == 0);
    for (size_t n = 0; n < b.len; n++) {
        err[0] = 0;
        TH_CHECKF(tp_decode_msg(b.data, n, &d, err, sizeof err) != 0, "%zu of %zu bytes decoded", n,
                  b.len);
        TH_CHECK(err[0] != 0 || n == 0);
    }
    /* and trailing garbage is refused too */
    char *longer = malloc(b.len + 1);
    memcpy(longer, b.data, b.len);
    longer[b.len] = 0x01;
    TH_CHECK(tp_decode_msg(longer, b.len + 1, &d, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "trailing") != NULL);
    free(longer);
    tp_buf_free(&b);
}

static void test_random_bytes_and_bit_flips_never_crash(void) {
    tp_layer_row rows[3];
    tp_msg m, d;
    fill_step(&m, rows, 3);
    tp_buf b = {0};
    char err[256];
    TH_CHECK(tp_encode_msg(&m, &b, err, sizeof err) == 0);
    uint64_t x = 88172645463325252ULL;
    char junk[512];
    int decoded = 0;
    for (int it = 0; it < 20000; it++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (it % 2) {
            size_t n = 1 + x % sizeof junk;
            for (size_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                junk[i] = (char)x;
            }
            if (tp_decode_msg(junk, n, &d, err, sizeof err) == 0) tp_msg_free(&d);
            tp_request q;
            if (tp_decode_request(junk, n, &q, err, sizeof err) == 0) tp_request_free(&q);
        } else {
            char *c = malloc(b.len);
            memcpy(c, b.data, b.len);
            c[x % b.len] ^= (char)(1u << (x >> 32) % 8);
            if (tp_decode_msg(c, b.len, &d, err, sizeof err) == 0) {
                decoded++;
                tp_msg_free(&d);
            }
            free(c);
        }
    }
    TH_CHECK(decoded < 10000); /* flips that hit a type byte are caught */
    tp_buf_free(&b);
}

static void test_a_tiny_message_claiming_a_huge_array_is_refused(void) {
    /* {"v":1, "t": [array32 of 4 billion elements]} in 17 bytes */
    const unsigned char evil[] = {0x82, 0xa1, 'v', 0x01, 0xa1, 't', 0xdd, 0xff, 0xff, 0xff, 0xff,
                                  0x01, 0x02, 0x03, 0x04, 0x05, 0x06};
    tp_msg d;
    char err[256] = "";
    TH_CHECK(tp_decode_msg(evil, sizeof evil, &d, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "truncated") != NULL);
}

static void test_oversized_input_is_refused_before_parsing(void) {
    size_t n = TP_MAX_MESSAGE_BYTES + 1;
    char *big = calloc(1, n);
    big[0] = (char)0x80;
    tp_msg d;
    char err[256] = "";
    TH_CHECK(tp_decode_msg(big, n, &d, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "larger than") != NULL);
    tp_request q;
    TH_CHECK(tp_decode_request(big, n, &q, err, sizeof err) != 0);
    free(big);
}

static void test_wrong_version_is_refused_with_both_versions_named(void) {
    tp_msg hb = {0}, d;
    hb.type = TP_MSG_HEARTBEAT;
    hb.version = 99;
    tp_buf b = {0};
    char err[256];
    TH_CHECK(tp_encode_msg(&hb, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_msg(b.data, b.len, &d, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "99") && strstr(err, "version"), "%s", err);
    tp_request q = {0}, dq;
    q.op = TP_OP_GET_STATE;
    q.version = 2;
    TH_CHECK(tp_encode_request(&q, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_request(b.data, b.len, &dq, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "version") != NULL);
    tp_buf_free(&b);
}

/* Packs a hand-made map with msgpack-c directly. */
static void pack_request(msgpack_sbuffer *sb, const char *op, int version, int wrong_id_type) {
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, version);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, op, strlen(op));
    msgpack_pack_str_with_body(&pk, "id", 2);
    if (wrong_id_type)
        msgpack_pack_int(&pk, 5);
    else
        msgpack_pack_str_with_body(&pk, "x", 1);
}

static void test_wrong_types_and_unknown_ops_are_named_in_the_error(void) {
    msgpack_sbuffer sb;
    tp_request q;
    char err[256];
    pack_request(&sb, "get_state", 1, 1);
    TH_CHECK(tp_decode_request(sb.data, sb.size, &q, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "id") && strstr(err, "string"), "%s", err);
    msgpack_sbuffer_destroy(&sb);
    pack_request(&sb, "reboot", 1, 0);
    TH_CHECK(tp_decode_request(sb.data, sb.size, &q, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "reboot") != NULL, "%s", err);
    msgpack_sbuffer_destroy(&sb);
    pack_request(&sb, "get_state", 1, 0);
    TH_CHECK(tp_decode_request(sb.data, sb.size, &q, err, sizeof err) == 0);
    msgpack_sbuffer_destroy(&sb);
    /* set_knobs without changes */
    tp_request s = {0};
    s.op = TP_OP_SET_KNOBS;
    tp_buf b = {0};
    TH_CHECK(tp_encode_request(&s, &b, err, sizeof err) == 0);
    TH_CHECK(tp_decode_request(b.data, b.len, &q, err, sizeof err) != 0);
    tp_buf_free(&b);
}

static void test_text_line_names_type_and_spells_non_finite_values(void) {
    tp_layer_row rows[2];
    tp_msg m;
    fill_step(&m, rows, 2);
    tp_buf b = {0};
    TH_CHECK(tp_msg_to_text(&m, &b) == 0);
    TH_CHECK(strchr(b.data, '\n') == NULL);
    TH_CHECKF(strstr(b.data, "type=step") && strstr(b.data, "seq=42") && strstr(b.data, "step=7"),
              "%s", b.data);
    TH_CHECKF(strstr(b.data, "q_raw_mean=nan") && strstr(b.data, "den_min=-inf") &&
                  strstr(b.data, "attn_ms=inf"),
              "%s", b.data);
    TH_CHECKF(strstr(b.data, "below_min_tokens:4"), "%s", b.data);
    TH_CHECK(strstr(b.data, "qk_p99") == NULL); /* not reported: not printed */
    tp_msg e = {0};
    e.type = TP_MSG_RUN_END;
    e.u.end = (tp_run_end){"failed", 3, "a \"bad\" end"};
    TH_CHECK(tp_msg_to_text(&e, &b) == 0);
    TH_CHECKF(strstr(b.data, "message=\"a \\\"bad\\\" end\""), "%s", b.data);
    tp_buf_free(&b);
}

static void test_default_endpoint_lives_in_a_private_directory(void) {
    char rt[300];
    snprintf(rt, sizeof rt, "%s/rt", th_tmpdir());
    TH_CHECK(mkdir(rt, 0700) == 0);
    setenv("XDG_RUNTIME_DIR", rt, 1);
    char pub[256], ctl[256], err[256];
    TH_CHECKF(tp_default_endpoints("sim", pub, sizeof pub, ctl, sizeof ctl, err, sizeof err) == 0,
              "%s", err);
    char want[400];
    snprintf(want, sizeof want, "ipc://%s/taylorscope/agent-sim.pub", rt);
    TH_EQ_STR(pub, want);
    snprintf(want, sizeof want, "ipc://%s/taylorscope/agent-sim.ctl", rt);
    TH_EQ_STR(ctl, want);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/taylorscope", rt);
    struct stat st;
    TH_CHECK(stat(dir, &st) == 0);
    TH_EQ_INT(st.st_mode & 0777, 0700);
    /* a loosened directory is refused with a hint */
    TH_CHECK(chmod(dir, 0755) == 0);
    TH_CHECK(tp_default_endpoints("sim", pub, sizeof pub, ctl, sizeof ctl, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "0700") != NULL, "%s", err);
    TH_CHECK(chmod(dir, 0700) == 0);
    /* a bad name */
    TH_CHECK(tp_default_endpoints("../x", pub, sizeof pub, ctl, sizeof ctl, err, sizeof err) != 0);
    /* a file in the way */
    rmdir(dir);
    FILE *f = fopen(dir, "w");
    TH_CHECK(f != NULL);
    fclose(f);
    TH_CHECK(tp_default_endpoints("sim", pub, sizeof pub, ctl, sizeof ctl, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "not a directory") != NULL, "%s", err);
}

static void test_running_agents_are_found_on_the_default_endpoints_and_stale_sockets_skipped(void) {
    char rt[300], err[256], dir[256], urls[4][256];
    snprintf(rt, sizeof rt, "%s/rt2", th_tmpdir());
    TH_CHECK(mkdir(rt, 0700) == 0);
    setenv("XDG_RUNTIME_DIR", rt, 1);
    int found = -1;
    TH_CHECKF(tp_find_default_agents(&urls[0][0], sizeof urls[0], 4, &found, dir, sizeof dir, err,
                                     sizeof err) == 0, "%s", err);
    TH_EQ_INT(found, 0);
    /* a socket a killed agent left behind: bound, then closed */
    char path[400];
    snprintf(path, sizeof path, "%s/agent-dead.pub", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    TH_CHECK(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    TH_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    close(fd);
    /* two live agents */
    nng_socket s1, s2;
    char pub1[256], pub2[256];
    TH_CHECK(tp_default_endpoints("one", pub1, sizeof pub1, NULL, 0, err, sizeof err) == 0);
    TH_CHECK(tp_default_endpoints("two", pub2, sizeof pub2, NULL, 0, err, sizeof err) == 0);
    TH_CHECK(nng_pub0_open(&s1) == 0 && nng_listen(s1, pub1, NULL, 0) == 0);
    TH_CHECK(tp_find_default_agents(&urls[0][0], sizeof urls[0], 4, &found, NULL, 0, err, sizeof err) == 0);
    TH_EQ_INT(found, 1);
    TH_EQ_STR(urls[0], pub1);
    TH_CHECK(nng_pub0_open(&s2) == 0 && nng_listen(s2, pub2, NULL, 0) == 0);
    TH_CHECK(tp_find_default_agents(&urls[0][0], sizeof urls[0], 1, &found, NULL, 0, err, sizeof err) == 0);
    TH_EQ_INT(found, 2); /* more than max: counted, one written */
    nng_close(s1);
    nng_close(s2);
}

static void test_control_url_derives_from_the_pub_url(void) {
    char ctl[256], err[256];
    TH_CHECK(tp_control_url_for("ipc:///tmp/x/agent-a.pub", ctl, sizeof ctl, err, sizeof err) == 0);
    TH_EQ_STR(ctl, "ipc:///tmp/x/agent-a.ctl");
    TH_CHECK(tp_control_url_for("ipc:///tmp/sock", ctl, sizeof ctl, err, sizeof err) == 0);
    TH_EQ_STR(ctl, "ipc:///tmp/sock.ctl");
    TH_CHECK(tp_control_url_for("tcp://127.0.0.1:5555", ctl, sizeof ctl, err, sizeof err) == 0);
    TH_EQ_STR(ctl, "tcp://127.0.0.1:5556");
    TH_CHECK(tp_control_url_for("tcp://:7000", ctl, sizeof ctl, err, sizeof err) == 0);
    TH_EQ_STR(ctl, "tcp://:7001");
    TH_CHECK(tp_control_url_for("tcp://host", ctl, sizeof ctl, err, sizeof err) != 0);
    TH_CHECK(tp_control_url_for("tcp://h:65535", ctl, sizeof ctl, err, sizeof err) != 0);
    TH_CHECK(tp_control_url_for("http://x", ctl, sizeof ctl, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "unsupported") != NULL);
}

static const th_test tests[] = {
    TH_TEST(test_step_survives_a_round_trip_with_nan_and_inf),
    TH_TEST(test_header_carries_model_knob_table_reasons_and_configs),
    TH_TEST(test_knob_event_run_end_and_heartbeat_round_trip),
    TH_TEST(test_requests_and_replies_round_trip),
    TH_TEST(test_every_truncation_of_a_step_is_an_error_not_a_crash),
    TH_TEST(test_random_bytes_and_bit_flips_never_crash),
    TH_TEST(test_a_tiny_message_claiming_a_huge_array_is_refused),
    TH_TEST(test_oversized_input_is_refused_before_parsing),
    TH_TEST(test_wrong_version_is_refused_with_both_versions_named),
    TH_TEST(test_wrong_types_and_unknown_ops_are_named_in_the_error),
    TH_TEST(test_text_line_names_type_and_spells_non_finite_values),
    TH_TEST(test_default_endpoint_lives_in_a_private_directory),
    TH_TEST(test_running_agents_are_found_on_the_default_endpoints_and_stale_sockets_skipped),
    TH_TEST(test_control_url_derives_from_the_pub_url),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }
