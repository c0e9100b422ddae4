// XNOR-popcount binary convolution for XLA:CPU, behind XLA's FFI (jax.ffi).
//
// ovsw_xnor_conv(x: f32[N, H, W, C], w: u32[kh * kw * words, C_out, 2])
//     -> s32[N, Ho, Wo, C_out]
//
// w holds 64-bit words as little-endian uint32 pairs (JAX has no uint64
// without x64 mode).
//
// The input's signs are packed 64 channels to a word (bit i of word q is
// channel 64 q + i, set for x < 0; 0 counts as +1), once per call, so the
// binarize-and-pack is fused into the conv: one pass over the float
// activations, no packed tensor in XLA's memory. Each output is then
//
//   sum over the taps inside the image of  C - 2 popcount(x_word ^ w_word)
//
// summed over the tap's words: exactly the conv of the +-1 tensors with zero
// padding (taps that fall in the padding contribute nothing, so no border
// correction is needed). Unused bits of the last word are 0 in both operands.
//
// The weights are laid out tap-major, then word, then output channel, so the
// innermost loop runs over contiguous output channels: 8 of them per AVX-512
// VPOPCNTQ (or per scalar POPCNT otherwise), accumulated in registers over
// every tap and word of one output pixel. The kernel body is compiled once per
// instruction set (AVX-512 VPOPCNTDQ, AVX2, baseline) and the widest the CPU
// supports is chosen at load time. Output rows are split over XLA's intra-op
// thread pool (up to the `threads` attribute) when a layer has enough work.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 16;  // output channels accumulated in registers

struct Geometry {
  int64_t n, h, w, c, words, c_out, kh, kw, sh, sw, pad_h, pad_w, ho, wo;
};

// Packs rows [row_begin, row_end) of x (rows are (n, h) pairs).
__attribute__((always_inline)) inline void PackRows(
    const float* x, uint64_t* packed, const Geometry& g, int64_t row_begin,
    int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t col = 0; col < g.w; ++col) {
      const float* px = x + (row * g.w + col) * g.c;
      uint64_t* pw = packed + (row * g.w + col) * g.words;
      for (int64_t q = 0; q < g.words; ++q) {
        const int64_t lo = q * 64, hi = std::min<int64_t>(g.c, lo + 64);
        uint64_t word = 0;
        for (int64_t ch = lo; ch < hi; ++ch) {
          word |= static_cast<uint64_t>(px[ch] < 0.0f) << (ch - lo);
        }
        pw[q] = word;
      }
    }
  }
}

// One output pixel: its batch index, the top-left input position of its
// window, the taps inside the image ([i_lo, i_hi) x [j_lo, j_hi)) and its
// C_out outputs.
struct Span {
  int64_t n, ih0, iw0, i_lo, i_hi, j_lo, j_hi;
  int32_t* out;
  // The packed words of tap (i, j), and the weights of its first word.
  const uint64_t* x(const uint64_t* packed, const Geometry& g, int64_t i,
                    int64_t j) const {
    return packed + ((n * g.h + ih0 + i) * g.w + iw0 + j) * g.words;
  }
  int64_t bits(const Geometry& g) const {
    return (i_hi - i_lo) * (j_hi - j_lo) * g.c;
  }
};

// Calls channels(span) for every output pixel of rows [row_begin, row_end)
// (rows are (n, oh) pairs). Inlined into each instruction set's function,
// so `channels` (a functor compiled for that set) is too.
template <typename Channels>
__attribute__((always_inline)) inline void ForEachPixel(
    const Geometry& g, int32_t* out, int64_t row_begin, int64_t row_end,
    const Channels& channels) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    Span s;
    s.n = row / g.ho;
    s.ih0 = (row % g.ho) * g.sh - g.pad_h;
    s.i_lo = std::max<int64_t>(0, -s.ih0);
    s.i_hi = std::min<int64_t>(g.kh, g.h - s.ih0);
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      s.iw0 = ow * g.sw - g.pad_w;
      s.j_lo = std::max<int64_t>(0, -s.iw0);
      s.j_hi = std::min<int64_t>(g.kw, g.w - s.iw0);
      s.out = out + (row * g.wo + ow) * g.c_out;
      channels(s);
    }
  }
}

