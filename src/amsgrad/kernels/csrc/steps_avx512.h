/* The compressed step in AVX-512 intrinsics, 16 elements per instruction: exactly what step_block
   and encode_moments compute (the same correctly rounded float32 operations in the same order;
   tests/quantization/test_kernels.py holds both to the reference bit for bit, the generic loops
   through a build with AMSGRAD_PLAIN_LOOPS), for every full block of every format and θ. The block formats take
   a sixth fewer vector instructions than gcc makes of the generic loops (int8 AMSGrad: 84 per 16
   elements against 100) and a fifth less time: the byte codes are
   widened to 32-bit lanes in one instruction (gcc goes through 16-bit ones, and spills), the
   4-bit codes are decoded by a 16-entry table lookup (vpermps), the maximum's NaN rule is vmaxps
   and one fix-up, and the encoders' clamps and selects are folded into masked instructions.
   Every stream is prefetched ahead, which the generic loops do not need as much: the hardware
   prefetcher alone leaves memory idle while a block is encoded. Included by compressed_step.c
   where the compiler targets AVX-512 (F, BW, DQ, VL) and the maps of v are minifloats. */
#include <immintrin.h>

#define VSET(x) _mm512_set1_epi32((int)(x))

/* How far ahead of the block being stepped its streams are prefetched, in elements (of 256 to
   2048, the fastest at 16M elements on 2 threads of a Zen 4). */
enum { PREFETCH_AHEAD = 1024 };

/* The 16 codes of elements [16 j, 16 j + 16) of a block, one per 32-bit lane (4-bit: unpacked,
   the code in the low 4 bits and the other nibble above it, which the table lookups ignore). */
static inline __m512i avx_codes(const int EIGHT, const uint8_t *block, int j) {
    if (EIGHT) return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(block + 16 * j)));
    __m128i packed = _mm_loadl_epi64((const __m128i *)(block + 8 * j));
    __m512i pairs = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(packed, packed));
    return _mm512_srlv_epi32(pairs, _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
}

/* m: a sign-magnitude minifloat (code 0 and the negative zero: ±0); times the block's scale. */
static inline __m512 avx_decode_m(const int EIGHT, __m512i c, __m512 s, __m512 table) {
    if (!EIGHT) return _mm512_mul_ps(_mm512_permutexvar_ps(c, table), s);
    const __m512i magnitude = VSET(m8_COUNT - 1);
    __mmask16 nonzero = _mm512_test_epi32_mask(c, magnitude);
    __m512i bits = _mm512_maskz_add_epi32(nonzero, _mm512_slli_epi32(_mm512_and_si512(c, magnitude), m8_MINIFLOAT_SHIFT),
                                          VSET((uint32_t)m8_MINIFLOAT_OFFSET << m8_MINIFLOAT_SHIFT));
    __m512i sign = _mm512_slli_epi32(c, 32 - m8_BITS);
    bits = _mm512_ternarylogic_epi32(bits, sign, VSET(0x80000000u), 0xD8); /* the sign bit from `sign` */
    return _mm512_mul_ps(_mm512_castsi512_ps(bits), s);
}

/* v and the maximum: an unsigned minifloat, times the block's (prescaled) scale. */
static inline __m512 avx_decode_v(const int EIGHT, __m512i c, __m512 t, __m512 table) {
    if (!EIGHT) return _mm512_mul_ps(_mm512_permutexvar_ps(c, table), t);
    __m512i bits = _mm512_add_epi32(_mm512_slli_epi32(c, v8_MINIFLOAT_SHIFT),
                                    VSET((uint32_t)v8_MINIFLOAT_OFFSET << v8_MINIFLOAT_SHIFT));
    return _mm512_mul_ps(_mm512_castsi512_ps(bits), t);
}

