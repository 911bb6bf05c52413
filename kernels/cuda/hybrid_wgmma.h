// hybrid_wgmma.h -- the hybrid's 2d local kernel on wgmma (hybrid_wgmma.cu),
// called by hybrid.cu. Launchers return 0, 1 (CUDA error, text in err) or 3
// (unsupported, text in err).
#ifndef TK_CUDA_HYBRID_WGMMA_H
#define TK_CUDA_HYBRID_WGMMA_H

#include "cuda_internal.h"

// Key-list slots a block keeps in shared memory (text keys padded to 128,
// then the rectangle padded to 128): larger windows take hybrid.cu's kernel.
#define TKC_HYB_WG_LIST_MAX 2048

struct tkc_hyb_wg_args {
    const void *q, *k, *v;   // [B,H,N,D] device, dtype
    const void *qp, *kp;     // FARM 2: projected q', k' [B*H][N][G], dtype
    const uint8_t *mask;     // [B,N] or NULL (nonzero = kept)
    const void *ftab;        // FARM 2: the far field's feature table and f16 S|z (tkc_far_tables)
    const __half *fsh;
    const unsigned *fcolmax;
    int fR, fRpad;
    void *o;                 // [B,H,N,D] dtype: only the image rows are written
    const uint8_t *only;     // recompute pass: write only rows flagged here (NULL = all)
    uint8_t *flags;          // FARM 2: rows whose far denominator came out <= 0 (set to 1)
    tkc_den_stats *den;      // FARM 2: counters of the far denominators
    int B, H, N, D, G, T, gh, gw, r;
    int farm;                // 0 no far term, 2 fused normalized far term
    int dtype;               // TK_DTYPE_BF16 or TK_DTYPE_F16 (output in the same type)
    float scale_log2, w;
    float c0, c1, c2, c3;    // kappa_P coefficients (P <= 4)
    int skip_tiles;          // a warpgroup skips the tiles none of its queries sees (0: computes all)
    const unsigned *bad;     // device word or NULL, final before the kernel starts: nonzero = write nothing (hybrid.cu)
};

// 1 when tkc_hyb_wg_launch takes this shape (2d window only).
int tkc_hyb_wg_supported(int D, int G, int farm, int dtype, int out_dtype, int T, int gh, int gw, int r);
int tkc_hyb_wg_launch(const tkc_hyb_wg_args *a, cudaStream_t st, char *err, size_t errlen);

#endif