// One pixel's channels [co0, co0 + B) with scalar POPCNT: B is kBlock, or
// fewer (count) for the remainder.
template <int B>
__attribute__((always_inline)) inline void Block(
    const uint64_t* packed, const uint64_t* w, const Geometry& g,
    const Span& s, int64_t co0, int64_t count) {
  uint64_t acc[B];
  for (int b = 0; b < B; ++b) acc[b] = 0;
  for (int64_t i = s.i_lo; i < s.i_hi; ++i) {
    for (int64_t j = s.j_lo; j < s.j_hi; ++j) {
      const uint64_t* xp = s.x(packed, g, i, j);
      const uint64_t* wp = w + (i * g.kw + j) * g.words * g.c_out + co0;
      for (int64_t q = 0; q < g.words; ++q) {
        const uint64_t xv = xp[q];
        const uint64_t* wq = wp + q * g.c_out;
        for (int b = 0; b < B; ++b) {
          if (B == kBlock || b < count) {
            acc[b] += static_cast<uint64_t>(__builtin_popcountll(xv ^ wq[b]));
          }
        }
      }
    }
  }
  for (int b = 0; b < B; ++b) {
    if (B == kBlock || b < count) {
      s.out[co0 + b] = static_cast<int32_t>(
          s.bits(g) - 2 * static_cast<int64_t>(acc[b]));
    }
  }
}

// Every channel of a pixel, from `co0` on, in kBlock blocks (portable).
__attribute__((always_inline)) inline void ScalarChannels(
    const uint64_t* packed, const uint64_t* w, const Geometry& g,
    const Span& s, int64_t co0) {
  for (; co0 + kBlock <= g.c_out; co0 += kBlock) {
    Block<kBlock>(packed, w, g, s, co0, kBlock);
  }
  if (co0 < g.c_out) {
    Block<kBlock - 1>(packed, w, g, s, co0, g.c_out - co0);
  }
}

struct PortableChannels {
  const uint64_t* packed;
  const uint64_t* w;
  const Geometry& g;
  __attribute__((always_inline)) void operator()(const Span& s) const {
    ScalarChannels(packed, w, g, s, 0);
  }
};

__attribute__((always_inline)) inline void ConvRows(
    const uint64_t* packed, const uint64_t* w, int32_t* out,
    const Geometry& g, int64_t row_begin, int64_t row_end) {
  ForEachPixel(g, out, row_begin, row_end, PortableChannels{packed, w, g});
}

using PackFn = void (*)(const float*, uint64_t*, const Geometry&, int64_t,
                        int64_t);
using ConvFn = void (*)(const uint64_t*, const uint64_t*, int32_t*,
                        const Geometry&, int64_t, int64_t);
using PeakFn = uint64_t (*)(const uint64_t*, int64_t, int64_t);

#if defined(__x86_64__)
#define OVSW_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))

// V vectors of 8 output channels: every tap and word of one output pixel
// XORed, popcounted and summed in V zmm registers.
template <int V>
OVSW_AVX512 inline void BlockAvx512(const uint64_t* packed,
                                    const uint64_t* w, const Geometry& g,
                                    const Span& s, int64_t co0) {
  __m512i acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_si512();
  for (int64_t i = s.i_lo; i < s.i_hi; ++i) {
    for (int64_t j = s.j_lo; j < s.j_hi; ++j) {
      const uint64_t* xp = s.x(packed, g, i, j);
      const uint64_t* wp = w + (i * g.kw + j) * g.words * g.c_out + co0;
      for (int64_t q = 0; q < g.words; ++q) {
        const __m512i xv = _mm512_set1_epi64(static_cast<int64_t>(xp[q]));
        const uint64_t* wq = wp + q * g.c_out;
        for (int v = 0; v < V; ++v) {
          const __m512i wv = _mm512_loadu_si512(wq + 8 * v);
          acc[v] = _mm512_add_epi64(
              acc[v], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv)));
        }
      }
    }
  }
  const __m512i bits = _mm512_set1_epi64(s.bits(g));
  for (int v = 0; v < V; ++v) {
    const __m512i r = _mm512_sub_epi64(bits, _mm512_slli_epi64(acc[v], 1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.out + co0 + 8 * v),
                        _mm512_cvtepi64_epi32(r));
  }
}

