/*
 * tensorfile.h -- read and write tensors as .npy and .safetensors files.
 * Prefix tkf_.
 *
 * Reading converts to float32 in memory and keeps the shape and the file's
 * dtype. Writing converts float32 to the requested dtype and is atomic: the
 * bytes go to a temporary file in the target's directory, which is renamed
 * over the target only when complete (a failed write leaves no file behind
 * and an existing target untouched).
 *
 * Formats (the format code is ours; no library parses them):
 *
 *   .npy, versions 1.0, 2.0 and 3.0 (read), 1.0 or 2.0 (written: 2.0 only
 *   when the header exceeds 65535 bytes):
 *     bytes 0-5   "\x93NUMPY"
 *     byte  6,7   major, minor version
 *     then        header length: uint16 LE (v1) or uint32 LE (v2, v3)
 *     then        header: a Python dict literal, e.g.
 *                 {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *                 padded with spaces and ending in '\n'; magic + length +
 *                 header is a multiple of 64 bytes when we write it.
 *     then        the data, C order, exactly prod(shape) * itemsize bytes.
 *   Dtypes: '<f4' / '>f4' / '=f4' (float32) and '<f2' / '>f2' / '=f2'
 *   (float16); big-endian data is byte-swapped. fortran_order True is refused.
 *
 *   .safetensors:
 *     bytes 0-7   N, uint64 LE: length of the JSON header
 *     bytes 8..   N bytes of UTF-8 JSON: an object mapping each tensor name to
 *                 {"dtype": "F32"|"F16"|"BF16", "shape": [d0, ...],
 *                  "data_offsets": [begin, end]} plus an optional
 *                 "__metadata__" object of string values; padded with spaces.
 *     then        the data buffer; offsets are relative to its start, every
 *                 tensor is C order little-endian, end - begin = prod * size.
 *   A file holding several tensors is read by name; without a name it must
 *   hold exactly one tensor.
 *
 * Every failure (cannot open, bad magic, header length past the end of the
 * file, unparsable header, unsupported dtype, fortran order, a shape entry
 * that is not a non-negative integer, too many dimensions, a shape whose
 * product overflows, data size that does not match the shape, offsets out of
 * the buffer, unknown tensor name) returns nonzero with a message naming the
 * file and the problem. Nothing a file contains can crash the reader.
 */
#ifndef TK_TENSORFILE_H
#define TK_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TKF_MAX_DIMS 8

typedef struct {
    int ndim;                      /* 0 (a scalar) .. TKF_MAX_DIMS */
    int64_t shape[TKF_MAX_DIMS];   /* shape[0..ndim-1] */
    int64_t count;                 /* product of the shape (1 for a scalar) */
    tk_dtype file_dtype;           /* dtype found in the file (read) */
    float *data;                   /* count floats, C order; owned, tkf_free releases */
} tkf_tensor;

typedef enum { TKF_FORMAT_UNKNOWN = 0, TKF_FORMAT_NPY = 1, TKF_FORMAT_SAFETENSORS = 2 } tkf_format;

/* Format from the file name's extension (".npy", ".safetensors"). */
tkf_format tkf_format_of(const char *path);

/*
 * Reads one tensor. name: the tensor's name in a .safetensors file, or NULL
 * (the file must hold exactly one tensor); must be NULL for .npy. On success
 * returns 0 and fills *out (caller releases with tkf_free); on failure
 * returns nonzero, fills err ("FILE: problem") and leaves *out empty
 * (data NULL; tkf_free is still safe).
 */
int tkf_read(const char *path, const char *name, tkf_tensor *out, char *err, size_t errlen);

/* Releases out->data and empties *t. Safe on an empty or zeroed tensor. */
void tkf_free(tkf_tensor *t);

/*
 * Writes one tensor (shape[0..ndim-1], count floats at data) to path in the
 * format of its extension, converting to dtype (.npy: F32 or F16 only;
 * .safetensors: F32, F16, BF16). name: the safetensors tensor name (NULL =
 * "tensor"); ignored for .npy. Atomic (see the top of this file). Returns 0,
 * or nonzero with err filled and no file created or changed.
 */
int tkf_write(const char *path, const char *name, int ndim, const int64_t *shape, const float *data,
              tk_dtype dtype, char *err, size_t errlen);

/*
 * Writes n tensors into one .safetensors file (names must be distinct,
 * non-empty and not "__metadata__"). Same conversion and atomicity rules.
 */
int tkf_write_safetensors(const char *path, int n, const char *const *names,
                          const tkf_tensor *const *tensors, tk_dtype dtype, char *err,
                          size_t errlen);

/*
 * Names of the tensors of a .safetensors file, in header order. On success
 * *names_out is one allocation holding n pointers followed by the strings
 * (the caller frees it with free()), *n_out the count.
 */
int tkf_safetensors_names(const char *path, char ***names_out, int *n_out, char *err,
                          size_t errlen);

/* Conversions (round to nearest even; NaN stays NaN, overflow goes to Inf). */
uint16_t tkf_f32_to_f16(float f);
float tkf_f16_to_f32(uint16_t h);
uint16_t tkf_f32_to_bf16(float f);
float tkf_bf16_to_f32(uint16_t b);

#ifdef __cplusplus
}
#endif
#endif
