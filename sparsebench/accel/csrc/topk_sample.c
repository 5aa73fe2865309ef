/* A batch of the top-k tasks from its uniforms, as tasks/topk.py computes it (TopKUniform._from_uniforms),
 * for the native trainer (sparsebench/native.py, `topk_batch`). Row by row, with u = the row's 3k uniforms:
 *   Floyd's algorithm: for i < k, j = V - k + i: t = min(floor(u[i] (j + 1)), j); if t was chosen before,
 *                      take j instead (exactly uniform k-subsets)
 *   a random order:    the tokens sorted by u[k .. 2k) (a stable argsort; insertion sort, which
 *                      beat branch-free rank counting here: 51 against 67-99 us per 2048 rows)
 *   the weights:       w_i = float(w_lo + (w_hi - w_lo) u[2k + i]) (in double, rounded once)
 * Bitwise the same batch as the torch code: the same double products and truncations, and no FMA
 * contraction (the library is built with -ffp-contract=off). Why: at the small regime's sizes the torch
 * transform is ~45 tiny ops (0.3-0.4 ms per step for 8 x 256 rows); this is ~50 us. */
#include <stdint.h>
#include <stdlib.h>

/* u [rows, 3k] -> tokens [rows, k], weights [rows, k]. Returns 0, or -2 if memory ran out. */
int sb_topk_from_uniforms(int64_t rows, int k, int64_t V, double w_lo, double w_scale, const double *u,
                          int64_t *tokens, float *weights) {
    int64_t *chosen = malloc(sizeof(int64_t) * (size_t)k);
    int *order = malloc(sizeof(int) * (size_t)k);
    if (!chosen || !order) {
        free(chosen);
        free(order);
        return -2;
    }
    for (int64_t r = 0; r < rows; r++) {
        const double *ur = u + r * 3 * k, *key = ur + k;
        for (int i = 0; i < k; i++) {
            const int64_t j = V - k + i;
            int64_t t = (int64_t)(ur[i] * (double)(j + 1));
            if (t > j) t = j;
            for (int p = 0; p < i; p++)
                if (chosen[p] == t) {
                    t = j; /* j itself cannot have been chosen: earlier picks are < j */
                    break;
                }
            chosen[i] = t;
        }
        for (int i = 0; i < k; i++) { /* insertion sort of the indices by key: stable, k is small */
            int p = i;
            for (; p > 0 && key[order[p - 1]] > key[i]; p--) order[p] = order[p - 1];
            order[p] = i;
        }
        for (int i = 0; i < k; i++) {
            tokens[r * k + i] = chosen[order[i]];
            weights[r * k + i] = (float)(w_lo + w_scale * ur[2 * k + i]);
        }
    }
    free(chosen);
    free(order);
    return 0;
}
