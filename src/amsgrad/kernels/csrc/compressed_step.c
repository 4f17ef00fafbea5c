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
enum { BLOCK_MAX = 256, LANES = 16 };

typedef struct {
    int32_t param_kind, state_kind, stochastic_param;
} layout_t;

#define UP_BIAS (1.0f - 0x1p-19f)
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
/* The encoders work on bit patterns where they can: a non-negative float32 (NaN included, as the
   largest) orders like its bits, and integer selects vectorize where float compares would not. */
static inline uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }
static inline uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }
static inline int32_t max_i32(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

/* Signed minifloat (m): magnitude k > 0 is the float32 with bits (k + OFFSET) << SHIFT. */
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
    int32_t first = a >= as_bits(P##_magnitudes[1] * 0.5f); /* half of the smallest: exact */  \
    int32_t small = -(int32_t)(k <= 0);                                                        \
    k = min_i32((k & ~small) | (first & small), P##_COUNT - 1);                                \
    return (uint32_t)k | ((negative & (uint32_t)(k > 0)) << (P##_BITS - 1));                   \
}

/* Unsigned sqrt-linear, no zero (v and the maximum): magnitude k is ((k + 1) / COUNT)^2. The
   encoders take the element's square root and the block's gain sqrt(r) * COUNT (see blockwise.py);
   the decoded value (k + 1)^2 * (s / COUNT^2) is magnitude(k) * s exactly (a power-of-two factor). */
#define DEFINE_SQRT_LINEAR(P)                                                                   \
static inline float decode_##P(uint32_t k, float s_over_count2) {                              \
    return (float)((k + 1) * (k + 1)) * s_over_count2;                                         \
}                                                                                              \
static inline uint32_t encode_nearest_##P(float root, float gain) {                            \
    float q = root * gain + 0.5f;                                                              \
    q = as_float(min_u32(as_bits(q), as_bits((float)P##_COUNT))); /* NaN: the top */           \
    return (uint32_t)max_i32((int32_t)q - 1, 0);                                               \
}                                                                                              \
/* The smallest code whose decoded value is >= x: the lowered estimate, then one up where the   \
   decoded product is still below x (not NaN). */                                              \
static inline uint32_t encode_max_##P(float x, float root, float gain_up, float s_over_count2) { \
    float q = root * gain_up;                                                                  \
    q = as_float(min_u32(as_bits(q), as_bits((float)P##_COUNT)));                              \
    int32_t w = (int32_t)q;                                                                    \
    int32_t k = min_i32(max_i32(w + (int32_t)(as_bits(q) > as_bits((float)w)) - 1, 0), P##_COUNT - 1); \
    uint32_t xb = as_bits(x);                                                                  \
    uint32_t short_ = (as_bits(decode_##P((uint32_t)k, s_over_count2)) < xb) & (xb <= 0x7F800000u); \
    return (uint32_t)k + (short_ & (uint32_t)(k < P##_COUNT - 1));                             \
}

DEFINE_MINIFLOAT(m8)
DEFINE_MINIFLOAT(m4)
DEFINE_SQRT_LINEAR(v8)
DEFINE_SQRT_LINEAR(v4)

/* ----------------------------------------------------------- block helpers */
static inline float reciprocal_scale(float s) {
    float r = 1.0f / s;
    return r < FLOAT32_MAX ? r : FLOAT32_MAX;
}

/* max_i |x_i|, NaN (canonical) if any x_i is NaN: as torch's amax (for v and v̂, which are never
   negative, max_i x_i). On bit patterns: |x| orders like its bits, and NaN is above everything. */
static inline __attribute__((always_inline)) float block_max(const float *restrict x, int len) {
    uint32_t lanes[LANES] = {0};
    int i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int j = 0; j < LANES; ++j) lanes[j] = max_u32(lanes[j], as_bits(x[i + j]) & 0x7FFFFFFFu);
    uint32_t best = 0;
    for (; i < len; ++i) best = max_u32(best, as_bits(x[i]) & 0x7FFFFFFFu);
    for (int j = 0; j < LANES; ++j) best = max_u32(best, lanes[j]);
    return best > 0x7F800000u ? as_float(0x7FC00000u) : as_float(best);
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

/* One moment of one block, decoded into float32. */
static inline __attribute__((always_inline)) void decode_block(int kind, int is_m, const void *restrict storage, const float *restrict scales,
                                int64_t start, int len, float *restrict out) {
    if (kind == STATE_F32) {
        memcpy(out, (const float *)storage + start, sizeof(float) * len);
    } else if (kind == STATE_BF16 || kind == STATE_BF16_NEAREST) {
        const uint16_t *h = (const uint16_t *)storage + start;
        for (int i = 0; i < len; ++i) out[i] = bf16_to_float(h[i]);
    } else if (kind == STATE_INT8) {
        const uint8_t *c = (const uint8_t *)storage + start;
        const float s = scales[start / 256];
        const float s_scaled = s * (1.0f / ((float)v8_COUNT * (float)v8_COUNT));
        if (is_m) for (int i = 0; i < len; ++i) out[i] = decode_m8(c[i]) * s;
        else for (int i = 0; i < len; ++i) out[i] = decode_v8(c[i], s_scaled);
    } else {
        uint8_t c[BLOCK_MAX];
        unpack4((const uint8_t *)storage + start / 2, c, len);
        const float s = scales[start / 128];
        const float s_scaled = s * (1.0f / ((float)v4_COUNT * (float)v4_COUNT));
        if (is_m) for (int i = 0; i < len; ++i) out[i] = decode_m4(c[i]) * s;
        else for (int i = 0; i < len; ++i) out[i] = decode_v4(c[i], s_scaled);
    }
}

/* The new value of one moment of one block into its storage. ROLE: exp_avg (0), exp_avg_sq (1),
   or the maximum (2, rounded up). ROOT: the elements' square roots where the update has them
   (NULL: computed here). */
static inline __attribute__((always_inline)) void encode_block(
        int kind, int role, void *restrict storage, float *restrict scales, int64_t start, int len,
        const float *restrict x, const float *restrict root, uint32_t key) {
    if (kind == STATE_F32) {
        memcpy((float *)storage + start, x, sizeof(float) * len);
        return;
    }
    if (kind == STATE_BF16_NEAREST || kind == STATE_BF16) {
        uint16_t *h = (uint16_t *)storage + start;
        if (kind == STATE_BF16_NEAREST) for (int i = 0; i < len; ++i) h[i] = bf16_nearest(x[i]);
        else if (role == 2) for (int i = 0; i < len; ++i) h[i] = bf16_up(x[i]);
        else for (int i = 0; i < len; ++i) h[i] = bf16_stochastic(x[i], key, (uint32_t)(start + i));
        return;
    }
    const int eight = kind == STATE_INT8;
    const int block = eight ? 256 : 128;
    const float s = block_max(x, len);
    const float r = reciprocal_scale(s);
    scales[start / block] = s;
    uint8_t local[BLOCK_MAX];
    uint8_t *c = eight ? (uint8_t *)storage + start : local;
    if (role == 0) {
        if (eight) for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_nearest_m8(x[i] * r);
        else for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_nearest_m4(x[i] * r);
    } else {
        const float count = eight ? (float)v8_COUNT : (float)v4_COUNT;
        const float gain = sqrtf(r) * count;
        float roots[BLOCK_MAX];
        if (!root) { for (int i = 0; i < len; ++i) roots[i] = sqrtf(x[i]); root = roots; }
        if (role == 1) {
            if (eight) for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_nearest_v8(root[i], gain);
            else for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_nearest_v4(root[i], gain);
        } else if (!(s >= TINY_SCALE) && s == s) {
            memset(c, eight ? v8_COUNT - 1 : v4_COUNT - 1, len);
        } else {
            const float gain_up = gain * UP_BIAS, s_scaled = s * (1.0f / (count * count));
            if (eight) for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_max_v8(x[i], root[i], gain_up, s_scaled);
            else for (int i = 0; i < len; ++i) c[i] = (uint8_t)encode_max_v4(x[i], root[i], gain_up, s_scaled);
        }
    }
    if (!eight) pack4(local, (uint8_t *)storage + start / 2, len);
}

/* ------------------------------------------------------------- the update */
typedef struct {
    float sign, wd, factor, b1, b2, omb1, omb2, eps, c2, sc2, neg_ss;
} block_scalars_t;

/* The update of one block from decoded moments; m, v, u and θ are written back into the buffers.
   DECAY, MAXMODE, DIVIDE and PARAM are constants at every call site. */
static inline __attribute__((always_inline)) void update_block(
        const void *restrict p, const void *restrict g, int64_t start, int len, float *restrict m,
        float *restrict v, float *restrict u, float *restrict theta, float *restrict root,
        const block_scalars_t *restrict k, const int DECAY, const int MAXMODE, const int DIVIDE, const int PARAM) {
    for (int i = 0; i < len; ++i) {
        float gi, pi;
        if (PARAM == PARAM_F32) {
            gi = ((const float *)g)[start + i];
            pi = ((const float *)p)[start + i];
        } else {
            gi = bf16_to_float(((const uint16_t *)g)[start + i]);
            pi = bf16_to_float(((const uint16_t *)p)[start + i]);
        }
        gi = gi * k->sign;
        if (DECAY == 2) pi = pi * k->factor;
        if (DECAY == 1) gi = gi + pi * k->wd;
        float mi = m[i] * k->b1 + gi * k->omb1;
        float vi = v[i] * k->b2 + (gi * gi) * k->omb2;
        float ui = vi;
        if (MAXMODE) {
            float c = MAXMODE == 2 ? vi / k->c2 : vi;
            float a = u[i];
            ui = (a > c || a != a) ? a : c; /* torch.maximum: NaN wins */
        }
        float d = sqrtf(ui);
        root[i] = d;
        if (DIVIDE) d = d / k->sc2;
        d = d + k->eps;
        m[i] = mi; v[i] = vi; u[i] = ui;
        theta[i] = pi + (mi * k->neg_ss) / d;
    }
}

#define UPDATE_CASE(D, M, V, P) update_block(p, g, start, len, m, v, u, theta, root, k, D, M, V, P)
static void run_update(int selector, const void *p, const void *g, int64_t start, int len, float *m, float *v,
                       float *u, float *theta, float *root, const block_scalars_t *k) {
    switch (selector) {
#define ROW(P, BASE)                                                                           \
        case BASE + 0: UPDATE_CASE(0, 0, 0, P); break;  case BASE + 1: UPDATE_CASE(0, 0, 1, P); break; \
        case BASE + 2: UPDATE_CASE(0, 1, 0, P); break;  case BASE + 3: UPDATE_CASE(0, 1, 1, P); break; \
        case BASE + 4: UPDATE_CASE(0, 2, 0, P); break;  case BASE + 5: UPDATE_CASE(0, 2, 1, P); break; \
        case BASE + 6: UPDATE_CASE(1, 0, 0, P); break;  case BASE + 7: UPDATE_CASE(1, 0, 1, P); break; \
        case BASE + 8: UPDATE_CASE(1, 1, 0, P); break;  case BASE + 9: UPDATE_CASE(1, 1, 1, P); break; \
        case BASE + 10: UPDATE_CASE(1, 2, 0, P); break; case BASE + 11: UPDATE_CASE(1, 2, 1, P); break; \
        case BASE + 12: UPDATE_CASE(2, 0, 0, P); break; case BASE + 13: UPDATE_CASE(2, 0, 1, P); break; \
        case BASE + 14: UPDATE_CASE(2, 1, 0, P); break; case BASE + 15: UPDATE_CASE(2, 1, 1, P); break; \
        case BASE + 16: UPDATE_CASE(2, 2, 0, P); break; case BASE + 17: UPDATE_CASE(2, 2, 1, P); break;
        ROW(PARAM_F32, 0)
        ROW(PARAM_BF16, 18)
#undef ROW
        default: break;
    }
}

typedef struct {
    block_scalars_t k;
    uint32_t key_param, key_m, key_v;
    int32_t divide;
} tensor_work_t;

/* One block: decode, update, encode. LEN is a constant (the block size) at the call for full
   blocks, so every loop is unrolled without a remainder; the last, partial block passes its length. */
static inline __attribute__((always_inline)) void run_block(
        const layout_t *L, int selector, int amsgrad, void *p, const void *g, void *m, void *v, void *vm,
        float *ms, float *vs, float *vms, int64_t at, const int n, const tensor_work_t *w) {
    float bm[BLOCK_MAX], bv[BLOCK_MAX], bu[BLOCK_MAX], bt[BLOCK_MAX], bs[BLOCK_MAX];
    decode_block(L->state_kind, 1, m, ms, at, n, bm);
    decode_block(L->state_kind, 0, v, vs, at, n, bv);
    if (amsgrad) decode_block(L->state_kind, 0, vm, vms, at, n, bu);
    run_update(selector, p, g, at, n, bm, bv, bu, bt, bs, &w->k);
    /* bs holds sqrt(u): the maximum's roots under AMSGrad, v's under Adam. */
    encode_block(L->state_kind, 0, m, ms, at, n, bm, 0, w->key_m);
    encode_block(L->state_kind, 1, v, vs, at, n, bv, amsgrad ? 0 : bs, w->key_v);
    if (amsgrad) encode_block(L->state_kind, 2, vm, vms, at, n, bu, bs, 0);
    if (L->param_kind == PARAM_F32) {
        memcpy((float *)p + at, bt, sizeof(float) * n);
    } else if (L->stochastic_param) {
        uint16_t *h = (uint16_t *)p + at;
        for (int i = 0; i < n; ++i) h[i] = bf16_stochastic(bt[i], w->key_param, (uint32_t)(at + i));
    } else {
        uint16_t *h = (uint16_t *)p + at;
        for (int i = 0; i < n; ++i) h[i] = bf16_nearest(bt[i]);
    }
}

static void run_chunk(const layout_t *L, int selector, int amsgrad, void *p, const void *g, void *m, void *v,
                      void *vm, float *ms, float *vs, float *vms, int64_t start, int64_t len,
                      const tensor_work_t *w) {
    const int block = L->state_kind == STATE_INT4 ? 128 : 256;
    int64_t at = start, end = start + len;
    if (block == 256)
        for (; at + 256 <= end; at += 256) run_block(L, selector, amsgrad, p, g, m, v, vm, ms, vs, vms, at, 256, w);
    else
        for (; at + 128 <= end; at += 128) run_block(L, selector, amsgrad, p, g, m, v, vm, ms, vs, vms, at, 128, w);
    if (at < end) run_block(L, selector, amsgrad, p, g, m, v, vm, ms, vs, vms, at, (int)(end - at), w);
}

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
    int64_t chunks = first_chunk[n];
    _Pragma("omp parallel for schedule(static) num_threads(s->num_threads) if(total >= PARALLEL_MIN_ELEMENTS)")
    for (int64_t c = 0; c < chunks; ++c) {
        int64_t lo = 0, hi = n;
        while (hi - lo > 1) { int64_t mid = (lo + hi) / 2; if (first_chunk[mid] <= c) lo = mid; else hi = mid; }
        int64_t start = (c - first_chunk[lo]) * CHUNK;
        int64_t len = numel[lo] - start < CHUNK ? numel[lo] - start : CHUNK;
        int selector = L->param_kind * 18 + s->decay_mode * 6 + s->max_mode * 2 + work[lo].divide;
        run_chunk(L, selector, amsgrad, p[lo], g[lo], m[lo], v[lo], amsgrad ? vm[lo] : 0, ms ? ms[lo] : 0,
                  vs ? vs[lo] : 0, amsgrad && vms ? vms[lo] : 0, start, len, &work[lo]);
    }
    free(work); free(first_chunk);
    return 0;
}
