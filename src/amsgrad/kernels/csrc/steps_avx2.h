/* The compressed step in AVX2 intrinsics, 8 elements per instruction: the same functions as
   steps_avx512.h (same names, same arithmetic in the same order), for machines without AVX-512.
   AVX2 has no mask registers, so selects are blends and and-masks, the 4-bit codes are decoded by
   two 8-entry table lookups (vpermps) and a blend on the code's top bit, and codes are narrowed
   with saturating packs. tests/quantization/test_kernels.py holds it to the reference bit for bit
   through a build for AVX2. Included by compressed_step.c where the compiler targets AVX2 but not
   AVX-512, and the maps of v are minifloats. */
#include <immintrin.h>

#define VSET(x) _mm256_set1_epi32((int)(x))

/* How far ahead of the block being stepped its streams are prefetched, in elements (as steps_avx512.h). */
enum { PREFETCH_AHEAD = 1024 };

/* The 8 codes of elements [8 j, 8 j + 8) of a block, one per 32-bit lane (4-bit: unpacked, the
   code in the low 4 bits and the other nibble above it, which the table lookups ignore). */
static inline __m256i avx_codes(const int EIGHT, const uint8_t *block, int j) {
    if (EIGHT) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(block + 8 * j)));
    int32_t packed;
    memcpy(&packed, block + 4 * j, 4);
    __m128i x = _mm_cvtsi32_si128(packed);
    __m256i pairs = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(x, x));
    return _mm256_srlv_epi32(pairs, _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0));
}

/* A 16-entry table lookup by the low 4 bits of c: two 8-entry lookups, blended on bit 3. */
static inline __m256 avx_lookup16(__m256i c, __m256 low, __m256 high) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, c), _mm256_permutevar8x32_ps(high, c),
                            _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
}

typedef struct { __m256 m_low, m_high, v_low, v_high; } avx_tables_t;

/* The 4-bit codes' values: m's 8 magnitudes and their negatives, and v's 16. */
static inline avx_tables_t avx_tables(void) {
    avx_tables_t t;
    t.m_low = _mm256_loadu_ps(m4_magnitudes);
    t.m_high = _mm256_xor_ps(t.m_low, _mm256_castsi256_ps(VSET(0x80000000u)));
    t.v_low = _mm256_loadu_ps(v4_magnitudes);
    t.v_high = _mm256_loadu_ps(v4_magnitudes + 8);
    return t;
}

/* m: a sign-magnitude minifloat (code 0 and the negative zero: ±0); times the block's scale. */
static inline __m256 avx_decode_m(const int EIGHT, __m256i c, __m256 s, const avx_tables_t *t) {
    if (!EIGHT) return _mm256_mul_ps(avx_lookup16(c, t->m_low, t->m_high), s);
    __m256i k = _mm256_and_si256(c, VSET(m8_COUNT - 1));
    __m256i bits = _mm256_add_epi32(_mm256_slli_epi32(k, m8_MINIFLOAT_SHIFT),
                                    VSET((uint32_t)m8_MINIFLOAT_OFFSET << m8_MINIFLOAT_SHIFT));
    bits = _mm256_and_si256(bits, _mm256_cmpgt_epi32(k, _mm256_setzero_si256())); /* code 0: 0 */
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(c, 32 - m8_BITS), VSET(0x80000000u));
    return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_or_si256(bits, sign)), s);
}

/* v and the maximum: an unsigned minifloat, times the block's (prescaled) scale. */
static inline __m256 avx_decode_v(const int EIGHT, __m256i c, __m256 t, const avx_tables_t *tables) {
    if (!EIGHT) return _mm256_mul_ps(avx_lookup16(c, tables->v_low, tables->v_high), t);
    __m256i bits = _mm256_add_epi32(_mm256_slli_epi32(c, v8_MINIFLOAT_SHIFT),
                                    VSET((uint32_t)v8_MINIFLOAT_OFFSET << v8_MINIFLOAT_SHIFT));
    return _mm256_mul_ps(_mm256_castsi256_ps(bits), t);
}

/* floor((a + half) / 2^shift) - offset, as one add and an arithmetic shift (offset >= 1, so no overflow). */
#define AVX_NEAREST(a, P) _mm256_srai_epi32(_mm256_add_epi32((a), \
    VSET((1u << (P##_MINIFLOAT_SHIFT - 1)) - ((uint32_t)P##_MINIFLOAT_OFFSET << P##_MINIFLOAT_SHIFT))), P##_MINIFLOAT_SHIFT)

static inline __m256i avx_abs_bits(__m256 x) { return _mm256_and_si256(_mm256_castps_si256(x), VSET(0x7FFFFFFFu)); }

static inline __m256i avx_lowbias32(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, VSET(0x7feb352du));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, VSET(0x846ca68bu));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

static inline __m256 avx_load_bf16(const uint16_t *at) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)at)), 16));
}

/* The top halves in `top` (at most 0xFFFF each; NaN lanes of x: the canonical NaN), stored as 8 bfloat16. */
static inline void avx_store_bf16_top(uint16_t *to, __m256 x, __m256i top) {
    top = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(top), _mm256_castsi256_ps(VSET(0x7FC0)),
                                               _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    __m128i halves = _mm_packus_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
    _mm_storeu_si128((__m128i *)to, halves);
}

/* bf16_stochastic of 8 values whose element indices are `index`. */
static inline void avx_store_bf16_stochastic(uint16_t *to, __m256 x, __m256i index, uint32_t key) {
    __m256i noise = _mm256_srli_epi32(avx_lowbias32(_mm256_add_epi32(index, VSET(key))), 16);
    avx_store_bf16_top(to, x, _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(x), noise), 16));
}

/* bf16_up: the next bfloat16 up for a positive value with bits below the top 16. */
static inline void avx_store_bf16_up(uint16_t *to, __m256 x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i exact = _mm256_cmpeq_epi32(_mm256_and_si256(bits, VSET(0xFFFF)), _mm256_setzero_si256());
    __m256i positive = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ)); /* (-0 is exact) */
    __m256i bump = _mm256_and_si256(_mm256_andnot_si256(exact, positive), VSET(0x10000));
    avx_store_bf16_top(to, x, _mm256_srli_epi32(_mm256_add_epi32(bits, bump), 16));
}

/* bf16_nearest: to nearest, ties to even. */
static inline void avx_store_bf16_nearest(uint16_t *to, __m256 x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), VSET(1));
    avx_store_bf16_top(to, x, _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, VSET(0x7FFF)), odd), 16));
}

/* θ or g of elements [e, e + 8): float32 or bfloat16 (THETA). */
static inline __m256 avx_load_theta(const int THETA, const void *x, int64_t e) {
    return THETA == THETA_F32 ? _mm256_loadu_ps((const float *)x + e) : avx_load_bf16((const uint16_t *)x + e);
}

static inline void avx_store_theta(const int THETA, void *p, int64_t e, __m256 theta, __m256i index, uint32_t key) {
    if (THETA == THETA_F32) _mm256_storeu_ps((float *)p + e, theta);
    else if (THETA == THETA_BF16) avx_store_bf16_nearest((uint16_t *)p + e, theta);
    else avx_store_bf16_stochastic((uint16_t *)p + e, theta, index, key);
}

