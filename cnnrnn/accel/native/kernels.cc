// CPU kernels called from JAX through the XLA FFI: direct NHWC convolutions and the
// per-channel statistics of BatchNorm.
//
// XLA:CPU lowers a convolution's weight gradient to layout transposes plus a convolution
// over the batch, and runs small-channel 3x3 convolutions well below the machine's matmul
// speed. These kernels compute convolutions directly on NHWC activations and HWIO kernels
// (Flax's layouts), with the output channels in vectors (simd.h: 16 lanes with AVX-512, 8
// with AVX2; padding p, stride t):
//
//   cnnrnn_conv2d_fwd:   y[b, i, j, o]  = sum_{r, s, c} x[b, t i + r - p, t j + s - p, c] w[r, s, c, o]
//   cnnrnn_conv2d_dw:    dw[r, s, c, o] = sum_{b, i, j} x[b, t i + r - p, t j + s - p, c] dy[b, i, j, o]
//
// (zero outside the image). For stride 1 the input gradient is the forward kernel applied to
// dy with the kernel flipped and transposed (see cnnrnn/accel/conv.py). `w` comes
// with its output channels zero-padded to a multiple of 16 (a multiple of the lanes at
// either width); outputs are written unpadded, with masked stores. Layers with at most 8
// output channels (stride 1) put consecutive output pixels in each vector instead. Work is split over images on XLA's intra-op thread pool; each image
// is first copied into a zero-padded per-thread buffer. Sums run in a fixed order for a
// given shape and thread count, but not in XLA's order: results equal
// lax.conv_general_dilated to float32 rounding.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"

