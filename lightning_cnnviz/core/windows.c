/* Windows of clean activation maps with occluded crops pasted in (lightning_cnnviz.core.native), in one pass.
 *
 * All arrays are channels-last and contiguous; a pixel is ``pixel`` bytes (channels x element size):
 *   padded (images, padded_h, padded_w) pixels   the clean maps, padded for the op that reads the window
 *   crop   (copies, crop_h, crop_w) pixels       each copy's occluded crop
 *   out    (copies, height, width) pixels
 * For copy v, out[v, r, c] = crop[v, r - shift_r[v], c - shift_c[v]] where that lies inside the crop, else
 * padded[image[v], top[v] + r, left[v] + c]. Each output row is written once, by at most three memcpy.
 * Returns 0, or -1 (that copy's window left unwritten) when a window or an image index lies outside ``padded``.
 */
#include <stdint.h>
#include <string.h>

int window_nhwc(const char *padded, int64_t images, int64_t padded_h, int64_t padded_w, int64_t pixel,
                const char *crop, int64_t crop_h, int64_t crop_w, const int64_t *image, const int64_t *top,
                const int64_t *left, const int64_t *shift_r, const int64_t *shift_c, int64_t copies,
                int64_t height, int64_t width, char *out, int threads) {
    int status = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(min : status)
    for (int64_t v = 0; v < copies; ++v) {
        int64_t n = image[v], y = top[v], x = left[v], sr = shift_r[v], sc = shift_c[v];
        if (n < 0 || n >= images || y < 0 || x < 0 || y + height > padded_h || x + width > padded_w) {
            status = -1;
            continue;
        }
        int64_t first = sc > 0 ? sc : 0;
        int64_t last = sc + crop_w < width ? sc + crop_w : width; /* crop columns [first, last) */
        for (int64_t r = 0; r < height; ++r) {
            char *dst = out + (v * height + r) * width * pixel;
            const char *src = padded + ((n * padded_h + y + r) * padded_w + x) * pixel;
            int64_t row = r - sr;
            if (row < 0 || row >= crop_h || last <= first) {
                memcpy(dst, src, (size_t)(width * pixel));
                continue;
            }
            const char *from = crop + ((v * crop_h + row) * crop_w + (first - sc)) * pixel;
            memcpy(dst, src, (size_t)(first * pixel));
            memcpy(dst + first * pixel, from, (size_t)((last - first) * pixel));
            memcpy(dst + last * pixel, src + last * pixel, (size_t)((width - last) * pixel));
        }
    }
    return status;
}

/* Max pooling of the same virtual windows without writing them: out (copies, out_h, out_w, channels), each
 * output pixel the maximum over the (kernel_h x kernel_w, strided, dilated) pixels of the window, read from the
 * crop where it covers them and from ``padded`` (padded with -inf) elsewhere. NaN propagates as in torch. */
#define MAX_POOL(T, NAME)                                                                                          \
    int NAME(const T *padded, int64_t images, int64_t padded_h, int64_t padded_w, int64_t channels, const T *crop, \
             int64_t crop_h, int64_t crop_w, const int64_t *image, const int64_t *top, const int64_t *left,         \
             const int64_t *shift_r, const int64_t *shift_c, int64_t copies, int64_t out_h, int64_t out_w,          \
             int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t dilation_h,            \
             int64_t dilation_w, T *out, int threads) {                                                             \
        int64_t height = (out_h - 1) * stride_h + dilation_h * (kernel_h - 1) + 1;                                 \
        int64_t width = (out_w - 1) * stride_w + dilation_w * (kernel_w - 1) + 1;                                  \
        int status = 0;                                                                                            \
        _Pragma("omp parallel for schedule(static) num_threads(threads) reduction(min : status)")                  \
        for (int64_t v = 0; v < copies; ++v) {                                                                     \
            int64_t n = image[v], y = top[v], x = left[v], sr = shift_r[v], sc = shift_c[v];                       \
            if (n < 0 || n >= images || y < 0 || x < 0 || y + height > padded_h || x + width > padded_w) {        \
                status = -1;                                                                                       \
                continue;                                                                                          \
            }                                                                                                      \
            for (int64_t i = 0; i < out_h; ++i)                                                                    \
                for (int64_t j = 0; j < out_w; ++j) {                                                              \
                    T *dst = out + ((v * out_h + i) * out_w + j) * channels;                                       \
                    int first = 1;                                                                                 \
                    for (int64_t a = 0; a < kernel_h; ++a)                                                         \
                        for (int64_t b = 0; b < kernel_w; ++b) {                                                   \
                            int64_t r = i * stride_h + a * dilation_h, c = j * stride_w + b * dilation_w;          \
                            int64_t cr = r - sr, cc = c - sc;                                                      \
                            const T *src = (cr >= 0 && cr < crop_h && cc >= 0 && cc < crop_w)                      \
                                               ? crop + ((v * crop_h + cr) * crop_w + cc) * channels              \
                                               : padded + ((n * padded_h + y + r) * padded_w + x + c) * channels; \
                            if (first) {                                                                           \
                                memcpy(dst, src, (size_t)channels * sizeof(T));                                    \
                                first = 0;                                                                         \
                                continue;                                                                          \
                            }                                                                                      \
                            for (int64_t k = 0; k < channels; ++k) {                                               \
                                T value = src[k];                                                                  \
                                dst[k] = (value > dst[k] || value != value) ? value : dst[k];                      \
                            }                                                                                      \
                        }                                                                                          \
                }                                                                                                  \
        }                                                                                                          \
        return status;                                                                                             \
    }

MAX_POOL(float, max_pool_nhwc_float)
MAX_POOL(double, max_pool_nhwc_double)