/* floor((a + half) / 2^shift) - offset, as one add and an arithmetic shift (offset >= 1, so no overflow). */
#define AVX_NEAREST(a, P) _mm512_srai_epi32(_mm512_add_epi32((a), \
    VSET((1u << (P##_MINIFLOAT_SHIFT - 1)) - ((uint32_t)P##_MINIFLOAT_OFFSET << P##_MINIFLOAT_SHIFT))), P##_MINIFLOAT_SHIFT)

static inline __m512i avx_abs_bits(__m512 x) { return _mm512_and_si512(_mm512_castps_si512(x), VSET(0x7FFFFFFFu)); }

static inline __m512i avx_lowbias32(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, VSET(0x7feb352du));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, VSET(0x846ca68bu));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

static inline __m512 avx_load_bf16(const uint16_t *at) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)at)), 16));
}

/* bf16_stochastic of 16 values whose element indices are `index`; NaN: the canonical one. */
static inline void avx_store_bf16_stochastic(uint16_t *to, __m512 x, __m512i index, uint32_t key) {
    __m512i noise = _mm512_srli_epi32(avx_lowbias32(_mm512_add_epi32(index, VSET(key))), 16);
    __m512i top = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(x), noise), 16);
    top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), VSET(0x7FC0));
    _mm256_storeu_si256((__m256i *)to, _mm512_cvtepi32_epi16(top));
}

/* bf16_up: the next bfloat16 up for a positive value with bits below the top 16 (NaN: canonical). */
static inline void avx_store_bf16_up(uint16_t *to, __m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __mmask16 bump = _mm512_mask_cmp_ps_mask(_mm512_test_epi32_mask(bits, VSET(0xFFFF)), x, _mm512_setzero_ps(),
                                             _CMP_GE_OQ); /* (-0 has no low bits) */
    __m512i top = _mm512_srli_epi32(_mm512_mask_add_epi32(bits, bump, bits, VSET(0x10000)), 16);
    top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), VSET(0x7FC0));
    _mm256_storeu_si256((__m256i *)to, _mm512_cvtepi32_epi16(top));
}

/* bf16_nearest: to nearest, ties to even (NaN: canonical). */
static inline void avx_store_bf16_nearest(uint16_t *to, __m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), VSET(1));
    __m512i top = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, VSET(0x7FFF)), odd), 16);
    top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), VSET(0x7FC0));
    _mm256_storeu_si256((__m256i *)to, _mm512_cvtepi32_epi16(top));
}

/* θ or g of elements [e, e + 16): float32 or bfloat16 (THETA). */
static inline __m512 avx_load_theta(const int THETA, const void *x, int64_t e) {
    return THETA == THETA_F32 ? _mm512_loadu_ps((const float *)x + e) : avx_load_bf16((const uint16_t *)x + e);
}

static inline void avx_store_theta(const int THETA, void *p, int64_t e, __m512 theta, __m512i index, uint32_t key) {
    if (THETA == THETA_F32) _mm512_storeu_ps((float *)p + e, theta);
    else if (THETA == THETA_BF16) avx_store_bf16_nearest((uint16_t *)p + e, theta);
    else avx_store_bf16_stochastic((uint16_t *)p + e, theta, index, key);
}

