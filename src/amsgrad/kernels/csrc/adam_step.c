/* The float32/float64 step of Adam and AMSGrad, every variant, one pass over memory.
   Each line rounds as the torch op it stands for does on CPU (see DEFINE_CHUNK), so in float64
   it reproduces the readable path (amsgrad.Adam.step_param) bit for bit, or within an ulp. */
#include "step_common.h"

void amsgrad_increment_steps(int64_t n, void **steps, int32_t is_double, double *values) {
    for (int64_t i = 0; i < n; ++i) values[i] = next_step(steps[i], is_double);
}

/* One chunk of one tensor. DECAY, MAXMODE and DIVIDE are constants at every call site, so the
   compiler drops the branches and vectorizes the loop. Each line rounds as the torch op it
   stands for does on CPU (built with -ffp-contract=off; FMA exactly where torch's kernel has one):
   add(alpha) is fma(other, alpha, self), addcmul is fma(value * t1, t2, self), addcdiv is
   self + (value * t1) / t2. */
#define DEFINE_CHUNK(T, SUFFIX, SQRT, FMA)                                                        \
static inline __attribute__((always_inline)) void chunk_##SUFFIX(                            \
        T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vm,     \
        int64_t len, const settings_t *s, const tensor_scalars_t *k,                          \
        const int DECAY, const int MAXMODE, const int DIVIDE) {                               \
    const T sign = (T)s->sign, wd = (T)s->weight_decay, factor = (T)s->decay_factor;         \
    const T b1 = (T)s->beta1, b2 = (T)s->beta2;                                              \
    const T omb1 = (T)(1.0 - s->beta1), omb2 = (T)(1.0 - s->beta2);                          \
    const T c2 = (T)k->correction2, sc2 = (T)k->sqrt_correction2, eps = (T)s->eps;           \
    const T neg_ss = (T)k->neg_step_size;                                                     \
    for (int64_t i = 0; i < len; ++i) {                                                      \
        T gi = g[i] * sign;                                                                   \
        T pi = p[i];                                                                          \
        if (DECAY == 2) pi = pi * factor;                                                     \
        if (DECAY == 1) gi = FMA(pi, wd, gi);                                                 \
        T mi = FMA(gi, omb1, m[i] * b1);                                                      \
        T vi = FMA(omb2 * gi, gi, v[i] * b2);                                                 \
        m[i] = mi; v[i] = vi;                                                                 \
        T u = vi;                                                                             \
        if (MAXMODE) {                                                                        \
            T c = MAXMODE == 2 ? vi / c2 : vi;                                                \
            T a = vm[i];                                                                      \
            u = (a > c || a != a) ? a : c; /* torch.maximum: NaN wins */                      \
            vm[i] = u;                                                                        \
        }                                                                                     \
        T d = SQRT(u);                                                                        \
        if (DIVIDE) d = d / sc2;                                                              \
        d = d + eps;                                                                          \
        p[i] = pi + (neg_ss * mi) / d;                                                        \
    }                                                                                         \
}                                                                                             \
                                                                                              \
static void run_chunk_##SUFFIX(T *p, const T *g, T *m, T *v, T *vm, int64_t len,              \
                               const settings_t *s, const tensor_scalars_t *k) {              \
    switch (s->decay_mode * 6 + s->max_mode * 2 + k->divide) {                                \
        case 0: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 0, 0); break;                    \
        case 1: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 0, 1); break;                    \
        case 2: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 1, 0); break;                    \
        case 3: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 1, 1); break;                    \
        case 4: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 2, 0); break;                    \
        case 5: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 0, 2, 1); break;                    \
        case 6: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 0, 0); break;                    \
        case 7: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 0, 1); break;                    \
        case 8: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 1, 0); break;                    \
        case 9: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 1, 1); break;                    \
        case 10: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 2, 0); break;                   \
        case 11: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 1, 2, 1); break;                   \
        case 12: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 0, 0); break;                   \
        case 13: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 0, 1); break;                   \
        case 14: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 1, 0); break;                   \
        case 15: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 1, 1); break;                   \
        case 16: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 2, 0); break;                   \
        default: chunk_##SUFFIX(p, g, m, v, vm, len, s, k, 2, 2, 1); break;                   \
    }                                                                                         \
}                                                                                             \
                                                                                              \
int amsgrad_adam_step_##SUFFIX(int64_t n, T **p, T **g, T **m, T **v, T **vm,                 \
                               const int64_t *numel, void **steps, const settings_t *s) {     \
    tensor_scalars_t *k = (tensor_scalars_t *)malloc(sizeof(tensor_scalars_t) * (n + 1));     \
    int64_t *first_chunk = (int64_t *)malloc(sizeof(int64_t) * (n + 1));                      \
    if (!k || !first_chunk) { free(k); free(first_chunk); return 1; }                         \
    int64_t total = 0;                                                                        \
    first_chunk[0] = 0;                                                                       \
    for (int64_t i = 0; i < n; ++i) {                                                         \
        k[i] = scalars_for_step(s, next_step(steps[i], s->step_is_double));                   \
        first_chunk[i + 1] = first_chunk[i] + (numel[i] + CHUNK - 1) / CHUNK;                 \
        total += numel[i];                                                                    \
    }                                                                                         \
    int64_t chunks = first_chunk[n];                                                          \
    _Pragma("omp parallel for schedule(static) num_threads(s->num_threads) if(total >= PARALLEL_MIN_ELEMENTS)") \
    for (int64_t c = 0; c < chunks; ++c) {                                                    \
        int64_t lo = 0, hi = n; /* the tensor i with first_chunk[i] <= c < first_chunk[i+1] */ \
        while (hi - lo > 1) { int64_t mid = (lo + hi) / 2; if (first_chunk[mid] <= c) lo = mid; else hi = mid; } \
        int64_t start = (c - first_chunk[lo]) * CHUNK;                                        \
        int64_t len = numel[lo] - start < CHUNK ? numel[lo] - start : CHUNK;                  \
        T *vmax = vm ? vm[lo] + start : 0;                                                    \
        run_chunk_##SUFFIX(p[lo] + start, g[lo] + start, m[lo] + start, v[lo] + start, vmax,  \
                           len, s, &k[lo]);                                                   \
    }                                                                                         \
    free(k); free(first_chunk);                                                               \
    return 0;                                                                                 \
}

DEFINE_CHUNK(float, f32, sqrtf, fmaf)
DEFINE_CHUNK(double, f64, sqrt, fma)
