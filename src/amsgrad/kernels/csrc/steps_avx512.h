/* The compressed step in AVX-512 intrinsics, 16 elements per instruction: the primitives that
   steps_vector.h is written in (included at the end), for every full block of every format and
   θ. The block formats take a sixth fewer vector instructions than gcc makes of the generic loops
   (int8 AMSGrad: 84 per 16 elements against 100) and a fifth less time: the byte codes are
   widened to 32-bit lanes in one instruction (gcc goes through 16-bit ones, and spills), the
   4-bit codes are decoded by a 16-entry table lookup (vpermps), the maximum's NaN rule is vmaxps
   and one fix-up, and the encoders' clamps and selects are folded into masked instructions.
   Every stream is prefetched ahead, which the generic loops do not need as much: the hardware
   prefetcher alone leaves memory idle while a block is encoded. tests/quantization/test_kernels.py
   holds this build, an AVX2 one (steps_avx2.h) and one of the plain loops (AMSGRAD_PLAIN_LOOPS) to
   the reference bit for bit. Included by compressed_step.c where the compiler targets AVX-512 (F,
   BW, DQ, VL) and the maps of v are minifloats. */
#include <immintrin.h>

#define VSET(x) _mm512_set1_epi32((int)(x))

typedef __m512 vf;
typedef __m512i vi;
enum { VLANES = 16 };
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_load(const float *at) { return _mm512_loadu_ps(at); }
static inline void vf_store(float *at, vf x) { _mm512_storeu_ps(at, x); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm512_sqrt_ps(a); }
/* (a > c || a != a) ? a : c, as torch.maximum: vmaxps gives c unless a > c; a NaN a wins too. */
static inline vf vf_max_nan(vf a, vf c) {
    return _mm512_mask_mov_ps(_mm512_max_ps(a, c), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}
static inline vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline vi vi_set1(uint32_t x) { return VSET(x); }
static inline vi vi_max(vi a, vi b) { return _mm512_max_epi32(a, b); }
#define vi_srli(x, n) _mm512_srli_epi32((x), (n))
#define vi_slli(x, n) _mm512_slli_epi32((x), (n))
static inline vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline vi vi_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
static inline vi vi_min(vi a, vi b) { return _mm512_min_epi32(a, b); }
static inline vi vi_mullo(vi a, vi b) { return _mm512_mullo_epi32(a, b); }
static inline vi vf_bits(vf x) { return _mm512_castps_si512(x); }
static inline vf vi_float(vi x) { return _mm512_castsi512_ps(x); }
static inline vi vi_load_u16(const uint16_t *at) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)at)); }
/* k + 1 where decoded < floor (ordered: a NaN compares false). */
static inline vi vi_up_where_below(vi k, vf decoded, vf floor) {
    return _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(decoded, floor, _CMP_LT_OQ), k, VSET(1));
}

/* The 16 codes of elements [16 j, 16 j + 16) of a block, one per 32-bit lane (4-bit: unpacked,
   the code in the low 4 bits and the other nibble above it, which the table lookups ignore). */
static inline __m512i avx_codes(const int EIGHT, const uint8_t *block, int j) {
    if (EIGHT) return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(block + 16 * j)));
    __m128i packed = _mm_loadl_epi64((const __m128i *)(block + 8 * j));
    __m512i pairs = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(packed, packed));
    return _mm512_srlv_epi32(pairs, _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
}

/* The 4-bit codes' values: m's 8 magnitudes and their negatives, and v's 16. */
typedef struct { __m512 m, v; } avx_tables_t;

static inline avx_tables_t avx_tables(void) {
    const __m256 half = _mm256_loadu_ps(m4_magnitudes);
    const __m512 both = _mm512_insertf32x8(_mm512_castps256_ps512(half), half, 1);
    avx_tables_t t;
    t.m = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(both), 0xFF00, _mm512_castps_si512(both),
                                                    VSET(0x80000000u)));
    t.v = _mm512_loadu_ps(v4_magnitudes);
    return t;
}

/* The value of 4-bit code c of v's map (its low 4 bits). */
static inline __m512 avx_lookup_v4(__m512i c, const avx_tables_t *t) { return _mm512_permutexvar_ps(c, t->v); }

/* m: a sign-magnitude minifloat (code 0 and the negative zero: ±0); times the block's scale. */
static inline __m512 avx_decode_m(const int EIGHT, __m512i c, __m512 s, const avx_tables_t *t) {
    if (!EIGHT) return _mm512_mul_ps(_mm512_permutexvar_ps(c, t->m), s);
    const __m512i magnitude = VSET(m8_COUNT - 1);
    __mmask16 nonzero = _mm512_test_epi32_mask(c, magnitude);
    __m512i bits = _mm512_maskz_add_epi32(nonzero, _mm512_slli_epi32(_mm512_and_si512(c, magnitude), m8_MINIFLOAT_SHIFT),
                                          VSET((uint32_t)m8_MINIFLOAT_OFFSET << m8_MINIFLOAT_SHIFT));
    __m512i sign = _mm512_slli_epi32(c, 32 - m8_BITS);
    bits = _mm512_ternarylogic_epi32(bits, sign, VSET(0x80000000u), 0xD8); /* the sign bit from `sign` */
    return _mm512_mul_ps(_mm512_castsi512_ps(bits), s);
}

/* floor((a + half) / 2^shift) - offset, as one add and an arithmetic shift (offset >= 1, so no overflow). */
#define AVX_NEAREST(a, P) _mm512_srai_epi32(_mm512_add_epi32((a), \
    VSET((1u << (P##_MINIFLOAT_SHIFT - 1)) - ((uint32_t)P##_MINIFLOAT_OFFSET << P##_MINIFLOAT_SHIFT))), P##_MINIFLOAT_SHIFT)

static inline __m512i avx_abs_bits(__m512 x) { return _mm512_and_si512(_mm512_castps_si512(x), VSET(0x7FFFFFFFu)); }

/* The top halves in `top` (at most 0xFFFF each; NaN lanes of x: the canonical NaN), stored as 16 bfloat16. */
static inline void avx_store_bf16_top(uint16_t *to, __m512 x, __m512i top) {
    top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), VSET(0x7FC0));
    _mm256_storeu_si256((__m256i *)to, _mm512_cvtepi32_epi16(top));
}

/* bf16_up: the next bfloat16 up for a positive value with bits below the top 16. */
static inline void avx_store_bf16_up(uint16_t *to, __m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __mmask16 bump = _mm512_mask_cmp_ps_mask(_mm512_test_epi32_mask(bits, VSET(0xFFFF)), x, _mm512_setzero_ps(),
                                             _CMP_GE_OQ); /* (-0 has no low bits) */
    avx_store_bf16_top(to, x, _mm512_srli_epi32(_mm512_mask_add_epi32(bits, bump, bits, VSET(0x10000)), 16));
}

static inline __m512i avx_indices(int64_t e) {
    return _mm512_add_epi32(VSET((uint32_t)e), _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
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

#include "steps_vector.h"
