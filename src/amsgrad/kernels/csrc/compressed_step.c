/* The step of Adam and AMSGrad with low-memory state (bfloat16, 8-bit and 4-bit block formats)
   and/or bfloat16 parameters, every variant, in one pass over memory.

   It computes exactly what amsgrad.quantization.step.compressed_step computes in torch ops:
   every line is one correctly rounded float32 operation (built with -ffp-contract=off, so no
   multiply-add is fused), with the scalars rounded to float32 first. The code maps' constants
   come from codes_generated.h, which the loader writes from the Python definitions
   (amsgrad.quantization.codes.c_header).

   Work is cut into chunks of CHUNK elements (a multiple of every block size), spread over the
   OpenMP threads. Each block (at most 256 elements) is decoded, updated and encoded through
   small buffers on the stack, which stay in L1: nothing step-sized is allocated. */
#include <string.h>

#include "codes_generated.h"
#include "step_common.h"

/* Storage of the moments, and of the parameter. */
enum { STATE_F32 = 0, STATE_BF16_NEAREST = 1, STATE_BF16 = 2, STATE_INT8 = 3, STATE_INT4 = 4 };
enum { PARAM_F32 = 0, PARAM_BF16 = 1 };
enum { ROLE_PARAM = 0, ROLE_EXP_AVG = 1, ROLE_EXP_AVG_SQ = 2 };
enum { BLOCK_MAX = 256 };

typedef struct {
    int32_t param_kind, state_kind, stochastic_param;
} layout_t;

#define TINY_SCALE 0x1p-96f
#define FLOAT32_MAX 3.40282347e38f

static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}

/* As amsgrad.quantization.rounding.rounding_key. */
static inline uint32_t rounding_key(uint64_t seed, uint32_t step, uint32_t role) {
    uint32_t mixed = lowbias32((uint32_t)(seed >> 32) + role * 0x9E3779B9u);
    mixed = lowbias32((uint32_t)seed ^ mixed);
    return lowbias32(mixed + step);
}

static inline uint32_t as_bits(float x) { uint32_t b; memcpy(&b, &x, 4); return b; }
static inline float as_float(uint32_t b) { float x; memcpy(&x, &b, 4); return x; }
static inline float bf16_to_float(uint16_t h) { return as_float((uint32_t)h << 16); }

static inline uint16_t bf16_nearest(float x) {
    uint32_t b = as_bits(x);
    uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    return x != x ? 0x7FC0 : (uint16_t)r;
}

static inline uint16_t bf16_up(float x) {
    uint32_t b = as_bits(x);
    uint32_t bump = ((b & 0xFFFFu) != 0) & ((b >> 31) == 0) & (x == x);
    return x != x ? 0x7FC0 : (uint16_t)((b + (bump << 16)) >> 16);
}

static inline uint16_t bf16_stochastic(float x, uint32_t key, uint32_t index) {
    uint32_t b = as_bits(x) + (lowbias32(index + key) >> 16);
    return x != x ? 0x7FC0 : (uint16_t)(b >> 16);
}

/* ---------------------------------------------------------------- the code maps */
/* The encoders work on bit patterns where they can: a float32 without its sign bit (NaN included,
   as the largest) orders like its bits as a signed int32, and integer selects vectorize where float
   compares would not. Signed, not unsigned, integers: AVX2 compares and converts only those. */
