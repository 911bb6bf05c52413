/* tensorfile_test.c -- .npy and .safetensors: round trips of every format and
 * dtype, the f16/bf16 conversions, and many corrupt files, each refused with a
 * message naming the file and the problem. */
#include "harness.h"
#include "tensorfile.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int i;
    char *p = buf[i++ % 8];
    snprintf(p, 512, "%s/%s", th_tmpdir(), name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    TH_CHECKF(f != NULL, "cannot create %s", path);
    TH_CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

/* An npy file with the given dict text (padded as numpy does) and n data bytes. */
static void write_npy_raw(const char *path, int major, const char *dict, const void *data, size_t n) {
    unsigned char buf[4096];
    size_t pre = major == 1 ? 10 : 12;
    size_t dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    TH_CHECK(total + n <= sizeof buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    size_t hl = total - pre;
    for (size_t i = 0; i < pre - 8; i++) buf[8 + i] = (unsigned char)(hl >> (8 * i));
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', total - pre - dl);
    buf[total - 1] = '\n';
    if (n) memcpy(buf + total, data, n);
    write_bytes(path, buf, total + n);
}

/* A safetensors file with the given JSON header and n data bytes. */
static void write_st_raw(const char *path, const char *json, const void *data, size_t n) {
    unsigned char buf[8192];
    size_t jl = strlen(json);
    TH_CHECK(8 + jl + n <= sizeof buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)jl >> (8 * i));
    memcpy(buf + 8, json, jl);
    if (n) memcpy(buf + 8 + jl, data, n);
    write_bytes(path, buf, 8 + jl + n);
}

/* Reading path must fail with a message naming the file and containing want. */
static void expect_refused(const char *path, const char *name, const char *want) {
    tkf_tensor t;
    char err[512] = "";
    int rc = tkf_read(path, name, &t, err, sizeof err);
    TH_CHECKF(rc != 0, "%s was accepted (expected an error about '%s')", path, want);
    TH_CHECKF(t.data == NULL, "failed read left data behind");
    TH_CHECKF(strstr(err, path) != NULL, "message does not name the file: %s", err);
    TH_CHECKF(strstr(err, want) != NULL, "message '%s' does not mention '%s'", err, want);
    tkf_free(&t);
}

static float data6[6] = {1.0f, -2.5f, 0.125f, 3.0f, -0.0f, 1024.0f};

static void test_npy_f32_and_f16_round_trip_exactly(void) {
    int64_t shape[4] = {1, 2, 3, 1};
    tk_dtype dts[2] = {TK_DTYPE_F32, TK_DTYPE_F16};
    for (int d = 0; d < 2; d++) {
        char *p = tmp_path(d ? "rt16.npy" : "rt32.npy");
        char err[256];
        TH_CHECKF(tkf_write(p, NULL, 4, shape, data6, dts[d], err, sizeof err) == 0, "%s", err);
        tkf_tensor t;
        TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
        TH_EQ_INT(t.ndim, 4);
        TH_EQ_INT(t.count, 6);
        TH_EQ_INT(t.shape[2], 3);
        TH_EQ_INT(t.file_dtype, dts[d]);
        for (int i = 0; i < 6; i++) TH_CHECK(memcmp(&t.data[i], &data6[i], 4) == 0);
        tkf_free(&t);
    }
}

static void test_npy_header_is_what_numpy_writes(void) {
    char *p = tmp_path("hdr.npy");
    int64_t shape[1] = {5};
    float v[5] = {0};
    char err[256];
    TH_CHECK(tkf_write(p, NULL, 1, shape, v, TK_DTYPE_F32, err, sizeof err) == 0);
    FILE *f = fopen(p, "rb");
    unsigned char b[128];
    TH_CHECK(fread(b, 1, 128, f) == 128);
    fclose(f);
    TH_CHECK(memcmp(b, "\x93NUMPY\x01\x00", 8) == 0);
    int hl = b[8] | b[9] << 8;
    TH_EQ_INT((10 + hl) % 64, 0);
    TH_CHECK(b[10 + hl - 1] == '\n');
    TH_CHECK(memcmp(b + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 57) == 0);
}

static void test_npy_scalar_and_empty_shapes_round_trip(void) {
    char err[256];
    float one = 7.5f;
    char *p = tmp_path("scalar.npy");
    TH_CHECK(tkf_write(p, NULL, 0, NULL, &one, TK_DTYPE_F32, err, sizeof err) == 0);
    tkf_tensor t;
    TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(t.ndim, 0);
    TH_EQ_INT(t.count, 1);
    TH_NEAR(t.data[0], 7.5, 0);
    tkf_free(&t);
    int64_t shape[2] = {3, 0};
    p = tmp_path("empty.npy");
    TH_CHECK(tkf_write(p, NULL, 2, shape, NULL, TK_DTYPE_F32, err, sizeof err) == 0);
    TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(t.count, 0);
    TH_EQ_INT(t.shape[0], 3);
    tkf_free(&t);
}

static void test_npy_big_endian_and_version_2_headers_are_read(void) {
    unsigned char be[8] = {0x3f, 0x80, 0, 0, 0xc0, 0x20, 0, 0}; /* 1.0, -2.5 big-endian */
    char *p = tmp_path("be.npy");
    write_npy_raw(p, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", be, 8);
    tkf_tensor t;
    char err[256];
    TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
    TH_NEAR(t.data[0], 1.0, 0);
    TH_NEAR(t.data[1], -2.5, 0);
    tkf_free(&t);
    uint16_t h[2] = {0x3c00, 0xc000}; /* 1.0, -2.0 as f16 little-endian */
    p = tmp_path("v2.npy");
    write_npy_raw(p, 2, "{'shape': (1, 2), 'fortran_order': False, 'descr': '<f2'}", h, 4);
    TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(t.file_dtype, TK_DTYPE_F16);
    TH_NEAR(t.data[1], -2.0, 0);
    tkf_free(&t);
}

static void test_safetensors_each_dtype_round_trips(void) {
    int64_t shape[2] = {2, 3};
    tk_dtype dts[3] = {TK_DTYPE_F32, TK_DTYPE_F16, TK_DTYPE_BF16};
    for (int d = 0; d < 3; d++) {
        char *p = tmp_path("rt.safetensors");
        char err[256];
        TH_CHECKF(tkf_write(p, "o", 2, shape, data6, dts[d], err, sizeof err) == 0, "%s", err);
        tkf_tensor t;
        TH_CHECKF(tkf_read(p, NULL, &t, err, sizeof err) == 0, "%s", err);
        TH_EQ_INT(t.file_dtype, dts[d]);
        TH_EQ_INT(t.count, 6);
        TH_EQ_INT(t.shape[1], 3);
        for (int i = 0; i < 6; i++) TH_CHECK(memcmp(&t.data[i], &data6[i], 4) == 0);
        tkf_free(&t);
        TH_CHECKF(tkf_read(p, "o", &t, err, sizeof err) == 0, "%s", err);
        tkf_free(&t);
    }
}

static void test_safetensors_holds_several_named_tensors(void) {
    float a[3] = {1, 2, 3}, b[2] = {-4, 5};
    tkf_tensor ta = {1, {3}, 3, TK_DTYPE_F32, a}, tb = {2, {1, 2}, 2, TK_DTYPE_F32, b};
    const tkf_tensor *ts[2] = {&ta, &tb};
    const char *names[2] = {"q", "k \"quoted\""};
    char *p = tmp_path("multi.safetensors");
    char err[256];
    TH_CHECKF(tkf_write_safetensors(p, 2, names, ts, TK_DTYPE_F32, err, sizeof err) == 0, "%s", err);
    tkf_tensor t;
    TH_CHECKF(tkf_read(p, "k \"quoted\"", &t, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(t.count, 2);
    TH_NEAR(t.data[0], -4, 0);
    tkf_free(&t);
    expect_refused(p, NULL, "holds 2 tensors");
    expect_refused(p, "v", "no tensor named 'v'");
    char **list;
    int n;
    TH_CHECK(tkf_safetensors_names(p, &list, &n, err, sizeof err) == 0);
    TH_EQ_INT(n, 2);
    TH_EQ_STR(list[0], "q");
    TH_EQ_STR(list[1], "k \"quoted\"");
    free(list);
    /* the header is 8-byte aligned, as the format asks */
    FILE *f = fopen(p, "rb");
    unsigned char pre[8];
    TH_CHECK(fread(pre, 1, 8, f) == 8);
    fclose(f);
    TH_EQ_INT(pre[0] % 8, 0);
}

static void test_half_conversions_round_to_nearest_even_and_keep_specials(void) {
    TH_EQ_INT(tkf_f32_to_f16(1.0f), 0x3c00);
    TH_EQ_INT(tkf_f32_to_f16(-2.0f), 0xc000);
    TH_EQ_INT(tkf_f32_to_f16(65504.0f), 0x7bff);
    TH_EQ_INT(tkf_f32_to_f16(65520.0f), 0x7c00);  /* rounds up to Inf */
    TH_EQ_INT(tkf_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
    TH_EQ_INT(tkf_f32_to_f16(2.9802322e-8f), 0x0000); /* half of it: tie to even = 0 */
    TH_EQ_INT(tkf_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);     /* tie, even stays */
    TH_EQ_INT(tkf_f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);     /* tie, odd rounds up */
    TH_EQ_INT(tkf_f32_to_f16(-0.0f), 0x8000);
    TH_CHECK(isnan(tkf_f16_to_f32(tkf_f32_to_f16(NAN))));
    TH_CHECK(isinf(tkf_f16_to_f32(tkf_f32_to_f16(INFINITY))));
    TH_NEAR(tkf_f16_to_f32(0x0001), 5.9604644775390625e-8, 0);
    TH_NEAR(tkf_f16_to_f32(0x7bff), 65504, 0);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite half survives the round trip */
        TH_EQ_INT(tkf_f32_to_f16(tkf_f16_to_f32((uint16_t)h)), h);
    TH_EQ_INT(tkf_f32_to_bf16(1.0f), 0x3f80);
    TH_EQ_INT(tkf_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80); /* tie, even stays */
    TH_EQ_INT(tkf_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    TH_CHECK(isnan(tkf_bf16_to_f32(tkf_f32_to_bf16(NAN))));
    TH_NEAR(tkf_bf16_to_f32(0xc020), -2.5, 0);
}

static void test_corrupt_npy_files_are_refused_with_the_problem_named(void) {
    float d2[2] = {1, 2};
    char *p = tmp_path("bad.npy");
    write_bytes(p, "", 0);
    expect_refused(p, NULL, "too short");
    write_bytes(p, "NOTNUMPYxxxxxxxxxxxx", 20);
    expect_refused(p, NULL, "bad magic");
    write_bytes(p, "\x93NUMPY\x09\x00\x10\x00{}", 12);
    expect_refused(p, NULL, "version 9");
    write_bytes(p, "\x93NUMPY\x01\x00\xff\xff{'descr'", 17);
    expect_refused(p, NULL, "runs past the end");
    write_bytes(p, "\x93NUMPY\x02\x00\xff\xff\xff\xff{'", 14);
    expect_refused(p, NULL, "runs past the end");
    write_npy_raw(p, 1, "['descr', '<f4']", d2, 8);
    expect_refused(p, NULL, "not a dict");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False}", d2, 8);
    expect_refused(p, NULL, "missing key 'shape'");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", d2, 8);
    expect_refused(p, NULL, "fortran_order");
    write_npy_raw(p, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", d2, 8);
    expect_refused(p, NULL, "dtype '<f8'");
    write_npy_raw(p, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", d2, 8);
    expect_refused(p, NULL, "not supported");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (nan, 2), }", d2, 8);
    expect_refused(p, NULL, "shape entry 0");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", d2, 8);
    expect_refused(p, NULL, "shape entry 1");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }", d2, 8);
    expect_refused(p, NULL, "malformed");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", d2, 8);
    expect_refused(p, NULL, "too large");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", d2, 8);
    expect_refused(p, NULL, "overflows");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3037000499, 3037000499), }", d2, 8);
    expect_refused(p, NULL, "needs");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", d2, 4);
    expect_refused(p, NULL, "more than 8 dimensions");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", d2, 8);
    expect_refused(p, NULL, "needs 12 data bytes, file has 8");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", d2, 8);
    expect_refused(p, NULL, "needs 4 data bytes, file has 8");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", d2, 8);
    expect_refused(p, NULL, "unexpected key 'x'");
    write_npy_raw(p, 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", d2, 8);
    expect_refused(p, NULL, "duplicate key");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", d2, 8);
    expect_refused(p, NULL, "trailing");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,", d2, 8);
    expect_refused(p, NULL, "shape entry 1");
    expect_refused(tmp_path("missing.npy"), NULL, "cannot open");
    expect_refused(th_tmpdir(), NULL, "unknown tensor file extension");
    char *dir = tmp_path("adir.npy");
    mkdir(dir, 0700);
    expect_refused(dir, NULL, "not a regular file");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", d2, 8);
    expect_refused(p, "q", "one unnamed tensor");
}

static void test_corrupt_safetensors_files_are_refused_with_the_problem_named(void) {
    float d2[2] = {1, 2};
    char *p = tmp_path("bad.safetensors");
    write_bytes(p, "\x01\x02", 2);
    expect_refused(p, NULL, "too short");
    write_bytes(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    expect_refused(p, NULL, "runs past the end");
    write_bytes(p, "\x00\x00\x00\x00\x01\x00\x00\x00{}", 10);
    expect_refused(p, NULL, "runs past the end");
    write_st_raw(p, "not json", NULL, 0);
    expect_refused(p, NULL, "bad JSON header");
    write_st_raw(p, "[1,2]", NULL, 0);
    expect_refused(p, NULL, "not an object");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", d2, 8);
    expect_refused(p, NULL, "missing 'data_offsets'");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "not supported");
    write_st_raw(p, "{\"x\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "unknown dtype 'Q7'");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "shape entry 0");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "shape entry 0");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[NaN],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "invalid value");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", d2, 8);
    expect_refused(p, NULL, "outside the 8-byte data buffer");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", d2, 8);
    expect_refused(p, NULL, "outside");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "needs 12 bytes, data_offsets give 8");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "overflows");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", d2, 8);
    expect_refused(p, NULL, "appears twice");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", d2, 8);
    expect_refused(p, NULL, "9 dimensions");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", d2, 8);
    expect_refused(p, NULL, "unterminated object");
    write_st_raw(p, "{\"x\\q\":{}}", NULL, 0);
    expect_refused(p, NULL, "bad escape");
    write_st_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} extra", d2, 8);
    expect_refused(p, NULL, "trailing bytes");
    write_st_raw(p, "{\"__metadata__\":[1],\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d2, 8);
    expect_refused(p, NULL, "__metadata__");
    char deep[4000];
    size_t n = 0;
    deep[n++] = '{';
    memcpy(deep + n, "\"x\":", 4);
    n += 4;
    for (int i = 0; i < 1000; i++) deep[n++] = '[';
    deep[n] = '\0';
    write_st_raw(p, deep, NULL, 0);
    expect_refused(p, NULL, "nested too deeply");
}

static void test_metadata_and_escapes_in_a_valid_header_are_accepted(void) {
    float d2[2] = {3, 4};
    char *p = tmp_path("meta.safetensors");
    write_st_raw(p, "{\"__metadata__\":{\"format\":\"pt\"},\"k\\u00e9\\ud83d\\ude00\":"
                    "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}   ", d2, 8);
    tkf_tensor t;
    char err[256];
    TH_CHECKF(tkf_read(p, "k\xc3\xa9\xf0\x9f\x98\x80", &t, err, sizeof err) == 0, "%s", err);
    TH_NEAR(t.data[1], 4, 0);
    tkf_free(&t);
}

/* Every truncation of a valid file is refused, and random byte flips never crash. */
static void test_truncated_and_flipped_files_never_crash(void) {
    float v[12];
    for (int i = 0; i < 12; i++) v[i] = (float)i;
    int64_t shape[2] = {3, 4};
    const char *names[2] = {"ok.npy", "ok.safetensors"};
    for (int f = 0; f < 2; f++) {
        char *p = tmp_path(names[f]);
        char err[512];
        TH_CHECK(tkf_write(p, "t", 2, shape, v, TK_DTYPE_F16, err, sizeof err) == 0);
        FILE *fp = fopen(p, "rb");
        unsigned char buf[1024];
        size_t n = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        char *q = tmp_path(f ? "cut.safetensors" : "cut.npy");
        for (size_t len = 0; len < n; len++) {
            write_bytes(q, buf, len);
            tkf_tensor t;
            TH_CHECKF(tkf_read(q, NULL, &t, err, sizeof err) != 0, "truncated at %zu accepted", len);
            TH_CHECK(strstr(err, q) != NULL);
        }
        srand(7);
        for (int trial = 0; trial < 400; trial++) {
            unsigned char c[1024];
            memcpy(c, buf, n);
            for (int k = 0; k < 3; k++) c[(size_t)rand() % n] ^= (unsigned char)(1 + rand() % 255);
            write_bytes(q, c, n);
            tkf_tensor t;
            if (tkf_read(q, NULL, &t, err, sizeof err) == 0) {
                TH_CHECK(t.count >= 0 && t.data != NULL);
                tkf_free(&t);
            } else {
                TH_CHECK(err[0] != '\0');
            }
        }
    }
}

static int count_tmp_files(void) {
    DIR *d = opendir(th_tmpdir());
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

static void test_a_failed_write_leaves_the_old_file_and_no_temporary(void) {
    char *p = tmp_path("keep.npy");
    int64_t shape[1] = {2};
    float v[2] = {9, 8};
    char err[256];
    TH_CHECK(tkf_write(p, NULL, 1, shape, v, TK_DTYPE_F32, err, sizeof err) == 0);
    float w[2] = {1, 1};
    TH_CHECK(tkf_write(p, NULL, 1, shape, w, TK_DTYPE_BF16, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "bfloat16") != NULL);
    int64_t neg[1] = {-1};
    TH_CHECK(tkf_write(p, NULL, 1, neg, w, TK_DTYPE_F32, err, sizeof err) != 0);
    tkf_tensor t;
    TH_CHECK(tkf_read(p, NULL, &t, err, sizeof err) == 0);
    TH_NEAR(t.data[0], 9, 0);
    tkf_free(&t);
    TH_CHECK(tkf_write(tmp_path("no/such/dir/o.npy"), NULL, 1, shape, v, TK_DTYPE_F32, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "no/such/dir/o.npy") != NULL);
    TH_CHECK(tkf_write(tmp_path("o.txt"), NULL, 1, shape, v, TK_DTYPE_F32, err, sizeof err) != 0);
    TH_EQ_INT(count_tmp_files(), 0);
    struct stat st;
    TH_CHECK(stat(tmp_path("o.txt"), &st) != 0);
}

static const th_test tests[] = {
    TH_TEST(test_npy_f32_and_f16_round_trip_exactly),
    TH_TEST(test_npy_header_is_what_numpy_writes),
    TH_TEST(test_npy_scalar_and_empty_shapes_round_trip),
    TH_TEST(test_npy_big_endian_and_version_2_headers_are_read),
    TH_TEST(test_safetensors_each_dtype_round_trips),
    TH_TEST(test_safetensors_holds_several_named_tensors),
    TH_TEST(test_half_conversions_round_to_nearest_even_and_keep_specials),
    TH_TEST(test_corrupt_npy_files_are_refused_with_the_problem_named),
    TH_TEST(test_corrupt_safetensors_files_are_refused_with_the_problem_named),
    TH_TEST(test_metadata_and_escapes_in_a_valid_header_are_accepted),
    TH_TEST(test_truncated_and_flipped_files_never_crash),
    TH_TEST(test_a_failed_write_leaves_the_old_file_and_no_temporary),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }
