/* The compressed step in AVX2 intrinsics, 8 elements per instruction: the primitives that
   steps_vector.h is written in (included at the end), for machines without AVX-512. AVX2 has no
   mask registers, so selects are blends and and-masks, the 4-bit codes are decoded by two 8-entry
   table lookups (vpermps) and a blend on the code's top bit, and codes are narrowed with
   saturating packs. Included by compressed_step.c where the compiler targets AVX2 but not
   AVX-512, and the maps of v are minifloats. */
#include <immintrin.h>

#define VSET(x) _mm256_set1_epi32((int)(x))

typedef __m256 vf;
typedef __m256i vi;
enum { VLANES = 8 };
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_load(const float *at) { return _mm256_loadu_ps(at); }
static inline void vf_store(float *at, vf x) { _mm256_storeu_ps(at, x); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm256_sqrt_ps(a); }
/* (a > c || a != a) ? a : c, as torch.maximum: vmaxps gives c unless a > c; a NaN a wins too. */
static inline vf vf_max_nan(vf a, vf c) {
    return _mm256_blendv_ps(_mm256_max_ps(a, c), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}
static inline vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline vi vi_set1(uint32_t x) { return VSET(x); }
static inline vi vi_max(vi a, vi b) { return _mm256_max_epi32(a, b); }
#define vi_srli(x, n) _mm256_srli_epi32((x), (n))
#define vi_slli(x, n) _mm256_slli_epi32((x), (n))
static inline vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vi_and(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
static inline vi vi_min(vi a, vi b) { return _mm256_min_epi32(a, b); }
static inline vi vi_mullo(vi a, vi b) { return _mm256_mullo_epi32(a, b); }
static inline vi vf_bits(vf x) { return _mm256_castps_si256(x); }
static inline vf vi_float(vi x) { return _mm256_castsi256_ps(x); }
static inline vi vi_load_u16(const uint16_t *at) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)at)); }
/* k + 1 where decoded < floor (ordered: a NaN compares false): minus the all-ones compare. */
static inline vi vi_up_where_below(vi k, vf decoded, vf floor) {
    return _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(decoded, floor, _CMP_LT_OQ)));
}

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

/* The value of 4-bit code c of v's map (its low 4 bits). */
static inline __m256 avx_lookup_v4(__m256i c, const avx_tables_t *t) { return avx_lookup16(c, t->v_low, t->v_high); }

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

/* floor((a + half) / 2^shift) - offset, as one add and an arithmetic shift (offset >= 1, so no overflow). */
#define AVX_NEAREST(a, P) _mm256_srai_epi32(_mm256_add_epi32((a), \
    VSET((1u << (P##_MINIFLOAT_SHIFT - 1)) - ((uint32_t)P##_MINIFLOAT_OFFSET << P##_MINIFLOAT_SHIFT))), P##_MINIFLOAT_SHIFT)

static inline __m256i avx_abs_bits(__m256 x) { return _mm256_and_si256(_mm256_castps_si256(x), VSET(0x7FFFFFFFu)); }

/* The top halves in `top` (at most 0xFFFF each; NaN lanes of x: the canonical NaN), stored as 8 bfloat16. */
static inline void avx_store_bf16_top(uint16_t *to, __m256 x, __m256i top) {
    top = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(top), _mm256_castsi256_ps(VSET(0x7FC0)),
                                               _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    __m128i halves = _mm_packus_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
    _mm_storeu_si128((__m128i *)to, halves);
}

/* bf16_up: the next bfloat16 up for a positive value with bits below the top 16. */
static inline void avx_store_bf16_up(uint16_t *to, __m256 x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i exact = _mm256_cmpeq_epi32(_mm256_and_si256(bits, VSET(0xFFFF)), _mm256_setzero_si256());
    __m256i positive = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ)); /* (-0 is exact) */
    __m256i bump = _mm256_and_si256(_mm256_andnot_si256(exact, positive), VSET(0x10000));
    avx_store_bf16_top(to, x, _mm256_srli_epi32(_mm256_add_epi32(bits, bump), 16));
}

static inline __m256i avx_indices(int64_t e) {
    return _mm256_add_epi32(VSET((uint32_t)e), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
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

#include "steps_vector.h"