static inline __m512i avx_indices(int64_t e) {
    return _mm512_add_epi32(VSET((uint32_t)e), _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}

/* Prefetches a stream PREFETCH_AHEAD elements ahead of element e (a multiple of 16, from a
   line-aligned start), once per 64-byte line: BYTES16 is how many bytes 16 of its elements take.
   (Always inlined: gcc takes a function that only prefetches for one without side effects, and
   drops its calls.) */
static inline __attribute__((always_inline)) void avx_prefetch(const void *stream, int64_t e, const int BYTES16) {
    const uint64_t at = (uint64_t)e * BYTES16 / 16; /* (unsigned: shifts and masks, no signed division) */
    if (at % 64 < (uint64_t)BYTES16)
        _mm_prefetch((const char *)stream + at + (uint64_t)PREFETCH_AHEAD * BYTES16 / 16, _MM_HINT_T0);
}

/* encode_nearest_m8/m4 of y, in 32-bit lanes. */
static inline __m512i avx_encode_m(const int EIGHT, __m512 y) {
    __m512i bits = _mm512_castps_si512(y), a = avx_abs_bits(y);
    __mmask16 first = _mm512_cmpge_epi32_mask(a, VSET(EIGHT ? m8_HALF_SMALLEST_BITS : m4_HALF_SMALLEST_BITS));
    __m512i k = EIGHT ? AVX_NEAREST(a, m8) : AVX_NEAREST(a, m4);
    k = _mm512_min_epi32(_mm512_maskz_max_epi32(first, k, VSET(1)), VSET(EIGHT ? m8_COUNT - 1 : m4_COUNT - 1));
    __m512i sign = _mm512_srli_epi32(bits, 32 - (EIGHT ? m8_BITS : m4_BITS));
    return _mm512_mask_ternarylogic_epi32(k, first, sign, VSET(EIGHT ? m8_COUNT : m4_COUNT), 0xF8); /* k | sign */
}

/* encode_nearest_v8/v4 of x (times r), clamped to the codes, in 32-bit lanes. */
static inline __m512i avx_encode_v(const int EIGHT, __m512 y) {
    __m512i a = avx_abs_bits(y);
    __m512i k = _mm512_max_epi32(EIGHT ? AVX_NEAREST(a, v8) : AVX_NEAREST(a, v4), _mm512_setzero_si512());
    return _mm512_min_epi32(k, VSET(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1));
}

/* 16 codes (32-bit lanes) stored at elements [16 j, 16 j + 16) of a block. */
static inline void avx_store_codes(const int EIGHT, uint8_t *block, int j, __m512i k) {
    __m128i bytes = _mm512_cvtepi32_epi8(k);
    if (EIGHT) { _mm_storeu_si128((__m128i *)(block + 16 * j), bytes); return; }
    __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x1001)); /* even | odd << 4, per 16 bits */
    _mm_storel_epi64((__m128i *)(block + 8 * j), _mm_packus_epi16(pairs, pairs));
}

static inline float avx_block_max(__m512i top) {
    int32_t t = _mm512_reduce_max_epi32(top);
    return t > 0x7F800000 ? as_float(0x7FC00000u) : as_float((uint32_t)t);
}

/* A tensor's step constants, broadcast. Without coupled decay, (g sign)(1 - b1) is g (sign (1 - b1))
   exactly (sign is ±1, and a NaN g stays g's NaN either way) and (g sign)^2 is g g: the sign goes
   into the constant. */
typedef struct { __m512 sign, wd, factor, b1, b2, omb1, omb2, eps, c2, sc2, neg_ss; } avx_scalars_t;

static inline avx_scalars_t avx_scalars(const int DECAY, const block_scalars_t *k) {
    avx_scalars_t c;
    c.sign = _mm512_set1_ps(k->sign); c.wd = _mm512_set1_ps(k->wd); c.factor = _mm512_set1_ps(k->factor);
    c.b1 = _mm512_set1_ps(k->b1); c.b2 = _mm512_set1_ps(k->b2);
    c.omb1 = _mm512_set1_ps(DECAY == 1 ? k->omb1 : k->omb1 * k->sign);
    c.omb2 = _mm512_set1_ps(k->omb2); c.eps = _mm512_set1_ps(k->eps); c.c2 = _mm512_set1_ps(k->c2);
    c.sc2 = _mm512_set1_ps(k->sc2); c.neg_ss = _mm512_set1_ps(k->neg_ss);
    return c;
}

/* Prefetches of elements [e, e + 16) of θ, g and the moments; STATE16: bytes per 16 elements of a moment. */
static inline __attribute__((always_inline)) void avx_prefetch_streams(
        const int THETA, const int MAXMODE, const int STATE16, const void *p, const void *g, const moments_t *mo,
        int64_t e) {
    const int theta16 = THETA == THETA_F32 ? 64 : 32;
    avx_prefetch(g, e, theta16);
    avx_prefetch(p, e, theta16);
    avx_prefetch(mo->m, e, STATE16);
    avx_prefetch(mo->v, e, STATE16);
    if (MAXMODE) avx_prefetch(mo->vm, e, STATE16);
}

/* The update of elements [e, e + 16), as step_block's: from the decoded m, v and stored maximum a,
   the new m, v and maximum u (v under Adam); θ is written. */
