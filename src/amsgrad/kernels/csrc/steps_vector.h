/* The compressed step's vector form, written once for any width: steps_avx512.h and steps_avx2.h
   define the types and primitives it uses (vf and vi, 32-bit float and integer lanes, VLANES of
   them; vf_* and vi_*; the width's code helpers: avx_codes, avx_tables, avx_lookup_v4,
   avx_decode_m, avx_encode_m, avx_store_codes, avx_block_max, avx_abs_bits, AVX_NEAREST,
   avx_store_bf16_top, avx_store_bf16_up, avx_indices) and include it at their end. It computes
   exactly what step_block and encode_moments compute: the same correctly rounded float32
   operations in the same order. */

/* How far ahead of the block being stepped its streams are prefetched, in elements (of 256 to
   2048, the fastest at 16M elements on 2 threads of a Zen 4). */
enum { PREFETCH_AHEAD = 1024 };

/* v and the maximum: an unsigned minifloat, times the block's (prescaled) scale. */
static inline vf avx_decode_v(const int EIGHT, vi c, vf t, const avx_tables_t *tables) {
    if (!EIGHT) return vf_mul(avx_lookup_v4(c, tables), t);
    return vf_mul(vi_float(vi_add(vi_slli(c, v8_MINIFLOAT_SHIFT), vi_set1((uint32_t)v8_MINIFLOAT_OFFSET << v8_MINIFLOAT_SHIFT))), t);
}

/* encode_nearest_v8/v4 of x (times r), clamped to the codes, in 32-bit lanes. */
static inline vi avx_encode_v(const int EIGHT, vf y) {
    vi a = avx_abs_bits(y);
    vi k = vi_max(EIGHT ? AVX_NEAREST(a, v8) : AVX_NEAREST(a, v4), vi_zero());
    return vi_min(k, vi_set1(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1));
}

static inline vi avx_lowbias32(vi x) {
    x = vi_xor(x, vi_srli(x, 16));
    x = vi_mullo(x, vi_set1(0x7feb352du));
    x = vi_xor(x, vi_srli(x, 15));
    x = vi_mullo(x, vi_set1(0x846ca68bu));
    return vi_xor(x, vi_srli(x, 16));
}

static inline vf avx_load_bf16(const uint16_t *at) { return vi_float(vi_slli(vi_load_u16(at), 16)); }

/* bf16_stochastic of VLANES values whose element indices are `index`. */
static inline void avx_store_bf16_stochastic(uint16_t *to, vf x, vi index, uint32_t key) {
    vi noise = vi_srli(avx_lowbias32(vi_add(index, vi_set1(key))), 16);
    avx_store_bf16_top(to, x, vi_srli(vi_add(vf_bits(x), noise), 16));
}

/* bf16_nearest: to nearest, ties to even. */
static inline void avx_store_bf16_nearest(uint16_t *to, vf x) {
    vi bits = vf_bits(x), odd = vi_and(vi_srli(bits, 16), vi_set1(1));
    avx_store_bf16_top(to, x, vi_srli(vi_add(vi_add(bits, vi_set1(0x7FFF)), odd), 16));
}

/* θ or g of elements [e, e + VLANES): float32 or bfloat16 (THETA). */
static inline vf avx_load_theta(const int THETA, const void *x, int64_t e) {
    return THETA == THETA_F32 ? vf_load((const float *)x + e) : avx_load_bf16((const uint16_t *)x + e);
}

static inline void avx_store_theta(const int THETA, void *p, int64_t e, vf theta, vi index, uint32_t key) {
    if (THETA == THETA_F32) vf_store((float *)p + e, theta);
    else if (THETA == THETA_BF16) avx_store_bf16_nearest((uint16_t *)p + e, theta);
    else avx_store_bf16_stochastic((uint16_t *)p + e, theta, index, key);
}

/* Prefetches a stream PREFETCH_AHEAD elements ahead of element e (a multiple of VLANES, from a
   line-aligned start), once per 64-byte line; HALF_BYTES is twice an element's size in bytes (1 for
   a 4-bit code). (Always inlined: gcc takes a function that only prefetches for one without side
   effects, and drops its calls.) */
static inline __attribute__((always_inline)) void avx_prefetch(const void *stream, int64_t e, const int HALF_BYTES) {
    const uint64_t at = (uint64_t)e * HALF_BYTES / 2; /* (unsigned: shifts and masks, no signed division) */
    if (at % 64 < (uint64_t)(VLANES * HALF_BYTES / 2))
        _mm_prefetch((const char *)stream + at + (uint64_t)PREFETCH_AHEAD * HALF_BYTES / 2, _MM_HINT_T0);
}

