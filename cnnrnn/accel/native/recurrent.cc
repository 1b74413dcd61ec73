// LSTM time loops called from JAX through the XLA FFI: the whole forward loop in one call,
// and the whole backward loop (without the weight gradient) in another.
//
// Inside `lax.scan`, XLA:CPU runs each step as a [B, H] x [H, 4H] dot plus several small
// fusions, each a separate dispatch on the thread pool. Here a step is one pass over hidden
// blocks of L units (L = the vector's lanes: 16 with AVX-512, 8 with AVX2; simd.h): block j
// computes its 4 L gate columns (the i, f, g and o columns of its L units) with a
// register-tiled matmul, then the gate arithmetic on them, and writes its slice of h_t and
// c_t. Blocks are spread over the thread pool, with a barrier
// between steps (ParallelSteps). Notation (gate blocks [i, f, g, o], as LSTMCell):
//
//   z_t = xp_t + bias + h_{t-1} W        W [H, 4H], xp_t [B, 4H] (the input projection)
//   i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)
//   c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
//
// Example b is updated at step t only if t < lengths[b]; otherwise its carry is kept and its
// output is zero (RNN's masking). `reverse` runs t = T-1 .. 0.
//
// cnnrnn_lstm_fwd(xp [T, B, 4H], bias [4H], w [H, 4H], c0 [B, H], h0 [B, H], lengths [B])
//   -> ys [T, B, H], c_T [B, H], h_T [B, H], and for the backward call the carries entering
//      each step h_in, c_in [T, B, H], the activated gates acts [T, B, 4H] and tanh(c_t)
//      [T, B, H] (acts and tanh_c are left unwritten without the attribute save_residuals).
// cnnrnn_lstm_bwd(w, acts, c_in, tanh_c, lengths, dys [T, B, H], dc_T, dh_T)
//   -> dz [T, B, 4H] (the cotangent of z_t, hence of xp_t and the biases), dc0, dh0.
//      The weight gradient is sum_t h_in_t^T dz_t: one matmul, left to XLA.
//
// In the backward loop block j of step t first finishes dh for its units (dz_{t+1} W^T, a
// [B, 4H] x [4H, L] product, plus the carried cotangent of frozen examples), then computes
// its columns of dz_t: again one barrier per step. Each output element is computed by one
// fixed sequence of operations, so results do not depend on the threads; they equal XLA's
// to float32 rounding (exp, tanh and the sums are rounded differently).

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "common.h"

