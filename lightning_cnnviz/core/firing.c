/* Per-channel firing counts in one read of the activation (lightning_cnnviz.core.native).
 *
 * counts[c] += #{positions p of channel c : x[p] > 0}. NaN compares false, so it counts as not firing,
 * as in the torch fallback. Each thread counts into its own int64 row; the rows are added at the end, so
 * the result does not depend on the number of threads.
 */
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK ((int64_t)1 << 30) /* int32 partial counts never overflow */

static int64_t count_positive(const float *p, int64_t length) {
    int64_t total = 0;
    for (int64_t start = 0; start < length; start += BLOCK) {
        int64_t stop = length - start < BLOCK ? length : start + BLOCK;
        int32_t partial = 0;
        for (int64_t i = start; i < stop; ++i) partial += p[i] > 0.0f;
        total += partial;
    }
    return total;
}

static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void add_rows(const int64_t *local, int threads, int64_t channels, double *counts) {
    for (int t = 0; t < threads; ++t)
        for (int64_t c = 0; c < channels; ++c) counts[c] += (double)local[(int64_t)t * channels + c];
}

/* x: contiguous (batch, channels, positions). Returns 0, or -1 when out of memory (counts untouched). */
int firing_channels_first(const float *x, int64_t batch, int64_t channels, int64_t positions, double *counts,
                          int threads) {
    int64_t rows = batch * channels;
    int64_t *local = calloc((size_t)(channels * threads), sizeof(int64_t));
    if (local == NULL) return -1;
#pragma omp parallel num_threads(threads)
    {
        int64_t *mine = local + (int64_t)thread_index() * channels;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) mine[r % channels] += count_positive(x + r * positions, positions);
    }
    add_rows(local, threads, channels, counts);
    free(local);
    return 0;
}

/* x: contiguous (batch * positions, channels), i.e. channels-last. */
int firing_channels_last(const float *x, int64_t pixels, int64_t channels, double *counts, int threads) {
    int64_t *local = calloc((size_t)(channels * threads), sizeof(int64_t));
    if (local == NULL) return -1;
#pragma omp parallel num_threads(threads)
    {
        int64_t *mine = local + (int64_t)thread_index() * channels;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < pixels; ++p) {
            const float *row = x + p * channels;
            for (int64_t c = 0; c < channels; ++c) mine[c] += row[c] > 0.0f;
        }
    }
    add_rows(local, threads, channels, counts);
    free(local);
    return 0;
}