/* Prefetches of elements [e, e + VLANES) of θ, g and the moments (STATE_HALF_BYTES: a moment's). */
static inline __attribute__((always_inline)) void avx_prefetch_streams(
        const int THETA, const int MAXMODE, const int STATE_HALF_BYTES, const void *p, const void *g,
        const moments_t *mo, int64_t e) {
    const int theta = THETA == THETA_F32 ? 8 : 4;
    avx_prefetch(g, e, theta);
    avx_prefetch(p, e, theta);
    avx_prefetch(mo->m, e, STATE_HALF_BYTES);
    avx_prefetch(mo->v, e, STATE_HALF_BYTES);
    if (MAXMODE) avx_prefetch(mo->vm, e, STATE_HALF_BYTES);
}

/* A tensor's step constants, broadcast. Without coupled decay, (g sign)(1 - b1) is g (sign (1 - b1))
   exactly (sign is ±1, and a NaN g stays g's NaN either way) and (g sign)^2 is g g: the sign goes
   into the constant. */
typedef struct { vf sign, wd, factor, b1, b2, omb1, omb2, eps, c2, sc2, neg_ss; } avx_scalars_t;

static inline avx_scalars_t avx_scalars(const int DECAY, const block_scalars_t *k) {
    avx_scalars_t c;
    c.sign = vf_set1(k->sign); c.wd = vf_set1(k->wd); c.factor = vf_set1(k->factor);
    c.b1 = vf_set1(k->b1); c.b2 = vf_set1(k->b2);
    c.omb1 = vf_set1(DECAY == 1 ? k->omb1 : k->omb1 * k->sign);
    c.omb2 = vf_set1(k->omb2); c.eps = vf_set1(k->eps); c.c2 = vf_set1(k->c2);
    c.sc2 = vf_set1(k->sc2); c.neg_ss = vf_set1(k->neg_ss);
    return c;
}

/* The update of elements [e, e + VLANES), as step_block's: from the decoded m, v and stored maximum
   a, the new m, v and maximum u (v under Adam); θ is written. */
static inline __attribute__((always_inline)) void avx_update(
        const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const avx_scalars_t *c,
        void *restrict p, const void *restrict g, int64_t e, vf m, vf v, vf a, uint32_t key_param,
        vf *mi, vf *vn, vf *ui) {
    vf gi = avx_load_theta(THETA, g, e), pi = avx_load_theta(THETA, p, e);
    if (DECAY == 2) pi = vf_mul(pi, c->factor);
    if (DECAY == 1) gi = vf_add(vf_mul(gi, c->sign), vf_mul(pi, c->wd));
    *mi = vf_add(vf_mul(m, c->b1), vf_mul(gi, c->omb1));
    *vn = vf_add(vf_mul(v, c->b2), vf_mul(vf_mul(gi, gi), c->omb2));
    *ui = MAXMODE ? vf_max_nan(a, MAXMODE == 2 ? vf_div(*vn, c->c2) : *vn) : *vn;
    vf d = vf_sqrt(*ui);
    if (DIVIDE) d = vf_div(d, c->sc2);
    d = vf_add(d, c->eps);
    avx_store_theta(THETA, p, e, vf_add(pi, vf_div(vf_mul(*mi, c->neg_ss), d)),
                    THETA == THETA_BF16_SR ? avx_indices(e) : vi_zero(), key_param);
}