namespace {

namespace ffi = xla::ffi;
using namespace cnnrnn;  // NOLINT: the vector abstraction (simd.h) and the parallel loops

constexpr int kGates = 4;
// Batch rows per forward tile: rows x 4 accumulators, the 4 gate vectors and the broadcast
// within the registers (5 with 32 registers, 2 with 16).
constexpr int kFwdRows = kVectorRegisters >= 32 ? 5 : 2;
constexpr int kBwdRows = 10;  // batch rows per backward tile: 10 x 1 accumulators

struct Dims {
  int64_t t, b, h, blocks;  // blocks = ceil(h / L)
  int64_t G() const { return kGates * h; }
  // The time index of the s-th step processed (forward order).
  int64_t Time(int64_t s, bool reverse) const { return reverse ? t - 1 - s : s; }
  Mask BlockMask(int64_t block) const {
    return (block + 1) * kLanes <= h ? FullMask() : TailMask(h);
  }
};

// Forward panels: wp[j][k][gate][u] = w[k, gate * H + L j + u] (zero past H).
void PackForward(ffi::ThreadPool& pool, const Dims& d, const float* w, float* wp) {
  const int64_t h = d.h, g = d.G();
  ParallelFor(pool, NumWorkers(pool), d.blocks, [&](int64_t, int64_t j) {
    const int64_t u0 = j * kLanes, n = std::min<int64_t>(kLanes, h - u0);
    float* panel = wp + j * h * kGates * kLanes;
    for (int64_t k = 0; k < h; ++k) {
      for (int gate = 0; gate < kGates; ++gate) {
        float* dst = panel + (k * kGates + gate) * kLanes;
        std::memcpy(dst, w + k * g + gate * h + u0, sizeof(float) * n);
        std::fill(dst + n, dst + kLanes, 0.0f);
      }
    }
  });
}

// Backward panels: wt[j][n][u] = w[L j + u, n] (zero past H), so that dh[:, L j + u] =
// sum_n dz[:, n] wt[j][n][u].
void PackBackward(ffi::ThreadPool& pool, const Dims& d, const float* w, float* wt) {
  const int64_t h = d.h, g = d.G();
  ParallelFor(pool, NumWorkers(pool), d.blocks, [&](int64_t, int64_t j) {
    const int64_t u0 = j * kLanes, m = std::min<int64_t>(kLanes, h - u0);
    float* panel = wt + j * g * kLanes;
    for (int64_t n = 0; n < g; ++n) {
      for (int64_t u = 0; u < kLanes; ++u) {
        panel[n * kLanes + u] = u < m ? w[(u0 + u) * g + n] : 0.0f;
      }
    }
  });
}

// Scratch space of the calling thread, kept between calls (the packed weights: the same
// size every step of training, so no fresh pages each time), aligned to cache lines.
float* Scratch(size_t floats) {
  constexpr size_t kAlign = 64 / sizeof(float);
  thread_local std::vector<float> buffer;
  if (buffer.size() < floats + kAlign) buffer.resize(floats + kAlign);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (kAlign - (address / sizeof(float)) % kAlign) % kAlign;
}

struct ForwardArgs {
  Dims d;
  bool reverse;
  bool save;  // write acts and tanh_c (the backward call's residuals)
  const float* xp;
  const float* bias;
  const float* wp;
  const int32_t* lengths;
  float* ys;
  float* c_last;
  float* h_last;
  float* h_in;
  float* c_in;
  float* acts;
  float* tanh_c;
};

// Rows [b0, b0 + R) of hidden block j at step s.
template <int R>
void ForwardTile(const ForwardArgs& a, int64_t s, int64_t j, int64_t b0) {
  const Dims& d = a.d;
  const int64_t h = d.h, g = d.G(), t = d.Time(s, a.reverse);
  const int64_t u0 = j * kLanes;
  const Mask mask = d.BlockMask(j);
  const float* __restrict h_prev = a.h_in + t * d.b * h;
  const float* __restrict panel = a.wp + j * h * kGates * kLanes;
  Vec acc[R][kGates];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kGates; ++q) acc[r][q] = Zero();
  for (int64_t k = 0; k < h; ++k) {
    Vec wv[kGates];
    for (int q = 0; q < kGates; ++q) wv[q] = Load(panel + (k * kGates + q) * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec hb = Set1(h_prev[(b0 + r) * h + k]);
      for (int q = 0; q < kGates; ++q) acc[r][q] = Fma(hb, wv[q], acc[r][q]);
    }
  }
  Vec bias[kGates];
  for (int q = 0; q < kGates; ++q) bias[q] = LoadMasked(a.bias + q * h + u0, mask);
  const bool last = s + 1 == d.t;
  const int64_t t_next = last ? 0 : d.Time(s + 1, a.reverse);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r, row = t * d.b + b;
    const float* xrow = a.xp + row * g;
    Vec z[kGates];
    for (int q = 0; q < kGates; ++q) {
      z[q] = Add(Add(acc[r][q], LoadMasked(xrow + q * h + u0, mask)),
                           bias[q]);
    }
    const Vec i = Sigmoid(z[0]), f = Sigmoid(z[1]), gg = Tanh(z[2]), o = Sigmoid(z[3]);
    const Vec c_old = LoadMasked(a.c_in + row * h + u0, mask);
    const Vec h_old = LoadMasked(a.h_in + row * h + u0, mask);
    const Vec c_new = Fma(f, c_old, Mul(i, gg));
    const Vec th = Tanh(c_new);
    const Vec h_new = Mul(o, th);
    if (a.save) {
      float* act = a.acts + row * g + u0;
      StoreMasked(act, mask, i);
      StoreMasked(act + h, mask, f);
      StoreMasked(act + 2 * h, mask, gg);
      StoreMasked(act + 3 * h, mask, o);
      StoreMasked(a.tanh_c + row * h + u0, mask, th);
    }
    const bool keep = t < a.lengths[b];
    StoreMasked(a.ys + row * h + u0, mask, keep ? h_new : Zero());
    float* c_dst = last ? a.c_last + b * h : a.c_in + (t_next * d.b + b) * h;
    float* h_dst = last ? a.h_last + b * h : a.h_in + (t_next * d.b + b) * h;
    StoreMasked(c_dst + u0, mask, keep ? c_new : c_old);
    StoreMasked(h_dst + u0, mask, keep ? h_new : h_old);
  }
}