struct Avx512Channels {
  const uint64_t* packed;
  const uint64_t* w;
  const Geometry& g;
  OVSW_AVX512 void operator()(const Span& s) const {
    int64_t co0 = 0;
    for (; co0 + 32 <= g.c_out; co0 += 32) {
      BlockAvx512<4>(packed, w, g, s, co0);
    }
    for (; co0 + 8 <= g.c_out; co0 += 8) {
      BlockAvx512<1>(packed, w, g, s, co0);
    }
    ScalarChannels(packed, w, g, s, co0);  // Fewer than 8 channels left.
  }
};

OVSW_AVX512 void ConvAvx512(const uint64_t* p, const uint64_t* w, int32_t* o,
                            const Geometry& g, int64_t row_begin,
                            int64_t row_end) {
  ForEachPixel(g, o, row_begin, row_end, Avx512Channels{p, w, g});
}

// The popcount peak: the conv's instruction mix (broadcast, XOR, VPOPCNTQ,
// add) on operands in registers and L1, 8 independent accumulators.
OVSW_AVX512 uint64_t PeakAvx512(const uint64_t* x, int64_t n, int64_t reps) {
  __m512i w[8], acc[8];
  for (int v = 0; v < 8; ++v) {
    w[v] = _mm512_set1_epi64(0x9E3779B97F4A7C15ull * (v + 1));
    acc[v] = _mm512_setzero_si512();
  }
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const __m512i xv = _mm512_set1_epi64(static_cast<int64_t>(x[i]));
      for (int v = 0; v < 8; ++v) {
        acc[v] = _mm512_add_epi64(
            acc[v], _mm512_popcnt_epi64(_mm512_xor_si512(xv, w[v])));
      }
    }
  }
  __m512i total = acc[0];
  for (int v = 1; v < 8; ++v) total = _mm512_add_epi64(total, acc[v]);
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(total));
}
constexpr int64_t kPeakBitsAvx512 = 8 * 8 * 64;  // per x word

OVSW_AVX512 void PackAvx512(const float* x, uint64_t* p, const Geometry& g,
                            int64_t a, int64_t b) {
  PackRows(x, p, g, a, b);
}
__attribute__((target("avx2,popcnt")))
void PackAvx2(const float* x, uint64_t* p, const Geometry& g, int64_t a,
              int64_t b) { PackRows(x, p, g, a, b); }
__attribute__((target("avx2,popcnt")))
void ConvAvx2(const uint64_t* p, const uint64_t* w, int32_t* o,
              const Geometry& g, int64_t a, int64_t b) {
  ConvRows(p, w, o, g, a, b);
}
#endif
// The scalar peak: 8 independent POPCNT chains (baseline and AVX2 builds).
__attribute__((always_inline)) inline uint64_t PeakScalar(const uint64_t* x,
                                                          int64_t n,
                                                          int64_t reps) {
  uint64_t acc[8] = {0};
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t xv = x[i];
      for (int v = 0; v < 8; ++v) {
        acc[v] += static_cast<uint64_t>(__builtin_popcountll(
            xv ^ (0x9E3779B97F4A7C15ull * (v + 1))));
      }
    }
  }
  uint64_t total = 0;
  for (int v = 0; v < 8; ++v) total += acc[v];
  return total;
}
constexpr int64_t kPeakBitsScalar = 8 * 64;  // per x word
#if defined(__x86_64__)
__attribute__((target("avx2,popcnt")))
uint64_t PeakAvx2(const uint64_t* x, int64_t n, int64_t reps) {
  return PeakScalar(x, n, reps);
}
#endif
uint64_t PeakBase(const uint64_t* x, int64_t n, int64_t reps) {
  return PeakScalar(x, n, reps);
}

