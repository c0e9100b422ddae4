// JPEG decode of only what a crop needs, then an antialiased bilinear resize.
//
// The input pipeline's train and eval transforms crop a box of the image and
// resize it to the output size. Here libjpeg(-turbo) decodes:
//   * at DCT scale 1/2, 1/4 or 1/8 when the box is at least that many times
//     the output size (the IDCT computes fewer pixels per 8 x 8 block: a
//     low-pass downscale done in the frequency domain);
//   * only the box's columns (jpeg_crop_scanline, to the iMCU boundary) and
//     rows (jpeg_skip_scanlines above it, nothing below it);
// and the box is resized with PIL's BILINEAR filter (a triangle whose support
// grows with the downscale, so it antialiases), computed in float on RGBX
// pixels (libjpeg-turbo decodes straight to 4 bytes a pixel, one 4-float
// vector each) and rounded. This needs libjpeg-turbo (crop_scanline,
// skip_scanlines, JCS_EXT_RGBX): the IJG libjpeg does not build it.
// Box coordinates are given in the full-size image, so the result does not
// depend on the scale chosen except through the decode itself.
//
// C API (ctypes, ovsw_jax/data/native_jpeg.py):
//   ovsw_jpeg_size(data, size, hw[2]) -> 0, or -1 if not a readable JPEG;
//   ovsw_jpeg_decode_crop_resize(data, size, box[4], out_h, out_w, fast_idct,
//                                max_pixels, out, err, err_len)
//     -> 0: out holds out_h x out_w x 3 uint8;
//        1: a JPEG this decoder does not convert to RGB (CMYK, YCCK): decode
//           it another way;
//        2: a decode error (corrupt or truncated data), described in err;
//        3: a bad argument, named in err: an empty buffer, out_h or out_w
//           outside [1, 65535] or their product over max_pixels, a box that
//           is not finite, has a size <= 0 or extends past the image (by more
//           than kBoxTolerance pixels: boxes are refused, not clipped);
//        4: the header declares more than max_pixels pixels (refused before
//           any pixel memory is allocated), described in err.
// Every argument is checked here, whatever the caller checked before: the
// Python wrappers check the same things first, with the same messages' gist.

#include <setjmp.h>

#include <algorithm>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include <jpeglib.h>
#include <jerror.h>
}