static inline __attribute__((always_inline)) void avx_update(
        const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const avx_scalars_t *c,
        void *restrict p, const void *restrict g, int64_t e, __m512 m, __m512 v, __m512 a, uint32_t key_param,
        __m512 *mi, __m512 *vi, __m512 *ui) {
    __m512 gi = avx_load_theta(THETA, g, e), pi = avx_load_theta(THETA, p, e);
    if (DECAY == 2) pi = _mm512_mul_ps(pi, c->factor);
    if (DECAY == 1) gi = _mm512_add_ps(_mm512_mul_ps(gi, c->sign), _mm512_mul_ps(pi, c->wd));
    *mi = _mm512_add_ps(_mm512_mul_ps(m, c->b1), _mm512_mul_ps(gi, c->omb1));
    *vi = _mm512_add_ps(_mm512_mul_ps(v, c->b2), _mm512_mul_ps(_mm512_mul_ps(gi, gi), c->omb2));
    *ui = *vi;
    if (MAXMODE) {
        __m512 cand = MAXMODE == 2 ? _mm512_div_ps(*vi, c->c2) : *vi;
        /* (a > cand || a != a) ? a : cand: vmaxps gives cand unless a > cand; a NaN a wins too */
        *ui = _mm512_mask_mov_ps(_mm512_max_ps(a, cand), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
    }
    __m512 d = _mm512_sqrt_ps(*ui);
    if (DIVIDE) d = _mm512_div_ps(d, c->sc2);
    d = _mm512_add_ps(d, c->eps);
    avx_store_theta(THETA, p, e, _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(*mi, c->neg_ss), d)),
                    THETA == THETA_BF16_SR ? avx_indices(e) : _mm512_setzero_si512(), key_param);
}

/* One full block: decode, update, store θ, encode (as step_block and encode_moments). */
static inline __attribute__((always_inline)) void avx_step_block(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const int EIGHT = STATE == STATE_INT8, block = EIGHT ? 256 : 128, lanes = block / 16;
    const int64_t b = at / block;
    const int64_t code_at = EIGHT ? at : at / 2;
    const uint8_t *cm = (const uint8_t *)mo->m + code_at, *cv = (const uint8_t *)mo->v + code_at;
    const uint8_t *cu = MAXMODE ? (const uint8_t *)mo->vm + code_at : 0;
    /* the 4-bit codes' values: m's, its 8 magnitudes and their negatives, and v's 16 */
    const __m256 half_m = _mm256_loadu_ps(m4_magnitudes);
    const __m512 table_m = _mm512_castsi512_ps(_mm512_mask_xor_epi32(
        _mm512_castps_si512(_mm512_insertf32x8(_mm512_castps256_ps512(half_m), half_m, 1)), 0xFF00,
        _mm512_castps_si512(_mm512_insertf32x8(_mm512_castps256_ps512(half_m), half_m, 1)), VSET(0x80000000u)));
    const __m512 table_v = _mm512_loadu_ps(v4_magnitudes);
    const __m512 sm = _mm512_set1_ps(mo->ms[b]), sv = _mm512_set1_ps(mo->vs[b]);
    const __m512 su = _mm512_set1_ps(MAXMODE ? mo->vms[b] : 0.0f);
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    __m512 bm[16], bv[16], bu[16], bf[16];
    __m512i top_m = _mm512_setzero_si512(), top_v = top_m, top_u = top_m;
    for (int j = 0; j < lanes; ++j) {
        const int64_t e = at + 16 * j;
        /* (the hardware prefetcher alone leaves memory idle while a block is encoded) */
        avx_prefetch_streams(THETA, MAXMODE, EIGHT ? 16 : 8, p, g, mo, e);
        __m512 ai = MAXMODE ? avx_decode_v(EIGHT, avx_codes(EIGHT, cu, j), su, table_v) : _mm512_setzero_ps();
        __m512 mi, vi, ui;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_decode_m(EIGHT, avx_codes(EIGHT, cm, j), sm, table_m),
                   avx_decode_v(EIGHT, avx_codes(EIGHT, cv, j), sv, table_v), ai, w->key_param, &mi, &vi, &ui);
        bm[j] = mi; bv[j] = vi; bu[j] = ui; bf[j] = ai;
        top_m = _mm512_max_epi32(top_m, avx_abs_bits(mi));
        top_v = _mm512_max_epi32(top_v, avx_abs_bits(vi));
        if (MAXMODE) top_u = _mm512_max_epi32(top_u, avx_abs_bits(ui));
    }
    /* the new scales and codes */
    const float smax = avx_block_max(top_m), svmax = avx_block_max(top_v), sumax = MAXMODE ? avx_block_max(top_u) : 0.0f;
    mo->ms[b] = smax; mo->vs[b] = svmax;
    if (MAXMODE) mo->vms[b] = sumax;
    const __m512 rm = _mm512_set1_ps(reciprocal_scale(smax)), rv = _mm512_set1_ps(reciprocal_scale(svmax));
    const __m512 ru = _mm512_set1_ps(reciprocal_scale(sumax)), sun = _mm512_set1_ps(sumax);
    const int all_top = MAXMODE && !(sumax >= TINY_SCALE) && sumax == sumax;
    const __m512i top = VSET(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1);
    uint8_t *om = (uint8_t *)mo->m + code_at, *ov = (uint8_t *)mo->v + code_at, *ou = MAXMODE ? (uint8_t *)mo->vm + code_at : 0;
    for (int j = 0; j < lanes; ++j) {
        avx_store_codes(EIGHT, om, j, avx_encode_m(EIGHT, _mm512_mul_ps(bm[j], rm)));
        avx_store_codes(EIGHT, ov, j, avx_encode_v(EIGHT, _mm512_mul_ps(bv[j], rv)));
        if (MAXMODE) {
            __m512i near = avx_encode_v(EIGHT, _mm512_mul_ps(bu[j], ru));
            __m512 decoded = avx_decode_v(EIGHT, near, sun, table_v);
            /* (never past the top code: that one decodes to the new scale, the largest |u|, and u is
               at least its floor; a NaN compares false) */
            near = _mm512_mask_add_epi32(near, _mm512_cmp_ps_mask(decoded, bf[j], _CMP_LT_OQ), near, VSET(1));
            if (all_top) near = top;
            avx_store_codes(EIGHT, ou, j, near);
        }
    }
}