static inline __m256i avx_indices(int64_t e) {
    return _mm256_add_epi32(VSET((uint32_t)e), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
}

/* Prefetches a stream PREFETCH_AHEAD elements ahead of element e (a multiple of 8, from a
   line-aligned start), once per 64-byte line: BYTES8 is how many bytes 8 of its elements take.
   (Always inlined: gcc takes a function that only prefetches for one without side effects, and
   drops its calls.) */
static inline __attribute__((always_inline)) void avx_prefetch(const void *stream, int64_t e, const int BYTES8) {
    const uint64_t at = (uint64_t)e * BYTES8 / 8;
    if (at % 64 < (uint64_t)BYTES8)
        _mm_prefetch((const char *)stream + at + (uint64_t)PREFETCH_AHEAD * BYTES8 / 8, _MM_HINT_T0);
}

/* encode_nearest_m8/m4 of y, in 32-bit lanes. */
static inline __m256i avx_encode_m(const int EIGHT, __m256 y) {
    __m256i bits = _mm256_castps_si256(y), a = avx_abs_bits(y);
    __m256i first = _mm256_cmpgt_epi32(a, VSET((EIGHT ? m8_HALF_SMALLEST_BITS : m4_HALF_SMALLEST_BITS) - 1));
    __m256i k = EIGHT ? AVX_NEAREST(a, m8) : AVX_NEAREST(a, m4);
    k = _mm256_min_epi32(_mm256_and_si256(_mm256_max_epi32(k, VSET(1)), first), VSET(EIGHT ? m8_COUNT - 1 : m4_COUNT - 1));
    __m256i sign = _mm256_and_si256(_mm256_srli_epi32(bits, 32 - (EIGHT ? m8_BITS : m4_BITS)), VSET(EIGHT ? m8_COUNT : m4_COUNT));
    return _mm256_or_si256(k, _mm256_and_si256(sign, first));
}

/* encode_nearest_v8/v4 of x (times r), clamped to the codes, in 32-bit lanes. */
static inline __m256i avx_encode_v(const int EIGHT, __m256 y) {
    __m256i a = avx_abs_bits(y);
    __m256i k = _mm256_max_epi32(EIGHT ? AVX_NEAREST(a, v8) : AVX_NEAREST(a, v4), _mm256_setzero_si256());
    return _mm256_min_epi32(k, VSET(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1));
}

/* 8 codes (32-bit lanes, at most 255) stored at elements [8 j, 8 j + 8) of a block. */
static inline void avx_store_codes(const int EIGHT, uint8_t *block, int j, __m256i k) {
    __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
    __m128i bytes = _mm_packus_epi16(words, words);
    if (EIGHT) { _mm_storel_epi64((__m128i *)(block + 8 * j), bytes); return; }
    __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x1001)); /* even | odd << 4, per 16 bits */
    int32_t packed = _mm_cvtsi128_si32(_mm_packus_epi16(pairs, pairs));
    memcpy(block + 4 * j, &packed, 4);
}

static inline float avx_block_max(__m256i top) {
    __m128i t = _mm_max_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
    t = _mm_max_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_max_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    int32_t m = _mm_cvtsi128_si32(t);
    return m > 0x7F800000 ? as_float(0x7FC00000u) : as_float((uint32_t)m);
}

/* A tensor's step constants, broadcast; the maximize sign in the constant as in steps_avx512.h. */
typedef struct { __m256 sign, wd, factor, b1, b2, omb1, omb2, eps, c2, sc2, neg_ss; } avx_scalars_t;

static inline avx_scalars_t avx_scalars(const int DECAY, const block_scalars_t *k) {
    avx_scalars_t c;
    c.sign = _mm256_set1_ps(k->sign); c.wd = _mm256_set1_ps(k->wd); c.factor = _mm256_set1_ps(k->factor);
    c.b1 = _mm256_set1_ps(k->b1); c.b2 = _mm256_set1_ps(k->b2);
    c.omb1 = _mm256_set1_ps(DECAY == 1 ? k->omb1 : k->omb1 * k->sign);
    c.omb2 = _mm256_set1_ps(k->omb2); c.eps = _mm256_set1_ps(k->eps); c.c2 = _mm256_set1_ps(k->c2);
    c.sc2 = _mm256_set1_ps(k->sc2); c.neg_ss = _mm256_set1_ps(k->neg_ss);
    return c;
}

/* Prefetches of elements [e, e + 8) of θ, g and the moments; STATE8: bytes per 8 elements of a moment. */
static inline __attribute__((always_inline)) void avx_prefetch_streams(
        const int THETA, const int MAXMODE, const int STATE8, const void *p, const void *g, const moments_t *mo,
        int64_t e) {
    const int theta8 = THETA == THETA_F32 ? 32 : 16;
    avx_prefetch(g, e, theta8);
    avx_prefetch(p, e, theta8);
    avx_prefetch(mo->m, e, STATE8);
    avx_prefetch(mo->v, e, STATE8);
    if (MAXMODE) avx_prefetch(mo->vm, e, STATE8);
}