/* One full block: decode, update, store θ, encode (as step_block and encode_moments). */
static inline __attribute__((always_inline)) void avx_step_block(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const int EIGHT = STATE == STATE_INT8, block = EIGHT ? 256 : 128, lanes = block / VLANES;
    const int64_t b = at / block;
    const int64_t code_at = EIGHT ? at : at / 2;
    const uint8_t *cm = (const uint8_t *)mo->m + code_at, *cv = (const uint8_t *)mo->v + code_at;
    const uint8_t *cu = MAXMODE ? (const uint8_t *)mo->vm + code_at : 0;
    const avx_tables_t tables = avx_tables();
    const vf sm = vf_set1(mo->ms[b]), sv = vf_set1(mo->vs[b]), su = vf_set1(MAXMODE ? mo->vms[b] : 0.0f);
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    vf bm[256 / VLANES], bv[256 / VLANES], bu[256 / VLANES], bf[256 / VLANES];
    vi top_m = vi_zero(), top_v = top_m, top_u = top_m;
    for (int j = 0; j < lanes; ++j) {
        const int64_t e = at + VLANES * j;
        /* (the hardware prefetcher alone leaves memory idle while a block is encoded) */
        avx_prefetch_streams(THETA, MAXMODE, EIGHT ? 2 : 1, p, g, mo, e);
        vf ai = MAXMODE ? avx_decode_v(EIGHT, avx_codes(EIGHT, cu, j), su, &tables) : vf_zero();
        vf m_new, v_new, u_new;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_decode_m(EIGHT, avx_codes(EIGHT, cm, j), sm, &tables),
                   avx_decode_v(EIGHT, avx_codes(EIGHT, cv, j), sv, &tables), ai, w->key_param, &m_new, &v_new, &u_new);
        bm[j] = m_new; bv[j] = v_new; bu[j] = u_new; bf[j] = ai;
        top_m = vi_max(top_m, avx_abs_bits(m_new));
        top_v = vi_max(top_v, avx_abs_bits(v_new));
        if (MAXMODE) top_u = vi_max(top_u, avx_abs_bits(u_new));
    }
    /* the new scales and codes */
    const float smax = avx_block_max(top_m), svmax = avx_block_max(top_v), sumax = MAXMODE ? avx_block_max(top_u) : 0.0f;
    mo->ms[b] = smax; mo->vs[b] = svmax;
    if (MAXMODE) mo->vms[b] = sumax;
    const vf rm = vf_set1(reciprocal_scale(smax)), rv = vf_set1(reciprocal_scale(svmax));
    const vf ru = vf_set1(reciprocal_scale(sumax)), sun = vf_set1(sumax);
    const int all_top = MAXMODE && !(sumax >= TINY_SCALE) && sumax == sumax;
    const vi top = vi_set1(EIGHT ? v8_COUNT - 1 : v4_COUNT - 1);
    uint8_t *om = (uint8_t *)mo->m + code_at, *ov = (uint8_t *)mo->v + code_at, *ou = MAXMODE ? (uint8_t *)mo->vm + code_at : 0;
    for (int j = 0; j < lanes; ++j) {
        avx_store_codes(EIGHT, om, j, avx_encode_m(EIGHT, vf_mul(bm[j], rm)));
        avx_store_codes(EIGHT, ov, j, avx_encode_v(EIGHT, vf_mul(bv[j], rv)));
        if (MAXMODE) {
            vi near = avx_encode_v(EIGHT, vf_mul(bu[j], ru));
            /* one code up where it decodes below its floor; never past the top code: that one
               decodes to the new scale, the largest |u|, and u is at least its floor (a NaN
               compares false) */
            near = vi_up_where_below(near, avx_decode_v(EIGHT, near, sun, &tables), bf[j]);
            avx_store_codes(EIGHT, ou, j, all_top ? top : near);
        }
    }
}

/* ------------------------------------------- the per-element formats (float32 or bfloat16 state) */
static inline vf avx_load_moment(const int STATE, const void *state, int64_t e) {
    return STATE == STATE_F32 ? vf_load((const float *)state + e) : avx_load_bf16((const uint16_t *)state + e);
}

/* As store_moment. ROLE: 0 m, 1 v, 2 the maximum. */
static inline void avx_store_moment(const int STATE, const int ROLE, void *state, int64_t e, vf x, vi index,
                                    uint32_t key) {
    if (STATE == STATE_F32) vf_store((float *)state + e, x);
    else if (STATE == STATE_BF16_NEAREST) avx_store_bf16_nearest((uint16_t *)state + e, x);
    else if (ROLE == 2) avx_store_bf16_up((uint16_t *)state + e, x);
    else avx_store_bf16_stochastic((uint16_t *)state + e, x, index, key);
}

/* The step of LEN elements from `at` (a multiple of VLANES) of a per-element state format: what
   step_block computes for it, with the same prefetching as avx_step_block. */
static inline __attribute__((always_inline)) void avx_step_elements(
        const int STATE, const int THETA, const int DECAY, const int MAXMODE, const int DIVIDE, const int LEN,
        void *restrict p, const void *restrict g, const moments_t *restrict mo, int64_t at,
        const tensor_work_t *restrict w) {
    const avx_scalars_t c = avx_scalars(DECAY, &w->k);
    for (int i = 0; i < LEN; i += VLANES) {
        const int64_t e = at + i;
        avx_prefetch_streams(THETA, MAXMODE, STATE == STATE_F32 ? 8 : 4, p, g, mo, e);
        vf m_new, v_new, u_new;
        avx_update(THETA, DECAY, MAXMODE, DIVIDE, &c, p, g, e, avx_load_moment(STATE, mo->m, e),
                   avx_load_moment(STATE, mo->v, e), MAXMODE ? avx_load_moment(STATE, mo->vm, e) : vf_zero(),
                   w->key_param, &m_new, &v_new, &u_new);
        const vi index = avx_indices(e);
        avx_store_moment(STATE, 0, mo->m, e, m_new, index, w->key_m);
        avx_store_moment(STATE, 1, mo->v, e, v_new, index, w->key_v);
        if (MAXMODE) avx_store_moment(STATE, 2, mo->vm, e, u_new, index, 0);
    }
}