void PackBase(const float* x, uint64_t* p, const Geometry& g, int64_t a,
              int64_t b) { PackRows(x, p, g, a, b); }
void ConvBase(const uint64_t* p, const uint64_t* w, int32_t* o,
              const Geometry& g, int64_t a, int64_t b) {
  ConvRows(p, w, o, g, a, b);
}

struct Kernels {
  PackFn pack;
  ConvFn conv;
  PeakFn peak;
  int64_t peak_bits_per_word;
  const char* isa;
};

Kernels Select() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vpopcntdq") &&
      __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return {PackAvx512, ConvAvx512, PeakAvx512, kPeakBitsAvx512,
            "avx512vpopcntdq"};
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) {
    return {PackAvx2, ConvAvx2, PeakAvx2, kPeakBitsScalar, "avx2"};
  }
#endif
  return {PackBase, ConvBase, PeakBase, kPeakBitsScalar, "baseline"};
}

const Kernels& Chosen() {
  static const Kernels kernels = Select();
  return kernels;
}

// Work below which a part is not worth a task on the pool (about 30 us of
// the conv's inner loop): small layers stay on the calling thread.
constexpr int64_t kMinWordOpsPerTask = int64_t{1} << 18;
constexpr int64_t kMinFloatsPerTask = int64_t{1} << 18;

// Runs fn(begin, end) over [0, total) in `tasks` contiguous parts: the first
// on the calling thread, the others on XLA's intra-op thread pool (which
// runs them on the caller when there is none).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t total, int64_t tasks, F fn) {
  tasks = std::max<int64_t>(1, std::min(tasks, total));
  if (tasks == 1) {
    fn(int64_t{0}, total);
    return;
  }
  std::mutex mu;
  std::condition_variable done;
  int64_t pending = tasks - 1;
  for (int64_t t = 1; t < tasks; ++t) {
    pool.Schedule([&, t] {
      fn(total * t / tasks, total * (t + 1) / tasks);
      // Notify under the lock: the waiter cannot return (and destroy mu and
      // done) before this task has released it.
      std::lock_guard<std::mutex> lock(mu);
      if (--pending == 0) done.notify_one();
    });
  }
  fn(int64_t{0}, total / tasks);
  std::unique_lock<std::mutex> lock(mu);
  done.wait(lock, [&] { return pending == 0; });
}

int64_t Tasks(int64_t work, int64_t min_work, int64_t threads,
              const ffi::ThreadPool& pool) {
  const int64_t pool_threads = pool.num_threads();
  const int64_t cap = std::min(threads, pool_threads > 0 ? pool_threads : 1);
  return std::max<int64_t>(1, std::min(cap, work / min_work));
}

// Attributes above this are refused (they would overflow the index maths
// long before any real layer needs them).
constexpr int64_t kMaxAttr = 4096;