template <int... R>
constexpr auto ForwardTiles(std::integer_sequence<int, R...>) {
  return std::array<void (*)(const ForwardArgs&, int64_t, int64_t, int64_t), sizeof...(R)>{
      &ForwardTile<R + 1>...};
}

void LstmForward(ffi::ThreadPool& pool, const ForwardArgs& args) {
  const Dims& d = args.d;
  static constexpr auto tiles = ForwardTiles(std::make_integer_sequence<int, kFwdRows>());
  ParallelSteps(pool, NumWorkers(pool), d.t, d.blocks, [&](int64_t, int64_t s, int64_t j) {
    for (int64_t b0 = 0; b0 < d.b; b0 += kFwdRows) {
      tiles[std::min<int64_t>(kFwdRows, d.b - b0) - 1](args, s, j, b0);
    }
  });
}

struct BackwardArgs {
  Dims d;
  bool reverse;
  const float* wt;
  const float* acts;
  const float* c_in;
  const float* tanh_c;
  const int32_t* lengths;
  const float* dys;
  float* dz;
  float* dc;  // in: dc_T; the carried cotangents during the loop; out: dc0
  float* dh;  // in: dh_T; the cotangent carried past frozen examples; out: dh0
};

// Rows [b0, b0 + R) of hidden block j in phase q: finishes dh of the step processed in
// phase q - 1 (none for q = 0), then, for q < T, computes dz of step T - 1 - q.
template <int R>
void BackwardTile(const BackwardArgs& a, int64_t q, int64_t j, int64_t b0) {
  const Dims& d = a.d;
  const int64_t h = d.h, g = d.G(), u0 = j * kLanes;
  const Mask mask = d.BlockMask(j);
  Vec dh[R];
  for (int r = 0; r < R; ++r) dh[r] = LoadMasked(a.dh + (b0 + r) * h + u0, mask);
  if (q > 0) {  // dh += dz_{t'} W^T for the step t' of the previous phase.
    const int64_t t_prev = d.Time(d.t - q, a.reverse);
    const float* __restrict dz_prev = a.dz + t_prev * d.b * g;
    const float* __restrict panel = a.wt + j * g * kLanes;
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = Zero();
    for (int64_t n = 0; n < g; ++n) {
      const Vec wv = Load(panel + n * kLanes);
      for (int r = 0; r < R; ++r)
        acc[r] = Fma(Set1(dz_prev[(b0 + r) * g + n]), wv, acc[r]);
    }
    for (int r = 0; r < R; ++r) dh[r] = Add(dh[r], acc[r]);
  }
  if (q == d.t) {  // dh0; dc already holds dc0.
    for (int r = 0; r < R; ++r) StoreMasked(a.dh + (b0 + r) * h + u0, mask, dh[r]);
    return;
  }
  const int64_t t = d.Time(d.t - 1 - q, a.reverse);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r, row = t * d.b + b;
    float* dz = a.dz + row * g + u0;
    float* dc_b = a.dc + b * h + u0;
    float* dh_b = a.dh + b * h + u0;
    if (t >= a.lengths[b]) {  // Frozen: the carry's cotangent passes through, dz = 0.
      for (int gate = 0; gate < kGates; ++gate) {
        StoreMasked(dz + gate * h, mask, Zero());
      }
      StoreMasked(dh_b, mask, dh[r]);
      continue;
    }
    const float* act = a.acts + row * g + u0;
    const Vec i = LoadMasked(act, mask), f = LoadMasked(act + h, mask);
    const Vec gg = LoadMasked(act + 2 * h, mask);
    const Vec o = LoadMasked(act + 3 * h, mask);
    const Vec th = LoadMasked(a.tanh_c + row * h + u0, mask);
    const Vec c_old = LoadMasked(a.c_in + row * h + u0, mask);
    const Vec d_h = Add(dh[r], LoadMasked(a.dys + row * h + u0, mask));
    const Vec d_c = Add(
        LoadMasked(dc_b, mask),
        Mul(Mul(d_h, o), OneMinus(Mul(th, th))));
    StoreMasked(dz, mask,
                          Mul(Mul(d_c, gg), Mul(i, OneMinus(i))));
    StoreMasked(dz + h, mask,
                          Mul(Mul(d_c, c_old), Mul(f, OneMinus(f))));
    StoreMasked(dz + 2 * h, mask,
                          Mul(Mul(d_c, i), OneMinus(Mul(gg, gg))));
    StoreMasked(dz + 3 * h, mask,
                          Mul(Mul(d_h, th), Mul(o, OneMinus(o))));
    StoreMasked(dc_b, mask, Mul(d_c, f));
    StoreMasked(dh_b, mask, Zero());  // All of it went into dz.
  }
}