/* ------------------------------------------- the per-element formats (float32 or bfloat16 state) */
static inline __m512 avx_load_moment(const int STATE, const void *state, int64_t e) {
    return STATE == STATE_F32 ? _mm512_loadu_ps((const float *)state + e) : avx_load_bf16((const uint16_t *)state + e);
}

/* As store_moment. ROLE: 0 m, 1 v, 2 the maximum. */
static inline void avx_store_moment(const int STATE, const int ROLE, void *state, int64_t e, __m512 x, __m512i index,
                                    uint32_t key) {
    if (STATE == STATE_F32) _mm512_storeu_ps((float *)state + e, x);
    else if (STATE == STATE_BF16_NEAREST) avx_store_bf16_nearest((uint16_t *)state + e, x);
    else if (ROLE == 2) avx_store_bf16_up((uint16_t *)state + e, x);
    else avx_store_bf16_stochastic((uint16_t *)state + e, x, index, key);
}

/* The step of LEN elements from `at` (a multiple of 16) of a per-element state format: what
   step_block computes for it, with the same prefetching as avx_step_block. */
static inline __attribute__((always_inline)) void avx_step_elements(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const int LEN,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    for (int i = 0; i < LEN; i += 16) {
        const int64_t e = at + i;
        avx_prefetch_streams(THETA, MAXMODE, STATE == STATE_F32 ? 64 : 32, p, g, mo, e);
        __m512 mi, vi, ui;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_load_moment(STATE, mo->m, e),
                   avx_load_moment(STATE, mo->v, e), MAXMODE ? avx_load_moment(STATE, mo->vm, e) : _mm512_setzero_ps(),
                   w->key_param, &mi, &vi, &ui);
        const __m512i index = avx_indices(e);
        avx_store_moment(STATE, 0, mo->m, e, mi, index, w->key_m);
        avx_store_moment(STATE, 1, mo->v, e, vi, index, w->key_v);
        if (MAXMODE) avx_store_moment(STATE, 2, mo->vm, e, ui, index, 0);
    }
}