namespace {

namespace ffi = xla::ffi;
using namespace cnnrnn;  // NOLINT: the vector abstraction (simd.h) and the parallel loops

// Copies image `src` [h, w, c] into the middle of `dst` [h + 2 ph, w + 2 pw, c], zeroing the border.
void PadImage(const float* src, int64_t h, int64_t w, int64_t c, int64_t ph, int64_t pw, float* dst) {
  const int64_t wp = w + 2 * pw;
  std::memset(dst, 0, sizeof(float) * ph * wp * c);
  std::memset(dst + (ph + h) * wp * c, 0, sizeof(float) * ph * wp * c);
  for (int64_t i = 0; i < h; ++i) {
    float* row = dst + (ph + i) * wp * c;
    std::memset(row, 0, sizeof(float) * pw * c);
    std::memcpy(row + pw * c, src + i * w * c, sizeof(float) * w * c);
    std::memset(row + (pw + w) * c, 0, sizeof(float) * pw * c);
  }
}

// ---------------------------------------------------------------------------------------
// Forward: PB consecutive output pixels of one row x NV vectors of output channels.

struct FwdGeometry {
  int64_t kh, kw, cin, cout, cout_padded;
  int64_t row_stride;    // floats per padded input row
  int64_t pixel_stride;  // floats between the inputs of consecutive output pixels (sw * cin)
};

template <int NV, int PB, bool kTail>
void FwdBlock(const FwdGeometry& g, const float* __restrict x, const float* __restrict w,
              float* __restrict y, int64_t co0, Mask tail) {
  const int64_t kh = g.kh, kw = g.kw, cin = g.cin, cout = g.cout, cout_padded = g.cout_padded;
  const int64_t row_stride = g.row_stride, pixel_stride = g.pixel_stride;
  Vec acc[PB][NV];
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = Zero();
  for (int64_t r = 0; r < kh; ++r) {
    for (int64_t s = 0; s < kw; ++s) {
      const float* xs = x + r * row_stride + s * cin;
      const float* ws = w + ((r * kw + s) * cin) * cout_padded + co0;
      for (int64_t c = 0; c < cin; ++c) {
        Vec wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = Load(ws + c * cout_padded + v * kLanes);
        for (int p = 0; p < PB; ++p) {
          const Vec xb = Set1(xs[p * pixel_stride + c]);
          for (int v = 0; v < NV; ++v) acc[p][v] = Fma(xb, wv[v], acc[p][v]);
        }
      }
    }
  }
  for (int p = 0; p < PB; ++p) {
    float* yp = y + p * cout + co0;
    for (int v = 0; v < NV; ++v) {
      if (kTail && v == NV - 1) {
        StoreMasked(yp + v * kLanes, tail, acc[p][v]);
      } else {
        Store(yp + v * kLanes, acc[p][v]);
      }
    }
  }
}

using FwdFn = void (*)(const FwdGeometry&, const float*, const float*, float*, int64_t, Mask);

// Pixels per block for NV vectors (one broadcast input value per pixel and channel).
template <int NV>
constexpr int FwdPixels() {
  return BroadcastBlockRows<NV>();
}

template <int NV, bool kTail, int... PB>
constexpr std::array<FwdFn, sizeof...(PB)> FwdTable(std::integer_sequence<int, PB...>) {
  return {&FwdBlock<NV, PB + 1, kTail>...};
}

template <int NV, bool kTail>
void FwdRow(const FwdGeometry& g, const float* xrow, const float* w, float* yrow, int64_t wo,
            int64_t co0, Mask tail) {
  constexpr int kPB = FwdPixels<NV>();
  static constexpr auto table = FwdTable<NV, kTail>(std::make_integer_sequence<int, kPB>());
  int64_t j = 0;
  for (; j + kPB <= wo; j += kPB)
    FwdBlock<NV, kPB, kTail>(g, xrow + j * g.pixel_stride, w, yrow + j * g.cout, co0, tail);
  if (j < wo) table[wo - j - 1](g, xrow + j * g.pixel_stride, w, yrow + j * g.cout, co0, tail);
}

template <int NV>
void FwdRow(const FwdGeometry& g, const float* xrow, const float* w, float* yrow, int64_t wo,
            int64_t co0, bool last_is_tail, Mask tail) {
  if (last_is_tail) {
    FwdRow<NV, true>(g, xrow, w, yrow, wo, co0, tail);
  } else {
    FwdRow<NV, false>(g, xrow, w, yrow, wo, co0, tail);
  }
}

// y [b, ho, wo, cout] = conv(x [b, h, w, cin], w [kh, kw, cin, cout_padded]).
void ConvForward(ffi::ThreadPool& pool, const float* x, const float* w, float* y, int64_t b,
                 int64_t h, int64_t wd, int64_t cin, int64_t kh, int64_t kw, int64_t cout,
                 int64_t cout_padded, int64_t ph, int64_t pw, int64_t sh, int64_t sw) {
  const int64_t hp = h + 2 * ph, wp = wd + 2 * pw;
  const int64_t ho = (hp - kh) / sh + 1, wo = (wp - kw) / sw + 1;
  const FwdGeometry g{kh, kw, cin, cout, cout_padded, wp * cin, sw * cin};
  const int64_t workers = NumWorkers(pool);
  std::vector<std::vector<float>> padded(workers, std::vector<float>(hp * wp * cin));
  ParallelFor(pool, workers, b, [&](int64_t worker, int64_t n) {
    float* xp = padded[worker].data();
    PadImage(x + n * h * wd * cin, h, wd, cin, ph, pw, xp);
    float* yn = y + n * ho * wo * cout;
    for (int64_t co0 = 0; co0 < cout; co0 += kBlockVectors * kLanes) {
      const int64_t nv = std::min<int64_t>(kBlockVectors, (cout - co0 + kLanes - 1) / kLanes);
      const bool last_is_tail = co0 + nv * kLanes > cout;
      const Mask tail = TailMask(cout);
      for (int64_t i = 0; i < ho; ++i) {
        const float* xrow = xp + i * sh * g.row_stride;
        float* yrow = yn + i * wo * cout;
        switch (nv) {
          case 1: FwdRow<1>(g, xrow, w, yrow, wo, co0, last_is_tail, tail); break;
          case 2: FwdRow<2>(g, xrow, w, yrow, wo, co0, last_is_tail, tail); break;
          case 3: FwdRow<3>(g, xrow, w, yrow, wo, co0, last_is_tail, tail); break;
          default: FwdRow<4>(g, xrow, w, yrow, wo, co0, last_is_tail, tail); break;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Weight gradient: CB input channels x NV vectors of output channels, for one kernel tap,
// summed over every output pixel of one image.

struct DwGeometry {
  int64_t cin, cout, cout_padded, ho, wo;
  int64_t row_stride;    // floats between the input rows of consecutive output rows (sh * wp * cin)
  int64_t pixel_stride;  // floats between the inputs of consecutive output pixels (sw * cin)
};

template <int NV, int CB, bool kTail>
void DwBlock(const DwGeometry& g, const float* __restrict x, const float* __restrict dy,
             float* __restrict dw, int64_t co0, Mask tail) {
  const int64_t ho = g.ho, wo = g.wo, cout = g.cout, row_stride = g.row_stride;
  const int64_t pixel_stride = g.pixel_stride;
  Vec acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = Zero();
  for (int64_t i = 0; i < ho; ++i) {
    const float* xr = x + i * row_stride;
    const float* dr = dy + i * wo * cout + co0;
    for (int64_t j = 0; j < wo; ++j) {
      Vec dv[NV];
      for (int v = 0; v < NV; ++v) {
        dv[v] = (kTail && v == NV - 1) ? LoadMasked(dr + j * cout + v * kLanes, tail)
                                       : Load(dr + j * cout + v * kLanes);
      }
      const float* xj = xr + j * pixel_stride;
      for (int c = 0; c < CB; ++c) {
        const Vec xb = Set1(xj[c]);
        for (int v = 0; v < NV; ++v) acc[c][v] = Fma(xb, dv[v], acc[c][v]);
      }
    }
  }
  const int64_t cout_padded = g.cout_padded;
  for (int c = 0; c < CB; ++c) {
    float* out = dw + c * cout_padded + co0;
    for (int v = 0; v < NV; ++v)
      Store(out + v * kLanes, Add(Load(out + v * kLanes), acc[c][v]));
  }
}

using DwFn = void (*)(const DwGeometry&, const float*, const float*, float*, int64_t, Mask);

template <int NV>
constexpr int DwChannels() {
  return WeightGradBlockRows<NV>();
}

template <int NV, bool kTail, int... CB>
constexpr std::array<DwFn, sizeof...(CB)> DwTable(std::integer_sequence<int, CB...>) {
  return {&DwBlock<NV, CB + 1, kTail>...};
}

template <int NV, bool kTail>
void DwTap(const DwGeometry& g, const float* x, const float* dy, float* dw, int64_t co0,
           Mask tail) {
  constexpr int kCB = DwChannels<NV>();
  static constexpr auto table = DwTable<NV, kTail>(std::make_integer_sequence<int, kCB>());
  int64_t c = 0;
  for (; c + kCB <= g.cin; c += kCB)
    DwBlock<NV, kCB, kTail>(g, x + c, dy, dw + c * g.cout_padded, co0, tail);
  if (c < g.cin) table[g.cin - c - 1](g, x + c, dy, dw + c * g.cout_padded, co0, tail);
}

template <int NV>
void DwTap(const DwGeometry& g, const float* x, const float* dy, float* dw, int64_t co0,
           bool last_is_tail, Mask tail) {
  if (last_is_tail) {
    DwTap<NV, true>(g, x, dy, dw, co0, tail);
  } else {
    DwTap<NV, false>(g, x, dy, dw, co0, tail);
  }
}

// dw [kh, kw, cin, cout] from x [b, h, w, cin] and dy [b, ho, wo, cout].
void ConvWeightGrad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, int64_t b,
                    int64_t h, int64_t wd, int64_t cin, int64_t kh, int64_t kw, int64_t cout,
                    int64_t ph, int64_t pw, int64_t sh, int64_t sw) {
  const int64_t hp = h + 2 * ph, wp = wd + 2 * pw;
  const int64_t ho = (hp - kh) / sh + 1, wo = (wp - kw) / sw + 1;
  const int64_t cout_padded = (cout + kLanes - 1) / kLanes * kLanes;
  const DwGeometry g{cin, cout, cout_padded, ho, wo, sh * wp * cin, sw * cin};
  // Fixed chunks of images, one partial gradient each, summed in chunk order: the result
  // does not depend on which thread ran which chunk.
  const int64_t chunks = std::min(NumWorkers(pool), b);
  const int64_t dw_size = kh * kw * cin * cout_padded;
  std::vector<std::vector<float>> partial(chunks, std::vector<float>(dw_size, 0.0f));
  const Mask tail = TailMask(cout);
  ParallelFor(pool, chunks, chunks, [&](int64_t /*worker*/, int64_t chunk) {
    std::vector<float> padded(hp * wp * cin);
    float* xp = padded.data();
    float* acc = partial[chunk].data();
    for (int64_t n = chunk * b / chunks; n < (chunk + 1) * b / chunks; ++n) {
      PadImage(x + n * h * wd * cin, h, wd, cin, ph, pw, xp);
      const float* dyn = dy + n * ho * wo * cout;
      for (int64_t r = 0; r < kh; ++r) {
        for (int64_t s = 0; s < kw; ++s) {
          const float* xs = xp + (r * wp + s) * cin;
          float* dws = acc + (r * kw + s) * cin * cout_padded;
          for (int64_t co0 = 0; co0 < cout; co0 += kBlockVectors * kLanes) {
            const int64_t nv = std::min<int64_t>(kBlockVectors, (cout - co0 + kLanes - 1) / kLanes);
            const bool last_is_tail = co0 + nv * kLanes > cout;
            switch (nv) {
              case 1: DwTap<1>(g, xs, dyn, dws, co0, last_is_tail, tail); break;
              case 2: DwTap<2>(g, xs, dyn, dws, co0, last_is_tail, tail); break;
              case 3: DwTap<3>(g, xs, dyn, dws, co0, last_is_tail, tail); break;
              default: DwTap<4>(g, xs, dyn, dws, co0, last_is_tail, tail); break;
            }
          }
        }
      }
    }
  });
  // Sum the chunks' partial gradients and drop the channel padding.
  const int64_t rows = kh * kw * cin;
  for (int64_t k = 0; k < rows; ++k) {
    for (int64_t o = 0; o < cout; ++o) {
      float s = 0.0f;
      for (int64_t t = 0; t < chunks; ++t) s += partial[t][k * cout_padded + o];
      dw[k * cout + o] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Few output channels (at most 8, stride 1): kLanes consecutive output pixels in each vector
// instead of the channels, which would leave most lanes empty. Each image is copied
// channel-major, xt[row][c][col], zero-padded (kSlack extra columns keep every vector load
// inside the buffer).

constexpr int kMaxSmallCout = 8;
constexpr int64_t kSlack = 2 * kLanes;

// xt [hp][cin][wpt] from image src [h][w][cin] with padding (ph, pw).
void PadImageChannelMajor(const float* src, int64_t h, int64_t w, int64_t cin, int64_t ph,
                          int64_t pw, int64_t hp, int64_t wpt, float* xt) {
  std::fill(xt, xt + hp * cin * wpt, 0.0f);
  for (int64_t i = 0; i < h; ++i) {
    float* row = xt + (i + ph) * cin * wpt;
    const float* srow = src + i * w * cin;
    for (int64_t j = 0; j < w; ++j)
      for (int64_t c = 0; c < cin; ++c) row[c * wpt + j + pw] = srow[j * cin + c];
  }
}

// y[i, j0 .. j0 + kLanes JV, :COUT] for one output row; xt points at the row's first input row.
template <int COUT, int JV>
void FwdPixelsBlock(const float* __restrict xt, const float* __restrict w, float* __restrict y,
                    int64_t kh, int64_t kw, int64_t cin, int64_t wpt, int64_t cout_padded,
                    int64_t j0, int64_t count) {
  Vec acc[JV][COUT];
  for (int v = 0; v < JV; ++v)
    for (int o = 0; o < COUT; ++o) acc[v][o] = Zero();
  for (int64_t r = 0; r < kh; ++r) {
    for (int64_t c = 0; c < cin; ++c) {
      const float* xr = xt + (r * cin + c) * wpt + j0;
      for (int64_t s = 0; s < kw; ++s) {
        const float* ws = w + ((r * kw + s) * cin + c) * cout_padded;
        Vec xv[JV];
        for (int v = 0; v < JV; ++v) xv[v] = Load(xr + s + v * kLanes);
        for (int o = 0; o < COUT; ++o) {
          const Vec wb = Set1(ws[o]);
          for (int v = 0; v < JV; ++v) acc[v][o] = Fma(xv[v], wb, acc[v][o]);
        }
      }
    }
  }
  alignas(64) float tmp[COUT][JV * kLanes];
  for (int o = 0; o < COUT; ++o)
    for (int v = 0; v < JV; ++v) StoreAligned(&tmp[o][v * kLanes], acc[v][o]);
  for (int64_t j = 0; j < count; ++j)
    for (int o = 0; o < COUT; ++o) y[(j0 + j) * COUT + o] = tmp[o][j];
}

// Vectors of pixels per block: two where 2 COUT accumulators, two input vectors and the
// broadcast fit in the registers (always with 32 registers; up to 6 channels with 16).
template <int COUT>
constexpr int PixelVectors() {
  return 2 * COUT + 2 + 1 <= kVectorRegisters ? 2 : 1;
}

template <int COUT>
void FwdPixelsImage(const float* xt, const float* w, float* y, int64_t ho, int64_t wo,
                    int64_t kh, int64_t kw, int64_t cin, int64_t wpt, int64_t cout_padded) {
  for (int64_t i = 0; i < ho; ++i) {
    const float* xrow = xt + i * cin * wpt;
    float* yrow = y + i * wo * COUT;
    int64_t j0 = 0;
    if constexpr (PixelVectors<COUT>() == 2) {
      for (; wo - j0 > kLanes; j0 += 2 * kLanes)
        FwdPixelsBlock<COUT, 2>(xrow, w, yrow, kh, kw, cin, wpt, cout_padded, j0,
                                std::min<int64_t>(2 * kLanes, wo - j0));
    }
    for (; j0 < wo; j0 += kLanes)
      FwdPixelsBlock<COUT, 1>(xrow, w, yrow, kh, kw, cin, wpt, cout_padded, j0,
                              std::min<int64_t>(kLanes, wo - j0));
  }
}

using FwdPixelsFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t);

template <int... O>
constexpr std::array<FwdPixelsFn, sizeof...(O)> FwdPixelsTable(std::integer_sequence<int, O...>) {
  return {&FwdPixelsImage<O + 1>...};
}

void ConvForwardFewChannels(ffi::ThreadPool& pool, const float* x, const float* w, float* y,
                            int64_t b, int64_t h, int64_t wd, int64_t cin, int64_t kh, int64_t kw,
                            int64_t cout, int64_t cout_padded, int64_t ph, int64_t pw) {
  static constexpr auto table = FwdPixelsTable(std::make_integer_sequence<int, kMaxSmallCout>());
  const int64_t hp = h + 2 * ph, wp = wd + 2 * pw, wpt = wp + kSlack;
  const int64_t ho = hp - kh + 1, wo = wp - kw + 1;
  const int64_t workers = NumWorkers(pool);
  std::vector<std::vector<float>> buffers(workers, std::vector<float>(hp * cin * wpt));
  ParallelFor(pool, workers, b, [&](int64_t worker, int64_t n) {
    float* xt = buffers[worker].data();
    PadImageChannelMajor(x + n * h * wd * cin, h, wd, cin, ph, pw, hp, wpt, xt);
    table[cout - 1](xt, w, y + n * ho * wo * cout, ho, wo, kh, kw, cin, wpt, cout_padded);
  });
}

// dw[r, s0 .. s0 + SB, c, :COUT] += sum over the image, from xt (channel-major, padded) and
// dyt [COUT][ho][wot] (channel-major, columns zero-padded to wot, a multiple of kLanes).
template <int COUT, int SB>
void DwPixelsBlock(const float* __restrict xt, const float* __restrict dyt, float* __restrict dw,
                   int64_t r, int64_t s0, int64_t c, int64_t kw, int64_t cin, int64_t wpt,
                   int64_t ho, int64_t wot) {
  Vec acc[SB][COUT];
  for (int s = 0; s < SB; ++s)
    for (int o = 0; o < COUT; ++o) acc[s][o] = Zero();
  for (int64_t i = 0; i < ho; ++i) {
    const float* xr = xt + ((i + r) * cin + c) * wpt + s0;
    for (int64_t j = 0; j < wot; j += kLanes) {
      Vec dv[COUT];
      for (int o = 0; o < COUT; ++o) dv[o] = LoadAligned(dyt + (o * ho + i) * wot + j);
      for (int s = 0; s < SB; ++s) {
        const Vec xv = Load(xr + j + s);
        for (int o = 0; o < COUT; ++o) acc[s][o] = Fma(xv, dv[o], acc[s][o]);
      }
    }
  }
  for (int s = 0; s < SB; ++s)
    for (int o = 0; o < COUT; ++o)
      dw[((r * kw + s0 + s) * cin + c) * COUT + o] += ReduceAdd(acc[s][o]);
}

// Kernel taps per block: taps x COUT accumulators, COUT cotangent vectors and the input
// vector within the registers.
template <int COUT>
constexpr int DwPixelsTaps() {
  if constexpr (kVectorRegisters >= 32) return COUT <= 2 ? 8 : COUT <= 4 ? 5 : COUT <= 6 ? 3 : 2;
  return COUT <= 2 ? 6 : COUT <= 4 ? 2 : 1;
}

using DwPixelsFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, int64_t, int64_t);

template <int COUT, int... SB>
constexpr std::array<DwPixelsFn, sizeof...(SB)> DwPixelsTable(std::integer_sequence<int, SB...>) {
  return {&DwPixelsBlock<COUT, SB + 1>...};
}

template <int COUT>
void DwPixelsImage(const float* xt, const float* dyt, float* dw, int64_t kh, int64_t kw,
                   int64_t cin, int64_t wpt, int64_t ho, int64_t wot) {
  constexpr int kSB = DwPixelsTaps<COUT>();
  static constexpr auto table = DwPixelsTable<COUT>(std::make_integer_sequence<int, kSB>());
  for (int64_t c = 0; c < cin; ++c) {
    for (int64_t r = 0; r < kh; ++r) {
      int64_t s0 = 0;
      for (; s0 + kSB <= kw; s0 += kSB)
        DwPixelsBlock<COUT, kSB>(xt, dyt, dw, r, s0, c, kw, cin, wpt, ho, wot);
      if (s0 < kw) table[kw - s0 - 1](xt, dyt, dw, r, s0, c, kw, cin, wpt, ho, wot);
    }
  }
}

using DwPixelsImageFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t);

template <int... O>
constexpr std::array<DwPixelsImageFn, sizeof...(O)> DwPixelsImageTable(
    std::integer_sequence<int, O...>) {
  return {&DwPixelsImage<O + 1>...};
}

void ConvWeightGradFewChannels(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw,
                               int64_t b, int64_t h, int64_t wd, int64_t cin, int64_t kh,
                               int64_t kw, int64_t cout, int64_t ph, int64_t pw) {
  static constexpr auto table =
      DwPixelsImageTable(std::make_integer_sequence<int, kMaxSmallCout>());
  const int64_t hp = h + 2 * ph, wp = wd + 2 * pw, wpt = wp + kSlack;
  const int64_t ho = hp - kh + 1, wo = wp - kw + 1;
  const int64_t wot = (wo + kLanes - 1) / kLanes * kLanes;
  const int64_t chunks = std::min(NumWorkers(pool), b);
  const int64_t dw_size = kh * kw * cin * cout;
  std::vector<std::vector<float>> partial(chunks, std::vector<float>(dw_size, 0.0f));
  ParallelFor(pool, chunks, chunks, [&](int64_t /*worker*/, int64_t chunk) {
    std::vector<float> xt(hp * cin * wpt);
    std::vector<float> dyt_storage(cout * ho * wot + 64 / sizeof(float));
    // 64-byte aligned view for aligned vector loads.
    float* dyt = reinterpret_cast<float*>(
        (reinterpret_cast<uintptr_t>(dyt_storage.data()) + 63) & ~static_cast<uintptr_t>(63));
    std::fill(dyt, dyt + cout * ho * wot, 0.0f);
    for (int64_t n = chunk * b / chunks; n < (chunk + 1) * b / chunks; ++n) {
      PadImageChannelMajor(x + n * h * wd * cin, h, wd, cin, ph, pw, hp, wpt, xt.data());
      const float* dyn = dy + n * ho * wo * cout;
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j)
          for (int64_t o = 0; o < cout; ++o) dyt[(o * ho + i) * wot + j] = dyn[(i * wo + j) * cout + o];
      table[cout - 1](xt.data(), dyt, partial[chunk].data(), kh, kw, cin, wpt, ho, wot);
    }
  });
  for (int64_t k = 0; k < dw_size; ++k) {
    float s = 0.0f;
    for (int64_t t = 0; t < chunks; ++t) s += partial[t][k];
    dw[k] = s;
  }
}

// ---------------------------------------------------------------------------------------
// Per-channel statistics for BatchNorm:
//   moments false: out[0, c] = sum_r u[r, c],   out[1, c] = sum_r u[r, c] (v[r, c] - shift[c]);
//   moments true:  out[0, c] = mean_r u[r, c],  out[1, c] = mean_r u^2 - out[0, c]^2 (with v = u:
//                the mean and the biased variance; shift unused).
// Moments are taken about the first row (the shifted-data algorithm), so a mean far from
// zero does not cancel the variance away. Sums run in float over blocks of 32 rows, then in
// double over fixed chunks of rows, summed in chunk order (independent of which thread ran
// which chunk).

void ChannelSums(ffi::ThreadPool& pool, const float* u, const float* v, const float* shift,
                 int64_t rows, int64_t c, bool moments, float* out) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows / 256, 16));
  std::vector<double> partial(chunks * 2 * c, 0.0);
  // Sums of (u - center_u) and (u - center_u) (v - center_v).
  std::vector<float> center_u(c, 0.0f), center_v(c, 0.0f);
  for (int64_t k = 0; k < c; ++k) {
    center_u[k] = moments ? u[k] : 0.0f;
    center_v[k] = moments ? u[k] : shift[k];
  }
  ParallelFor(pool, NumWorkers(pool), chunks, [&](int64_t /*worker*/, int64_t chunk) {
    double* __restrict su = partial.data() + chunk * 2 * c;
    double* __restrict suv = su + c;
    constexpr int64_t kBlock = 32;
    std::vector<float> block(2 * c);
    float* __restrict fu = block.data();
    float* __restrict fuv = fu + c;
    const float* __restrict mu = center_u.data();
    const float* __restrict mv = center_v.data();
    const int64_t end = (chunk + 1) * rows / chunks;
    for (int64_t r0 = chunk * rows / chunks; r0 < end; r0 += kBlock) {
      std::fill(fu, fu + 2 * c, 0.0f);
      for (int64_t r = r0; r < std::min(r0 + kBlock, end); ++r) {
        const float* __restrict ur = u + r * c;
        const float* __restrict vr = v + r * c;
        for (int64_t k = 0; k < c; ++k) {
          const float a = ur[k] - mu[k];
          fu[k] += a;
          fuv[k] += a * (vr[k] - mv[k]);
        }
      }
      for (int64_t k = 0; k < c; ++k) {
        su[k] += fu[k];
        suv[k] += fuv[k];
      }
    }
  });
  for (int64_t k = 0; k < c; ++k) {
    double s = 0.0, sv = 0.0;
    for (int64_t t = 0; t < chunks; ++t) {
      s += partial[t * 2 * c + k];
      sv += partial[t * 2 * c + c + k];
    }
    if (moments) {
      const double d = s / static_cast<double>(rows);  // mean - center
      out[k] = static_cast<float>(center_u[k] + d);
      out[c + k] = static_cast<float>(std::max(0.0, sv / static_cast<double>(rows) - d * d));
    } else {
      out[k] = static_cast<float>(s);
      out[c + k] = static_cast<float>(sv);
    }
  }
}

ffi::Error ChannelSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> out,
                           bool moments) {
  const auto ud = u.dimensions(), vd = v.dimensions(), sd = shift.dimensions();
  const auto od = out->dimensions();
  if (ud.size() != 2 || vd.size() != 2 || sd.size() != 1 || od.size() != 2 || ud[0] != vd[0] ||
      ud[1] != vd[1] || sd[0] != ud[1] || od[0] != 2 || od[1] != ud[1] || ud[0] == 0) {
    return ffi::Error::InvalidArgument("cnnrnn_channel_sums: inconsistent shapes");
  }
  ChannelSums(pool, u.typed_data(), v.typed_data(), shift.typed_data(), ud[0], ud[1], moments,
              out->typed_data());
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t pad_h, int64_t pad_w,
                       int64_t stride_h, int64_t stride_w) {
  const auto xd = x.dimensions(), wdim = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wdim.size() != 4 || yd.size() != 4 || wdim[2] != xd[3] ||
      wdim[3] % kLanes != 0 || yd[3] > wdim[3] || yd[0] != xd[0] || stride_h < 1 ||
      stride_w < 1 || xd[1] + 2 * pad_h < wdim[0] || xd[2] + 2 * pad_w < wdim[1] ||
      yd[1] != (xd[1] + 2 * pad_h - wdim[0]) / stride_h + 1 ||
      yd[2] != (xd[2] + 2 * pad_w - wdim[1]) / stride_w + 1) {
    return ffi::Error::InvalidArgument("cnnrnn_conv2d_fwd: inconsistent shapes");
  }
  if (yd[3] <= kMaxSmallCout && stride_h == 1 && stride_w == 1) {
    ConvForwardFewChannels(pool, x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1],
                           xd[2], xd[3], wdim[0], wdim[1], yd[3], wdim[3], pad_h, pad_w);
  } else {
    ConvForward(pool, x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], xd[2],
                xd[3], wdim[0], wdim[1], yd[3], wdim[3], pad_h, pad_w, stride_h, stride_w);
  }
  return ffi::Error::Success();
}