// Why these shapes and attributes cannot be run (empty if they can): every
// read and write of the kernel stays inside XLA's buffers when this passes.
// The output's spatial size comes from the caller (it implies the high
// padding); each output window must overlap the input (0 <= pad < kernel,
// and the last window starts inside the input).
std::string CheckGeometry(const Geometry& g, int64_t w_rows, int64_t threads) {
  char msg[256];
  auto fail = [&](const char* what, int64_t a, int64_t b) {
    std::snprintf(msg, sizeof msg, "ovsw_xnor_conv: %s (%lld, %lld)", what,
                  static_cast<long long>(a), static_cast<long long>(b));
    return std::string(msg);
  };
  if (g.kh < 1 || g.kw < 1 || g.kh > kMaxAttr || g.kw > kMaxAttr) {
    return fail("kernel size must be in [1, 4096]: kh, kw =", g.kh, g.kw);
  }
  if (g.sh < 1 || g.sw < 1 || g.sh > kMaxAttr || g.sw > kMaxAttr) {
    return fail("strides must be in [1, 4096]: sh, sw =", g.sh, g.sw);
  }
  if (g.pad_h < 0 || g.pad_w < 0 || g.pad_h >= g.kh || g.pad_w >= g.kw) {
    return fail("padding must be in [0, kernel): pad_h, pad_w =", g.pad_h,
                g.pad_w);
  }
  if (threads < 1) return fail("threads must be >= 1: threads =", threads, 0);
  if (w_rows != g.kh * g.kw * g.words) {
    return fail("w has the wrong number of words: rows, kh * kw * words =",
                w_rows, g.kh * g.kw * g.words);
  }
  if (g.ho > 0 && (g.ho - 1) * g.sh - g.pad_h >= g.h) {
    return fail("output rows past the input: Ho, H =", g.ho, g.h);
  }
  if (g.wo > 0 && (g.wo - 1) * g.sw - g.pad_w >= g.w) {
    return fail("output columns past the input: Wo, W =", g.wo, g.w);
  }
  return std::string();
}

ffi::Error XnorConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::U32> w,
                    ffi::ResultBuffer<ffi::S32> out, int64_t kh, int64_t kw,
                    int64_t sh, int64_t sw, int64_t pad_h, int64_t pad_w,
                    int64_t threads) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 3 || wd[2] != 2 || od.size() != 4) {
    return ffi::Error::InvalidArgument(
        "ovsw_xnor_conv: x must be NHWC, w (taps * words, C_out, 2), the "
        "output NHWC");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], (xd[3] + 63) / 64, wd[1], kh, kw,
             sh, sw, pad_h, pad_w, od[1], od[2]};
  if (od[0] != g.n || od[3] != g.c_out) {
    return ffi::Error::InvalidArgument(
        "ovsw_xnor_conv: the output's batch and channels must be x's batch "
        "and w's output channels");
  }
  const std::string problem = CheckGeometry(g, wd[0], threads);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  const Kernels& k = Chosen();
  std::vector<uint64_t> packed(g.n * g.h * g.w * g.words);
  const uint64_t* weights = reinterpret_cast<const uint64_t*>(w.typed_data());
  const int64_t floats = g.n * g.h * g.w * g.c;
  ParallelFor(pool, g.n * g.h, Tasks(floats, kMinFloatsPerTask, threads, pool),
              [&](int64_t a, int64_t b) {
                k.pack(x.typed_data(), packed.data(), g, a, b);
              });
  const int64_t word_ops = g.n * g.ho * g.wo * g.c_out * kh * kw * g.words;
  ParallelFor(pool, g.n * g.ho,
              Tasks(word_ops, kMinWordOpsPerTask, threads, pool),
              [&](int64_t a, int64_t b) {
                k.conv(packed.data(), weights, out->typed_data(), g, a, b);
              });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OvswXnorConv, XnorConv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w")
                                  .Attr<int64_t>("threads"));

// The instruction set the kernel chose on this CPU (for benchmarks' records).
extern "C" const char* ovsw_xnor_isa() { return Chosen().isa; }

// The popcount peak microbenchmark, in the chosen instruction set: runs
// `reps` passes over n words of x and returns the bit operations done (each
// one XOR + popcount bit), and the checksum in *checksum so that nothing is
// optimised away; -1 for a NULL pointer, n < 1 or reps < 0. Timed by the caller (benchmarks/lib/deploy_layers.py).
extern "C" int64_t ovsw_xnor_peak(const uint64_t* x, int64_t n, int64_t reps,
                                  uint64_t* checksum) {
  if (x == nullptr || checksum == nullptr || n < 1 || reps < 0) return -1;
  const Kernels& k = Chosen();
  *checksum = k.peak(x, n, reps);
  return n * reps * k.peak_bits_per_word;
}