namespace {

enum Status { kOk = 0, kNotRgb = 1, kCorrupt = 2, kBadArgument = 3,
              kTooLarge = 4 };
constexpr int32_t kMaxSide = 65535;   // JPEG's own limit is 65500
constexpr double kBoxTolerance = 1e-3;  // pixels of float rounding at edges

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void ErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings (corrupt data libjpeg can decode through) are silent, as in PIL,
// except running out of data: libjpeg would pad a truncated file with gray,
// which is refused instead (PIL refuses it too).
void EmitMessage(j_common_ptr cinfo, int msg_level) {
  if (msg_level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    ErrorExit(cinfo);
  }
}

// Errors longjmp back to the caller's setjmp (which must be in the caller's
// own frame) with libjpeg's message.
void InitErrors(jpeg_decompress_struct* cinfo, ErrorManager* err) {
  cinfo->err = jpeg_std_error(&err->pub);
  err->pub.error_exit = ErrorExit;
  err->pub.emit_message = EmitMessage;
}

// PIL's resample coefficients for one axis (precompute_coeffs, BILINEAR):
// output pixel i reads input [first[i], first[i] + count[i]) with weights
// weights[i * taps + k], for the box [in0, in1) of an axis of length in_size.
struct Axis {
  int taps = 0;
  std::vector<int> first, count;
  std::vector<float> weights;
};

Axis Coefficients(double in0, double in1, int in_size, int out_size) {
  Axis a;
  const double scale = (in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle's support is 1
  a.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  a.first.resize(out_size);
  a.count.resize(out_size);
  a.weights.assign(static_cast<size_t>(out_size) * a.taps, 0.0f);
  for (int i = 0; i < out_size; ++i) {
    const double center = in0 + (i + 0.5) * scale;
    int lo = static_cast<int>(center - support + 0.5);
    int hi = static_cast<int>(center + support + 0.5);
    lo = std::max(lo, 0);
    hi = std::min(hi, in_size);
    const int n = std::max(hi - lo, 0);
    double total = 0.0;
    std::vector<double> w(n);
    for (int k = 0; k < n; ++k) {
      const double x = std::fabs((k + lo - center + 0.5) / filterscale);
      w[k] = x < 1.0 ? 1.0 - x : 0.0;
      total += w[k];
    }
    for (int k = 0; k < n; ++k) {
      a.weights[static_cast<size_t>(i) * a.taps + k] =
          static_cast<float>(total > 0 ? w[k] / total : 0.0);
    }
    a.first[i] = lo;
    a.count[i] = std::min(n, a.taps);
  }
  // Repack to the largest count any pixel has (the stride the resize's
  // unrolled loops run over).
  const int taps = std::max(1, *std::max_element(a.count.begin(),
                                                 a.count.end()));
  if (taps < a.taps) {
    std::vector<float> packed(static_cast<size_t>(out_size) * taps);
    for (int i = 0; i < out_size; ++i) {
      std::copy_n(a.weights.begin() + static_cast<size_t>(i) * a.taps, taps,
                  packed.begin() + static_cast<size_t>(i) * taps);
    }
    a.weights.swap(packed);
    a.taps = taps;
  }
  return a;
}

// The largest of 1, 2, 4, 8 that keeps the scaled box >= the output (as
// ovsw_jax.data.jpeg.scale_factor). Finer DCT scales (n/8) were measured: no
// faster on ImageNet-sized images, and further from PIL's full decode.
int ScaleDenominator(double box_h, double box_w, int out_h, int out_w) {
  int s = 8;
  while (s > 1 && (box_h < s * out_h || box_w < s * out_w)) s /= 2;
  return s;
}

bool ConvertibleToRgb(const jpeg_decompress_struct& cinfo) {
  return cinfo.jpeg_color_space == JCS_YCbCr ||
         cinfo.jpeg_color_space == JCS_GRAYSCALE ||
         cinfo.jpeg_color_space == JCS_RGB;
}

}  // namespace

namespace {

// Writes a message to err (if there is room) and returns status.
int Fail(char* err, int32_t err_len, int status, const char* format, ...)
    __attribute__((format(printf, 4, 5)));
int Fail(char* err, int32_t err_len, int status, const char* format, ...) {
  if (err != nullptr && err_len > 0) {
    va_list args;
    va_start(args, format);
    std::vsnprintf(err, static_cast<size_t>(err_len), format, args);
    va_end(args);
  }
  return status;
}

bool ReadableBuffer(const uint8_t* data, int64_t size) {
  return data != nullptr && size > 0 &&
         static_cast<uint64_t>(size) <= static_cast<uint64_t>(~0ul);
}

// The arguments that do not need the image: buffers, output size, the box's
// own values.
int CheckArguments(const uint8_t* data, int64_t size, const double* box,
                   int32_t out_h, int32_t out_w, int64_t max_pixels,
                   const uint8_t* out, char* err, int32_t err_len) {
  if (!ReadableBuffer(data, size)) {
    return Fail(err, err_len, kBadArgument,
                "empty or unreadable JPEG buffer (%lld bytes)",
                static_cast<long long>(size));
  }
  if (box == nullptr || out == nullptr) {
    return Fail(err, err_len, kBadArgument, "box or output buffer is NULL");
  }
  if (max_pixels < 1) {
    return Fail(err, err_len, kBadArgument, "max_pixels=%lld must be >= 1",
                static_cast<long long>(max_pixels));
  }
  if (out_h < 1 || out_w < 1 || out_h > kMaxSide || out_w > kMaxSide ||
      int64_t{out_h} * out_w > max_pixels) {
    return Fail(err, err_len, kBadArgument,
                "out_hw=(%d, %d): height and width must be in [1, %d] with "
                "at most %lld pixels", out_h, out_w, kMaxSide,
                static_cast<long long>(max_pixels));
  }
  const double top = box[0], left = box[1], bh = box[2], bw = box[3];
  if (!std::isfinite(top) || !std::isfinite(left) || !std::isfinite(bh) ||
      !std::isfinite(bw) || bh <= 0 || bw <= 0 || top < -kBoxTolerance ||
      left < -kBoxTolerance) {
    return Fail(err, err_len, kBadArgument,
                "box=(%g, %g, %g, %g) (top, left, height, width) must be "
                "finite, with top, left >= 0 and height, width > 0",
                top, left, bh, bw);
  }
  return kOk;
}

// The checks that need the header: the image's size against the limit, and
// the box inside the image.
int CheckImage(const jpeg_decompress_struct& cinfo, const double* box,
               int64_t max_pixels, char* err, int32_t err_len) {
  const int64_t h = cinfo.image_height, w = cinfo.image_width;
  if (h * w > max_pixels) {
    return Fail(err, err_len, kTooLarge,
                "image of %lldx%lld = %lld pixels is over the limit of %lld",
                static_cast<long long>(h), static_cast<long long>(w),
                static_cast<long long>(h * w),
                static_cast<long long>(max_pixels));
  }
  if (box[0] + box[2] > h + kBoxTolerance ||
      box[1] + box[3] > w + kBoxTolerance) {
    return Fail(err, err_len, kBadArgument,
                "box=(%g, %g, %g, %g) extends past the %lldx%lld image "
                "(boxes are not clipped)", box[0], box[1], box[2], box[3],
                static_cast<long long>(h), static_cast<long long>(w));
  }
  return kOk;
}

}  // namespace

extern "C" int ovsw_jpeg_size(const uint8_t* data, int64_t size,
                              int32_t* hw) {
  if (!ReadableBuffer(data, size) || hw == nullptr) return -1;
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  InitErrors(&cinfo, &err);
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  hw[0] = static_cast<int32_t>(cinfo.image_height);
  hw[1] = static_cast<int32_t>(cinfo.image_width);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

namespace {

// What DecodeBox decoded: rows [row0, row0 + n_rows) of the scaled image,
// columns from x_base, `stride` bytes a row; and the resize coefficients.
struct Decoded {
  std::vector<uint8_t> rows;
  int row0 = 0, n_rows = 0, x_base = 0;
  size_t stride = 0;
  Axis ay, ax;
};

// The libjpeg part, alone in its frame with setjmp: every object it changes
// lives behind a pointer (longjmp leaves such objects well defined).
int DecodeBox(const uint8_t* data, int64_t size, const double* box,
              int32_t out_h, int32_t out_w, int32_t fast_idct,
              int64_t max_pixels, Decoded* d, char* err_out,
              int32_t err_len) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  InitErrors(&cinfo, &err);
  if (setjmp(err.jump)) {
    Fail(err_out, err_len, kCorrupt, "%s", err.message);
    jpeg_destroy_decompress(&cinfo);
    return kCorrupt;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  // Before jpeg_start_decompress, which allocates the buffers (a whole
  // coefficient image for progressive files).
  int status = CheckImage(cinfo, box, max_pixels, err_out, err_len);
  if (status == kOk && !ConvertibleToRgb(cinfo)) status = kNotRgb;
  if (status != kOk) {
    jpeg_destroy_decompress(&cinfo);
    return status;
  }
  const double full_h = cinfo.image_height, full_w = cinfo.image_width;
  const double top = box[0], left = box[1], bh = box[2], bw = box[3];
  cinfo.out_color_space = JCS_EXT_RGBX;  // 4 bytes a pixel: one vector
  cinfo.dct_method = fast_idct ? JDCT_IFAST : JDCT_ISLOW;
  cinfo.scale_num = 1;
  cinfo.scale_denom = ScaleDenominator(bh, bw, out_h, out_w);
  jpeg_start_decompress(&cinfo);
  const int sh = static_cast<int>(cinfo.output_height);
  const int sw = static_cast<int>(cinfo.output_width);
  // The box in the scaled image, as PIL's resize(box=...) of a drafted image.
  const double sy = sh / full_h, sx = sw / full_w;
  d->ay = Coefficients(top * sy, (top + bh) * sy, sh, out_h);
  d->ax = Coefficients(left * sx, (left + bw) * sx, sw, out_w);
  int row0 = sh, row1 = 0, col0 = sw, col1 = 0;
  for (int i = 0; i < out_h; ++i) {
    row0 = std::min(row0, d->ay.first[i]);
    row1 = std::max(row1, d->ay.first[i] + d->ay.count[i]);
  }
  for (int i = 0; i < out_w; ++i) {
    col0 = std::min(col0, d->ax.first[i]);
    col1 = std::max(col1, d->ax.first[i] + d->ax.count[i]);
  }
  row1 = std::max(row1, row0 + 1);
  col1 = std::max(col1, col0 + 1);
  JDIMENSION xoff = static_cast<JDIMENSION>(col0);
  JDIMENSION width = static_cast<JDIMENSION>(col1 - col0);
  if (width < static_cast<JDIMENSION>(sw)) {
    jpeg_crop_scanline(&cinfo, &xoff, &width);  // to the iMCU boundary
  } else {
    xoff = 0;
  }
  if (row0 > 0) jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(row0));
  d->row0 = row0;
  d->n_rows = row1 - row0;
  d->x_base = static_cast<int>(xoff);
  d->stride = static_cast<size_t>(cinfo.output_width) * 4;
  d->rows.resize(d->stride * d->n_rows);
  while (static_cast<int>(cinfo.output_scanline) < row1) {
    JSAMPROW row = d->rows.data() + d->stride * (cinfo.output_scanline - row0);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_abort_decompress(&cinfo);  // The rows below the box are not decoded.
  jpeg_destroy_decompress(&cinfo);
  return kOk;
}

// Four floats: one RGBX pixel (GCC/Clang vector extension: SSE on x86-64,
// NEON on aarch64).
typedef float Pixel __attribute__((vector_size(16)));
typedef int32_t Ints __attribute__((vector_size(16)));

// One output row's horizontal pass over RGBX floats. T > 0: T taps per
// pixel, unrolled (the axis' padded tap count; weights past a pixel's own
// count are 0); T = 0: each pixel's own count.
template <int T>
void HorizontalRow(const Pixel* src, const Axis& ax, int x_base, int out_w,
                   Pixel* dst) {
  for (int i = 0; i < out_w; ++i) {
    const float* w = ax.weights.data() + static_cast<size_t>(i) * ax.taps;
    const Pixel* p = src + (ax.first[i] - x_base);
    const int n = T > 0 ? T : ax.count[i];
    Pixel acc = {0, 0, 0, 0};
    for (int k = 0; k < n; ++k) acc += w[k] * p[k];
    dst[i] = acc;
  }
}

// PIL's separable filter, vertical pass first: it runs over contiguous rows
// (vectorised), and the horizontal pass then only sees the output's rows.
void Resize(const Decoded& d, int32_t out_h, int32_t out_w, uint8_t* out) {
  const int in_pixels = static_cast<int>(d.stride / 4);
  const int in_len = static_cast<int>(d.stride);
  const int taps = d.ax.taps;
  // Room past the row's end for the padded taps' zero weights.
  std::vector<Pixel> col(static_cast<size_t>(in_pixels) + taps);
  std::vector<Pixel> row(out_w);
  for (auto& p : col) p = Pixel{0, 0, 0, 0};
  float* colf = reinterpret_cast<float*>(col.data());
  for (int j = 0; j < out_h; ++j) {
    const float* w = d.ay.weights.data() + static_cast<size_t>(j) * d.ay.taps;
    std::fill(colf, colf + in_len, 0.0f);
    for (int k = 0; k < d.ay.count[j]; ++k) {
      const uint8_t* src =
          d.rows.data() + d.stride * (d.ay.first[j] - d.row0 + k);
      const float wk = w[k];
      for (int c = 0; c < in_len; ++c) colf[c] += wk * src[c];
    }
    switch (taps) {  // Unrolled for the usual tap counts (downscale < 2).
      case 2: HorizontalRow<2>(col.data(), d.ax, d.x_base, out_w,
                               row.data()); break;
      case 3: HorizontalRow<3>(col.data(), d.ax, d.x_base, out_w,
                               row.data()); break;
      case 4: HorizontalRow<4>(col.data(), d.ax, d.x_base, out_w,
                               row.data()); break;
      default: HorizontalRow<0>(col.data(), d.ax, d.x_base, out_w,
                                row.data());
    }
    uint8_t* dst = out + static_cast<size_t>(j) * out_w * 3;
    const Pixel lo = {0, 0, 0, 0}, hi = {255, 255, 255, 255};
    for (int i = 0; i < out_w; ++i) {
      // Weights and pixels are >= 0: round half up, as PIL's fixed point.
      Pixel v = row[i] + 0.5f;
      v = v < hi ? v : hi;
      v = v > lo ? v : lo;
      const Ints q = __builtin_convertvector(v, Ints);
      dst[3 * i] = static_cast<uint8_t>(q[0]);
      dst[3 * i + 1] = static_cast<uint8_t>(q[1]);
      dst[3 * i + 2] = static_cast<uint8_t>(q[2]);
    }
  }
}

}  // namespace

extern "C" int ovsw_jpeg_decode_crop_resize(const uint8_t* data, int64_t size,
                                            const double* box, int32_t out_h,
                                            int32_t out_w, int32_t fast_idct,
                                            int64_t max_pixels, uint8_t* out,
                                            char* err_out, int32_t err_len) {
  int status = CheckArguments(data, size, box, out_h, out_w, max_pixels, out,
                              err_out, err_len);
  if (status != kOk) return status;
  Decoded d;
  status = DecodeBox(data, size, box, out_h, out_w, fast_idct, max_pixels,
                     &d, err_out, err_len);
  if (status == kOk) Resize(d, out_h, out_w, out);
  return status;
}