template <int... R>
constexpr auto BackwardTiles(std::integer_sequence<int, R...>) {
  return std::array<void (*)(const BackwardArgs&, int64_t, int64_t, int64_t), sizeof...(R)>{
      &BackwardTile<R + 1>...};
}

void LstmBackward(ffi::ThreadPool& pool, const BackwardArgs& args) {
  const Dims& d = args.d;
  static constexpr auto tiles = BackwardTiles(std::make_integer_sequence<int, kBwdRows>());
  ParallelSteps(pool, NumWorkers(pool), d.t + 1, d.blocks, [&](int64_t, int64_t q, int64_t j) {
    for (int64_t b0 = 0; b0 < d.b; b0 += kBwdRows) {
      tiles[std::min<int64_t>(kBwdRows, d.b - b0) - 1](args, q, j, b0);
    }
  });
}

bool SameDims(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> expected) {
  return dims.size() == expected.size() && std::equal(dims.begin(), dims.end(), expected.begin());
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> c_last, ffi::ResultBuffer<ffi::F32> h_last,
                       ffi::ResultBuffer<ffi::F32> h_in, ffi::ResultBuffer<ffi::F32> c_in,
                       ffi::ResultBuffer<ffi::F32> acts, ffi::ResultBuffer<ffi::F32> tanh_c,
                       bool reverse, bool save_residuals) {
  const auto xd = xp.dimensions();
  if (xd.size() != 3 || xd[2] % kGates != 0) {
    return ffi::Error::InvalidArgument("cnnrnn_lstm_fwd: xp must be [T, B, 4H]");
  }
  const int64_t t = xd[0], b = xd[1], h = xd[2] / kGates;
  if (t == 0 || b == 0 || h == 0 || !SameDims(bias.dimensions(), {4 * h}) ||
      !SameDims(w.dimensions(), {h, 4 * h}) || !SameDims(c0.dimensions(), {b, h}) ||
      !SameDims(h0.dimensions(), {b, h}) || !SameDims(lengths.dimensions(), {b}) ||
      !SameDims(ys->dimensions(), {t, b, h}) || !SameDims(c_last->dimensions(), {b, h}) ||
      !SameDims(h_last->dimensions(), {b, h}) || !SameDims(h_in->dimensions(), {t, b, h}) ||
      !SameDims(c_in->dimensions(), {t, b, h}) || !SameDims(acts->dimensions(), {t, b, 4 * h}) ||
      !SameDims(tanh_c->dimensions(), {t, b, h})) {
    return ffi::Error::InvalidArgument("cnnrnn_lstm_fwd: inconsistent shapes");
  }
  const Dims d{t, b, h, (h + kLanes - 1) / kLanes};
  cnnrnn::AdviseHugePages(ys, h_in, c_in, acts, tanh_c);
  float* wp = Scratch(d.blocks * h * kGates * kLanes);
  PackForward(pool, d, w.typed_data(), wp);
  // The carry entering the first step.
  const int64_t t0 = d.Time(0, reverse);
  std::memcpy(c_in->typed_data() + t0 * b * h, c0.typed_data(), sizeof(float) * b * h);
  std::memcpy(h_in->typed_data() + t0 * b * h, h0.typed_data(), sizeof(float) * b * h);
  LstmForward(pool, ForwardArgs{d, reverse, save_residuals, xp.typed_data(), bias.typed_data(), wp,
                                lengths.typed_data(), ys->typed_data(), c_last->typed_data(),
                                h_last->typed_data(), h_in->typed_data(), c_in->typed_data(),
                                acts->typed_data(), tanh_c->typed_data()});
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> acts,
                        ffi::Buffer<ffi::F32> c_in, ffi::Buffer<ffi::F32> tanh_c,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> dys,
                        ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::F32> dh_last,
                        ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dc0,
                        ffi::ResultBuffer<ffi::F32> dh0, bool reverse) {
  const auto ad = acts.dimensions();
  if (ad.size() != 3 || ad[2] % kGates != 0) {
    return ffi::Error::InvalidArgument("cnnrnn_lstm_bwd: acts must be [T, B, 4H]");
  }
  const int64_t t = ad[0], b = ad[1], h = ad[2] / kGates;
  if (t == 0 || b == 0 || h == 0 || !SameDims(w.dimensions(), {h, 4 * h}) ||
      !SameDims(c_in.dimensions(), {t, b, h}) || !SameDims(tanh_c.dimensions(), {t, b, h}) ||
      !SameDims(lengths.dimensions(), {b}) || !SameDims(dys.dimensions(), {t, b, h}) ||
      !SameDims(dc_last.dimensions(), {b, h}) || !SameDims(dh_last.dimensions(), {b, h}) ||
      !SameDims(dz->dimensions(), {t, b, 4 * h}) || !SameDims(dc0->dimensions(), {b, h}) ||
      !SameDims(dh0->dimensions(), {b, h})) {
    return ffi::Error::InvalidArgument("cnnrnn_lstm_bwd: inconsistent shapes");
  }
  const Dims d{t, b, h, (h + kLanes - 1) / kLanes};
  cnnrnn::AdviseHugePages(dz);
  float* wt = Scratch(d.blocks * 4 * h * kLanes);
  PackBackward(pool, d, w.typed_data(), wt);
  std::memcpy(dc0->typed_data(), dc_last.typed_data(), sizeof(float) * b * h);
  std::memcpy(dh0->typed_data(), dh_last.typed_data(), sizeof(float) * b * h);
  LstmBackward(pool, BackwardArgs{d, reverse, wt, acts.typed_data(), c_in.typed_data(),
                                  tanh_c.typed_data(), lengths.typed_data(), dys.typed_data(),
                                  dz->typed_data(), dc0->typed_data(), dh0->typed_data()});
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnLstmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_in
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_in
                                  .Ret<ffi::Buffer<ffi::F32>>()  // acts
                                  .Ret<ffi::Buffer<ffi::F32>>()  // tanh_c
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("save_residuals"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c_in
                                  .Arg<ffi::Buffer<ffi::F32>>()  // tanh_c
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc_T
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Attr<bool>("reverse"));