static inline int32_t ibits(float x) { return (int32_t)(as_bits(x) & 0x7FFFFFFFu); }
static inline int32_t max_i32(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

/* Signed minifloat (m): magnitude k > 0 is the float32 with bits (k + OFFSET) << SHIFT; from half
   the smallest one (HALF_SMALLEST_BITS) up, the encoder leaves zero. */
#define DEFINE_MINIFLOAT(P)                                                                     \
static inline float decode_##P(uint32_t c) {                                                  \
    uint32_t k = c & (P##_COUNT - 1), sign = c >> (P##_BITS - 1);                              \
    uint32_t bits = k ? ((k + P##_MINIFLOAT_OFFSET) << P##_MINIFLOAT_SHIFT) : 0u;              \
    return as_float(bits | (sign << 31));                                                      \
}                                                                                              \
static inline uint32_t encode_nearest_##P(float y) {                                           \
    uint32_t bits = as_bits(y), negative = bits >> 31, a = bits & 0x7FFFFFFFu;                 \
    int32_t k = (int32_t)((a + (1u << (P##_MINIFLOAT_SHIFT - 1))) >> P##_MINIFLOAT_SHIFT)      \
                - P##_MINIFLOAT_OFFSET;                                                        \
    int32_t first = (int32_t)a >= (int32_t)P##_HALF_SMALLEST_BITS;                             \
    int32_t small = -(int32_t)(k <= 0);                                                        \
    k = min_i32((k & ~small) | (first & small), P##_COUNT - 1);                                \
    return (uint32_t)k | ((negative & (uint32_t)(k > 0)) << (P##_BITS - 1));                   \
}

/* The unsigned maps of v and the maximum, no zero code, either kind; both give decode_P(k, t), the
   value of code k in a block whose scale s is prescaled to t = s * P_PRESCALE, and
   encode_nearest_P(x, root, r, gain), the nearest code of x in a block of reciprocal scale r (a
   sqrt-linear map uses root = sqrt(x) and gain = sqrt(r) * COUNT instead; see blockwise.py).
   Sqrt-linear: magnitude k is ((k + 1) / COUNT)^2, and the decoded (k + 1)^2 * (s / COUNT^2) is
   magnitude(k) * s exactly (a power-of-two factor). Minifloat: magnitude k is the float32 with
   bits (k + OFFSET) << SHIFT. */
#define DEFINE_SQRT_LINEAR(P)                                                                   \
static const float P##_PRESCALE = 1.0f / ((float)P##_COUNT * (float)P##_COUNT);                \
static inline float decode_##P(uint32_t k, float t) {                                          \
    return (float)(int32_t)((k + 1) * (k + 1)) * t;                                            \
}                                                                                              \
static inline uint32_t encode_nearest_##P(float x, float root, float r, float gain) {          \
    (void)x; (void)r;                                                                          \
    float q = root * gain + 0.5f;                                                              \
    q = as_float((uint32_t)min_i32(ibits(q), ibits((float)P##_COUNT))); /* NaN: the top */     \
    return (uint32_t)max_i32((int32_t)q - 1, 0);                                               \
}
/* (On the bits of |x r|, so that a NaN of either sign gets the top code, as in codes.py.) */
#define DEFINE_UNSIGNED_MINIFLOAT(P)                                                            \
static const float P##_PRESCALE = 1.0f;                                                        \
static inline float decode_##P(uint32_t k, float t) {                                          \
    return as_float((k + P##_MINIFLOAT_OFFSET) << P##_MINIFLOAT_SHIFT) * t;                    \
}                                                                                              \
static inline uint32_t encode_nearest_##P(float x, float root, float r, float gain) {          \
    (void)root; (void)gain;                                                                    \
    uint32_t bits = (uint32_t)ibits(x * r);                                                    \
    int32_t k = (int32_t)((bits + (1u << (P##_MINIFLOAT_SHIFT - 1))) >> P##_MINIFLOAT_SHIFT)   \
                - P##_MINIFLOAT_OFFSET;                                                        \
    return (uint32_t)min_i32(max_i32(k, 0), P##_COUNT - 1);                                    \
}
#if v8_SQRT_LINEAR
DEFINE_SQRT_LINEAR(v8)
#else
DEFINE_UNSIGNED_MINIFLOAT(v8)
#endif
#if v4_SQRT_LINEAR
DEFINE_SQRT_LINEAR(v4)
#else
DEFINE_UNSIGNED_MINIFLOAT(v4)
#endif

DEFINE_MINIFLOAT(m8)
DEFINE_MINIFLOAT(m4)

/* ----------------------------------------------------------- block helpers */
static inline float reciprocal_scale(float s) {
    float r = 1.0f / s;
    return r < FLOAT32_MAX ? r : FLOAT32_MAX;
}

/* Codes of one block, one per element (4-bit ones unpacked). */
static inline void unpack4(const uint8_t *restrict packed, uint8_t *restrict codes, int len) {
    for (int j = 0; j < (len + 1) / 2; ++j) {
        codes[2 * j] = packed[j] & 15u;
        codes[2 * j + 1] = packed[j] >> 4;
    }
}

static inline void pack4(const uint8_t *restrict codes, uint8_t *restrict packed, int len) {
    int j = 0;
    for (; 2 * j + 1 < len; ++j) packed[j] = (uint8_t)(codes[2 * j] | (codes[2 * j + 1] << 4));
    if (len & 1) packed[j] = codes[len - 1];
}

/* Where the moments of one block are, and their scales (block formats). */
typedef struct {
    void *m, *v, *vm;
    float *ms, *vs, *vms;
} moments_t;

/* The codes of one block's moments (see encode_moments). */
static inline __attribute__((always_inline)) void encode_codes(
        const int STATE, const int MAXMODE, int len, uint8_t *restrict cm, uint8_t *restrict cv, uint8_t *restrict cu,
        const float *restrict bm, const float *restrict bv, const float *restrict bs, const float *restrict bf,
        float rm, float rv, float gv, float ru, float gu, float su_scaled) {
    const int eight = STATE == STATE_INT8;
    const uint32_t top = eight ? v8_COUNT - 1 : v4_COUNT - 1;
    for (int i = 0; i < len; ++i) {
        cm[i] = (uint8_t)(eight ? encode_nearest_m8(bm[i] * rm) : encode_nearest_m4(bm[i] * rm));
        /* (a square root that the map does not use is not computed) */
        const float root_v = MAXMODE ? sqrtf(bv[i]) : bs[i];
        cv[i] = (uint8_t)(eight ? encode_nearest_v8(bv[i], root_v, rv, gv) : encode_nearest_v4(bv[i], root_v, rv, gv));
        if (MAXMODE) {
            uint32_t near = eight ? encode_nearest_v8(bs[i], bs[i], ru, gu) : encode_nearest_v4(bs[i], bs[i], ru, gu);
            float decoded = eight ? decode_v8(near, su_scaled) : decode_v4(near, su_scaled);
            near += decoded < bf[i];
            cu[i] = (uint8_t)(near < top ? near : top);
        }
    }
}

/* The new codes and scales of one block's moments (a block format), from the buffers that
   step_block filled: m (BM), v (BV), and, for AMSGrad, the new maximum u (BS; its square root for a
   sqrt-linear map) and the previous decoded maximum (BF, the floor); under Adam, BS holds v (or
   sqrt(v)) instead of u. MAXIMA: the three blocks' scales. m and v are stored to nearest; the
   maximum to nearest, one code up where that falls below its floor (see blockwise.quantize), so
   that its decoded value never decreases. */
static inline __attribute__((always_inline)) void encode_moments(
        const int STATE, const int MAXMODE, const moments_t *restrict mo, int64_t start, int len,
        const float *restrict bm, const float *restrict bv, const float *restrict bs, const float *restrict bf,
        const float *restrict maxima) {
    const int eight = STATE == STATE_INT8, block = eight ? 256 : 128;
    const int64_t b = start / block;
    const uint32_t top = eight ? v8_COUNT - 1 : v4_COUNT - 1;
    const float count = (float)(top + 1);
    const float prescale = eight ? v8_PRESCALE : v4_PRESCALE;
    const float rm = reciprocal_scale(maxima[0]), rv = reciprocal_scale(maxima[1]), gv = sqrtf(rv) * count;
    const float su = maxima[2], ru = reciprocal_scale(su), gu = sqrtf(ru) * count, su_scaled = su * prescale;
    mo->ms[b] = maxima[0];
    mo->vs[b] = maxima[1];
    if (MAXMODE) mo->vms[b] = su;
    uint8_t lm[BLOCK_MAX], lv[BLOCK_MAX], lu[BLOCK_MAX];
    uint8_t *cm = eight ? (uint8_t *)mo->m + start : lm, *cv = eight ? (uint8_t *)mo->v + start : lv;
    uint8_t *cu = eight && MAXMODE ? (uint8_t *)mo->vm + start : lu;
    encode_codes(STATE, MAXMODE, len, cm, cv, cu, bm, bv, bs, bf, rm, rv, gv, ru, gu, su_scaled);
    if (MAXMODE && !(su >= TINY_SCALE) && su == su) memset(cu, (int)top, (size_t)len);
    if (!eight) {
        pack4(lm, (uint8_t *)mo->m + start / 2, len);
        pack4(lv, (uint8_t *)mo->v + start / 2, len);
        if (MAXMODE) pack4(lu, (uint8_t *)mo->vm + start / 2, len);
    }
}

/* ------------------------------------------------------------- the update */
typedef struct {
    float sign, wd, factor, b1, b2, omb1, omb2, eps, c2, sc2, neg_ss;
} block_scalars_t;

typedef struct {
    block_scalars_t k;
    uint32_t key_param, key_m, key_v;
    int32_t divide;
} tensor_work_t;

/* Theta's storage: float32, or bfloat16 to nearest, or bfloat16 stochastically rounded. */
enum { THETA_F32 = 0, THETA_BF16 = 1, THETA_BF16_SR = 2 };

/* One moment of element i of the block at `at`, decoded. `codes`: a 4-bit block, unpacked. */
static inline __attribute__((always_inline)) float load_moment(const int STATE, const int IS_M, const void *storage,
                                                               const uint8_t *codes, int64_t at, int i, float s) {
    if (STATE == STATE_F32) return ((const float *)storage)[at + i];
    if (STATE == STATE_BF16 || STATE == STATE_BF16_NEAREST) return bf16_to_float(((const uint16_t *)storage)[at + i]);
    if (STATE == STATE_INT8) {
        uint32_t c = ((const uint8_t *)storage)[at + i];
        return IS_M ? decode_m8(c) * s : decode_v8(c, s);
    }
    return IS_M ? decode_m4(codes[i]) * s : decode_v4(codes[i], s);
}

/* A moment of element i, stored where the format is per element (the block formats go through
   the buffers and encode_block). ROLE: 0 m, 1 v, 2 the maximum. */
static inline __attribute__((always_inline)) void store_moment(const int STATE, const int ROLE, void *storage,
                                                               int64_t at, int i, float x, uint32_t key) {
    if (STATE == STATE_F32) ((float *)storage)[at + i] = x;
    else if (STATE == STATE_BF16_NEAREST) ((uint16_t *)storage)[at + i] = bf16_nearest(x);
    else if (STATE == STATE_BF16)
        ((uint16_t *)storage)[at + i] = ROLE == 2 ? bf16_up(x) : bf16_stochastic(x, key, (uint32_t)(at + i));
}

/* The whole step of one block: decode, update, store θ and the per-element moments, and (block
   formats) leave m, v, u = the new maximum and sqrt(u) in the buffers with each one's block
   maximum. Every argument in capitals is a constant at its call site, so each combination is its
   own straight, vectorized loop. */
static inline __attribute__((always_inline)) void step_block(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const int LEN,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w, float *restrict bm, float *restrict bv,
        float *restrict bs, float *restrict bf, float *restrict maxima) {
    const block_scalars_t *k = &w->k;
    const int block = STATE == STATE_INT4 ? 128 : 256, blocked = STATE == STATE_INT8 || STATE == STATE_INT4;
    const int v_sqrt = STATE == STATE_INT8 ? v8_SQRT_LINEAR : v4_SQRT_LINEAR;
    const int len = LEN;
    float sm = 0.0f, sv = 0.0f, su = 0.0f;
    uint8_t cm[BLOCK_MAX], cv[BLOCK_MAX], cu[BLOCK_MAX];
    if (blocked) {
        const float scale_v = STATE == STATE_INT8 ? v8_PRESCALE : v4_PRESCALE;
        sm = mo->ms[at / block];
        sv = mo->vs[at / block] * scale_v;
        su = MAXMODE ? mo->vms[at / block] * scale_v : 0.0f;
        if (STATE == STATE_INT4) {
            unpack4((const uint8_t *)mo->m + at / 2, cm, len);
            unpack4((const uint8_t *)mo->v + at / 2, cv, len);
            if (MAXMODE) unpack4((const uint8_t *)mo->vm + at / 2, cu, len);
        }
    }
    int32_t top_m = 0, top_v = 0, top_u = 0;
    for (int i = 0; i < len; ++i) {
        float gi, pi;
        if (THETA == THETA_F32) {
            gi = ((const float *)g)[at + i];
            pi = ((const float *)p)[at + i];
        } else {
            gi = bf16_to_float(((const uint16_t *)g)[at + i]);
            pi = bf16_to_float(((const uint16_t *)p)[at + i]);
        }
        gi = gi * k->sign;
        if (DECAY == 2) pi = pi * k->factor;
        if (DECAY == 1) gi = gi + pi * k->wd;
        float mi = load_moment(STATE, 1, mo->m, cm, at, i, sm) * k->b1 + gi * k->omb1;
        float vi = load_moment(STATE, 0, mo->v, cv, at, i, sv) * k->b2 + (gi * gi) * k->omb2;
        float ui = vi, ai = 0.0f;
        if (MAXMODE) {
            float c = MAXMODE == 2 ? vi / k->c2 : vi;
            ai = load_moment(STATE, 0, mo->vm, cu, at, i, su);
            ui = (ai > c || ai != ai) ? ai : c; /* torch.maximum: NaN wins */
        }
        float root = sqrtf(ui);
        float d = root;
        if (DIVIDE) d = d / k->sc2;
        d = d + k->eps;
        float theta = pi + (mi * k->neg_ss) / d;
        if (THETA == THETA_F32) ((float *)p)[at + i] = theta;
        else if (THETA == THETA_BF16) ((uint16_t *)p)[at + i] = bf16_nearest(theta);
        else ((uint16_t *)p)[at + i] = bf16_stochastic(theta, w->key_param, (uint32_t)(at + i));
        if (blocked) {
            bm[i] = mi; bv[i] = vi; bs[i] = v_sqrt ? root : ui; /* what the maximum's (Adam: v's) encoder takes */
            if (MAXMODE) bf[i] = ai;
            top_m = max_i32(top_m, ibits(mi));
            top_v = max_i32(top_v, ibits(vi));
            top_u = max_i32(top_u, ibits(ui));
        } else {
            store_moment(STATE, 0, mo->m, at, i, mi, w->key_m);
            store_moment(STATE, 1, mo->v, at, i, vi, w->key_v);
            if (MAXMODE) store_moment(STATE, 2, mo->vm, at, i, ui, 0);
        }
    }
    if (blocked) { /* the block maxima, NaN (canonical) if any element is NaN, as torch's amax */
        maxima[0] = top_m > 0x7F800000 ? as_float(0x7FC00000u) : as_float((uint32_t)top_m);
        maxima[1] = top_v > 0x7F800000 ? as_float(0x7FC00000u) : as_float((uint32_t)top_v);
        maxima[2] = top_u > 0x7F800000 ? as_float(0x7FC00000u) : as_float((uint32_t)top_u);
    }
}

/* The vector steps of full blocks: AVX-512 or AVX2 intrinsics (AMSGRAD_PLAIN_LOOPS, a compiler
   flag, keeps the plain loops below for every block, as a build for neither gets). */
#if !defined(AMSGRAD_PLAIN_LOOPS) && !v8_SQRT_LINEAR && !v4_SQRT_LINEAR && defined(__AVX512F__) \
    && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define HAVE_VECTOR_STEPS 1
#include "steps_avx512.h"
#elif !defined(AMSGRAD_PLAIN_LOOPS) && !v8_SQRT_LINEAR && !v4_SQRT_LINEAR && defined(__AVX2__)
#define HAVE_VECTOR_STEPS 1
#include "steps_avx2.h"
#else
#define HAVE_VECTOR_STEPS 0
#endif

/* The chunk [start, start + len) of one tensor: every block through step_block and, for the block
   formats, encode_moments (with AVX-512 or AVX2, every full block through avx_step_block or
   avx_step_elements instead). */
static inline __attribute__((always_inline)) void run_chunk_of(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE,
        void *p, const void *g, const moments_t *mo, int64_t start, int64_t len, const tensor_work_t *w) {
    const int block = STATE == STATE_INT4 ? 128 : 256, blocked = STATE == STATE_INT8 || STATE == STATE_INT4;
    float bm[BLOCK_MAX], bv[BLOCK_MAX], bs[BLOCK_MAX], bf[BLOCK_MAX], maxima[3];
    int64_t at = start, end = start + len;
    while (at < end) {
        int n = end - at < block ? (int)(end - at) : block;
#if HAVE_VECTOR_STEPS
        if (n == block) { /* every format and θ */
            if (blocked) avx_step_block(STATE, THETA, DECAY, MAXMODE, DIVIDE, p, g, mo, at, w);
            else avx_step_elements(STATE, THETA, DECAY, MAXMODE, DIVIDE, block, p, g, mo, at, w);
            at += n;
            continue;
        }
#endif
        if (n == block) /* full blocks: a constant length, loops without remainders */
            step_block(STATE, THETA, DECAY, MAXMODE, DIVIDE, block, p, g, mo, at, w, bm, bv, bs, bf, maxima);
        else
            step_block(STATE, THETA, DECAY, MAXMODE, DIVIDE, n, p, g, mo, at, w, bm, bv, bs, bf, maxima);
        if (blocked) encode_moments(STATE, MAXMODE, mo, at, n, bm, bv, bs, bf, maxima);
        at += n;
    }
}

typedef void (*chunk_fn)(void *, const void *, const moments_t *, int64_t, int64_t, const tensor_work_t *);

#define CHUNK_FN(S, T, D, M, V)                                                                 \
static void chunk_##S##_##T##_##D##_##M##_##V(void *p, const void *g, const moments_t *mo,      \
                                              int64_t start, int64_t len, const tensor_work_t *w) { \
    run_chunk_of(S, T, D, M, V, p, g, mo, start, len, w);                                      \
}
#define CHUNK_FNS_V(S, T, D, M) CHUNK_FN(S, T, D, M, 0) CHUNK_FN(S, T, D, M, 1)
#define CHUNK_FNS_M(S, T, D) CHUNK_FNS_V(S, T, D, 0) CHUNK_FNS_V(S, T, D, 1) CHUNK_FNS_V(S, T, D, 2)
#define CHUNK_FNS(S, T) CHUNK_FNS_M(S, T, 0) CHUNK_FNS_M(S, T, 1) CHUNK_FNS_M(S, T, 2)
#define TABLE_V(S, T, D, M) chunk_##S##_##T##_##D##_##M##_0, chunk_##S##_##T##_##D##_##M##_1,
#define TABLE_M(S, T, D) TABLE_V(S, T, D, 0) TABLE_V(S, T, D, 1) TABLE_V(S, T, D, 2)
#define TABLE(S, T) {TABLE_M(S, T, 0) TABLE_M(S, T, 1) TABLE_M(S, T, 2)}

/* float32 parameters: the three compressed formats; bfloat16 parameters: all five, θ to nearest
   or stochastically rounded. */
CHUNK_FNS(2, 0) CHUNK_FNS(3, 0) CHUNK_FNS(4, 0)
CHUNK_FNS(0, 1) CHUNK_FNS(1, 1) CHUNK_FNS(2, 1) CHUNK_FNS(3, 1) CHUNK_FNS(4, 1)
CHUNK_FNS(0, 2) CHUNK_FNS(1, 2) CHUNK_FNS(2, 2) CHUNK_FNS(3, 2) CHUNK_FNS(4, 2)

static const chunk_fn CHUNKS[3][5][18] = {
    {{0}, {0}, TABLE(2, 0), TABLE(3, 0), TABLE(4, 0)},
    {TABLE(0, 1), TABLE(1, 1), TABLE(2, 1), TABLE(3, 1), TABLE(4, 1)},
    {TABLE(0, 2), TABLE(1, 2), TABLE(2, 2), TABLE(3, 2), TABLE(4, 2)},
};

/* One step of n tensors of one layout. Tables of n pointers each: parameters, gradients, the
   three moments (vm NULL for Adam), their scales (NULL tables for the float formats), the step
   counters (incremented here) and the rounding seeds (NULL when nothing is rounded stochastically). */
int amsgrad_compressed_step(int64_t n, void **p, void **g, void **m, void **v, void **vm, float **ms, float **vs,
                            float **vms, const int64_t *numel, void **steps, const int64_t *seeds,
                            const settings_t *s, const layout_t *L) {
    tensor_work_t *work = (tensor_work_t *)malloc(sizeof(tensor_work_t) * (n + 1));
    int64_t *first_chunk = (int64_t *)malloc(sizeof(int64_t) * (n + 1));
    if (!work || !first_chunk) { free(work); free(first_chunk); return 1; }
    int64_t total = 0;
    first_chunk[0] = 0;
    for (int64_t i = 0; i < n; ++i) {
        double t = next_step(steps[i], s->step_is_double);
        tensor_scalars_t ts = scalars_for_step(s, t);
        block_scalars_t *k = &work[i].k;
        k->sign = (float)s->sign; k->wd = (float)s->weight_decay; k->factor = (float)s->decay_factor;
        k->b1 = (float)s->beta1; k->b2 = (float)s->beta2;
        k->omb1 = (float)(1.0 - s->beta1); k->omb2 = (float)(1.0 - s->beta2);
        k->eps = (float)s->eps; k->c2 = (float)ts.correction2; k->sc2 = (float)ts.sqrt_correction2;
        k->neg_ss = (float)ts.neg_step_size;
        work[i].divide = ts.divide; /* dividing by a divisor of 1 would change nothing either */
        uint64_t seed = seeds ? (uint64_t)seeds[i] : 0;
        uint32_t step = (uint32_t)(uint64_t)t;
        work[i].key_param = rounding_key(seed, step, ROLE_PARAM);
        work[i].key_m = rounding_key(seed, step, ROLE_EXP_AVG);
        work[i].key_v = rounding_key(seed, step, ROLE_EXP_AVG_SQ);
        first_chunk[i + 1] = first_chunk[i] + (numel[i] + CHUNK - 1) / CHUNK;
        total += numel[i];
    }
    const int amsgrad = vm != 0;
    const int theta_kind = L->param_kind == PARAM_F32 ? THETA_F32 : L->stochastic_param ? THETA_BF16_SR : THETA_BF16;
    int64_t chunks = first_chunk[n];
    _Pragma("omp parallel for schedule(static) num_threads(s->num_threads) if(total >= PARALLEL_MIN_ELEMENTS)")
    for (int64_t c = 0; c < chunks; ++c) {
        int64_t lo = 0, hi = n;
        while (hi - lo > 1) { int64_t mid = (lo + hi) / 2; if (first_chunk[mid] <= c) lo = mid; else hi = mid; }
        int64_t start = (c - first_chunk[lo]) * CHUNK;
        int64_t len = numel[lo] - start < CHUNK ? numel[lo] - start : CHUNK;
        moments_t mo = {m[lo], v[lo], amsgrad ? vm[lo] : 0, ms ? ms[lo] : 0, vs ? vs[lo] : 0,
                        amsgrad && vms ? vms[lo] : 0};
        int variant = s->decay_mode * 6 + (amsgrad ? s->max_mode : 0) * 2 + work[lo].divide;
        CHUNKS[theta_kind][L->state_kind][variant](p[lo], g[lo], &mo, start, len, &work[lo]);
    }
    free(work); free(first_chunk);
    return 0;
}