ffi::Error WeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t pad_h, int64_t pad_w,
                          int64_t stride_h, int64_t stride_w) {
  const auto xd = x.dimensions(), dd = dy.dimensions(), wdim = dw->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || wdim.size() != 4 || wdim[2] != xd[3] ||
      wdim[3] != dd[3] || dd[0] != xd[0] || stride_h < 1 || stride_w < 1 ||
      xd[1] + 2 * pad_h < wdim[0] || xd[2] + 2 * pad_w < wdim[1] ||
      dd[1] != (xd[1] + 2 * pad_h - wdim[0]) / stride_h + 1 ||
      dd[2] != (xd[2] + 2 * pad_w - wdim[1]) / stride_w + 1) {
    return ffi::Error::InvalidArgument("cnnrnn_conv2d_dw: inconsistent shapes");
  }
  if (wdim[3] <= kMaxSmallCout && stride_h == 1 && stride_w == 1) {
    ConvWeightGradFewChannels(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), xd[0],
                              xd[1], xd[2], xd[3], wdim[0], wdim[1], wdim[3], pad_h, pad_w);
  } else {
    ConvWeightGrad(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), xd[0], xd[1], xd[2],
                   xd[3], wdim[0], wdim[1], wdim[3], pad_h, pad_w, stride_h, stride_w);
  }
  return ffi::Error::Success();
}

// Both convolutions take two float32 arrays and return one, with padding and stride.
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_h")
      .Attr<int64_t>("pad_w")
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnConv2dForward, ForwardImpl, ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnConv2dWeightGrad, WeightGradImpl, ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnChannelSums, ChannelSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("moments"));
