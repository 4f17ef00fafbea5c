/* What every kernel of the package shares: a param group's settings, one call at a time, and the
   per-tensor numbers of a step (the bias corrections and the step size, as Adam.adam_update). */
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, decay_factor, sign;
    int32_t decay_mode, max_mode, optimized_update, bias_correction, step_is_double, num_threads;
} settings_t;

/* Per-tensor numbers, from its step t (as Adam.bias_corrections and Adam.adam_update). */
typedef struct { double neg_step_size, correction2, sqrt_correction2; int32_t divide; } tensor_scalars_t;

enum { CHUNK = 8192, PARALLEL_MIN_ELEMENTS = 1 << 18 }; /* below: one thread, as torch for small tensors */

static inline double next_step(void *step, int32_t is_double) {
    if (is_double) { double *s = (double *)step; *s = *s + 1.0; return *s; }
    float *s = (float *)step; *s = *s + 1.0f; return (double)*s;
}

static inline tensor_scalars_t scalars_for_step(const settings_t *s, double t) {
    double c1 = 1.0, c2 = 1.0;
    if (s->bias_correction) { c1 = 1.0 - pow(s->beta1, t); c2 = 1.0 - pow(s->beta2, t); }
    /* A maximum of corrected v_t is already corrected: the update uses 1 for 1 - beta2^t. */
    double c2_update = s->max_mode == 2 ? 1.0 : c2;
    tensor_scalars_t k;
    k.correction2 = c2;
    k.sqrt_correction2 = sqrt(c2_update);
    if (s->optimized_update) {
        k.neg_step_size = -(s->lr * sqrt(c2_update) / c1);
        k.divide = 0;
    } else {
        k.neg_step_size = -(s->lr / c1);
        k.divide = c2_update != 1.0;
    }
    return k;
}