/* The update of elements [e, e + 8), as step_block's (see steps_avx512.h). */
static inline __attribute__((always_inline)) void avx_update(
        const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const avx_scalars_t *c,
        void *restrict p, const void *restrict g, int64_t e, __m256 m, __m256 v, __m256 a, uint32_t key_param,
        __m256 *mi, __m256 *vi, __m256 *ui) {
    __m256 gi = avx_load_theta(THETA, g, e), pi = avx_load_theta(THETA, p, e);
    if (DECAY == 2) pi = _mm256_mul_ps(pi, c->factor);
    if (DECAY == 1) gi = _mm256_add_ps(_mm256_mul_ps(gi, c->sign), _mm256_mul_ps(pi, c->wd));
    *mi = _mm256_add_ps(_mm256_mul_ps(m, c->b1), _mm256_mul_ps(gi, c->omb1));
    *vi = _mm256_add_ps(_mm256_mul_ps(v, c->b2), _mm256_mul_ps(_mm256_mul_ps(gi, gi), c->omb2));
    *ui = *vi;
    if (MAXMODE) {
        __m256 cand = MAXMODE == 2 ? _mm256_div_ps(*vi, c->c2) : *vi;
        /* (a > cand || a != a) ? a : cand: vmaxps gives cand unless a > cand; a NaN a wins too */
        *ui = _mm256_blendv_ps(_mm256_max_ps(a, cand), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
    __m256 d = _mm256_sqrt_ps(*ui);
    if (DIVIDE) d = _mm256_div_ps(d, c->sc2);
    d = _mm256_add_ps(d, c->eps);
    avx_store_theta(THETA, p, e, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(*mi, c->neg_ss), d)),
                    THETA == THETA_BF16_SR ? avx_indices(e) : _mm256_setzero_si256(), key_param);
}

