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