/* One full block: decode, update, store θ, encode (as step_block and encode_moments). */
static inline __attribute__((always_inline)) void avx_step_block(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const int EIGHT = STATE == STATE_INT8, block = EIGHT ? 256 : 128, lanes = block / 8;
    const int64_t b = at / block;
    const int64_t code_at = EIGHT ? at : at / 2;
    const uint8_t *cm = (const uint8_t *)mo->m + code_at, *cv = (const uint8_t *)mo->v + code_at;
    const uint8_t *cu = MAXMODE ? (const uint8_t *)mo->vm + code_at : 0;
    const avx_tables_t tables = avx_tables();
    const __m256 sm = _mm256_set1_ps(mo->ms[b]), sv = _mm256_set1_ps(mo->vs[b]);
    const __m256 su = _mm256_set1_ps(MAXMODE ? mo->vms[b] : 0.0f);
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    __m256 bm[32], bv[32], bu[32], bf[32];
    __m256i top_m = _mm256_setzero_si256(), top_v = top_m, top_u = top_m;
    for (int j = 0; j < lanes; ++j) {
        const int64_t e = at + 8 * j;
        avx_prefetch_streams(THETA, MAXMODE, EIGHT ? 8 : 4, p, g, mo, e);
        __m256 ai = MAXMODE ? avx_decode_v(EIGHT, avx_codes(EIGHT, cu, j), su, &tables) : _mm256_setzero_ps();
        __m256 mi, vi, ui;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_decode_m(EIGHT, avx_codes(EIGHT, cm, j), sm, &tables),
                   avx_decode_v(EIGHT, avx_codes(EIGHT, cv, j), sv, &tables), ai, w->key_param, &mi, &vi, &ui);
        bm[j] = mi; bv[j] = vi; bu[j] = ui; bf[j] = ai;
        top_m = _mm256_max_epi32(top_m, avx_abs_bits(mi));
        top_v = _mm256_max_epi32(top_v, avx_abs_bits(vi));
        if (MAXMODE) top_u = _mm256_max_epi32(top_u, avx_abs_bits(ui));
    }
    /* the new scales and codes */
    const float smax = avx_block_max(top_m), svmax = avx_block_max(top_v), sumax = MAXMODE ? avx_block_max(top_u) : 0.0f;
    mo->ms[b] = smax; mo->vs[b] = svmax;
    if (MAXMODE) mo->vms[b] = sumax;
    const __m256 rm = _mm256_set1_ps(reciprocal_scale(smax)), rv = _mm256_set1_ps(reciprocal_scale(svmax));
    const __m256 ru = _mm256_set1_ps(reciprocal_scale(sumax)), sun = _mm256_set1_ps(sumax);
    const int all_top = MAXMODE && !(sumax >= TINY_SCALE) && sumax == sumax;
    const __m256i top = VSET(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1);
    uint8_t *om = (uint8_t *)mo->m + code_at, *ov = (uint8_t *)mo->v + code_at, *ou = MAXMODE ? (uint8_t *)mo->vm + code_at : 0;
    for (int j = 0; j < lanes; ++j) {
        avx_store_codes(EIGHT, om, j, avx_encode_m(EIGHT, _mm256_mul_ps(bm[j], rm)));
        avx_store_codes(EIGHT, ov, j, avx_encode_v(EIGHT, _mm256_mul_ps(bv[j], rv)));
        if (MAXMODE) {
            __m256i near = avx_encode_v(EIGHT, _mm256_mul_ps(bu[j], ru));
            __m256 decoded = avx_decode_v(EIGHT, near, sun, &tables);
            /* one code up where it falls below the floor (never past the top: see steps_avx512.h) */
            near = _mm256_sub_epi32(near, _mm256_castps_si256(_mm256_cmp_ps(decoded, bf[j], _CMP_LT_OQ)));
            if (all_top) near = top;
            avx_store_codes(EIGHT, ou, j, near);
        }
    }
}

/* ------------------------------------------- the per-element formats (float32 or bfloat16 state) */
static inline __m256 avx_load_moment(const int STATE, const void *state, int64_t e) {
    return STATE == STATE_F32 ? _mm256_loadu_ps((const float *)state + e) : avx_load_bf16((const uint16_t *)state + e);
}

/* As store_moment. ROLE: 0 m, 1 v, 2 the maximum. */
static inline void avx_store_moment(const int STATE, const int ROLE, void *state, int64_t e, __m256 x, __m256i index,
                                    uint32_t key) {
    if (STATE == STATE_F32) _mm256_storeu_ps((float *)state + e, x);
    else if (STATE == STATE_BF16_NEAREST) avx_store_bf16_nearest((uint16_t *)state + e, x);
    else if (ROLE == 2) avx_store_bf16_up((uint16_t *)state + e, x);
    else avx_store_bf16_stochastic((uint16_t *)state + e, x, index, key);
}

/* The step of LEN elements from `at` (a multiple of 8) of a per-element state format. */
static inline __attribute__((always_inline)) void avx_step_elements(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const int LEN,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    for (int i = 0; i < LEN; i += 8) {
        const int64_t e = at + i;
        avx_prefetch_streams(THETA, MAXMODE, STATE == STATE_F32 ? 32 : 16, p, g, mo, e);
        __m256 mi, vi, ui;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_load_moment(STATE, mo->m, e),
                   avx_load_moment(STATE, mo->v, e), MAXMODE ? avx_load_moment(STATE, mo->vm, e) : _mm256_setzero_ps(),
                   w->key_param, &mi, &vi, &ui);
        const __m256i index = avx_indices(e);
        avx_store_moment(STATE, 0, mo->m, e, mi, index, w->key_m);
        avx_store_moment(STATE, 1, mo->v, e, vi, index, w->key_v);
        if (MAXMODE) avx_store_moment(STATE, 2, mo->vm, e, ui, index, 0);
    }
}
