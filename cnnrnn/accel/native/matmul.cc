// Batched matrix products called from JAX through the XLA FFI, reading both operands in
// place (a transposed right operand is copied a block at a time).
//
// cnnrnn_matmul(a, b; transpose_a, transpose_b) -> c [..., K, M], c[i, j] = sum over n of
//   op(a)[i, n] op(b)[n, j] for each index of the leading (batch) axes, where a is
//   [..., N, K] with transpose_a (op(a) = a^T) and [..., K, N] without, and b is [..., M, N]
//   with transpose_b and [..., N, M] without.
//
// The a^T b form is the product of every weight gradient (X^T dY) and of the attention's key
// and value gradients (dS^T Q, P^T dO): XLA:CPU's matmul library (YNNPACK) takes only plain
// and right-transposed operands, so XLA either copies `a` into a transposed layout first or
// leaves the product to Eigen; BLAS libraries read either operand transposed in place, and
// so does this kernel. The other forms are here for the attention's batched products
// (Q K^T, P V, dO V^T, dS K), which YNNPACK runs on one thread: this kernel spreads the
// batch over XLA's pool. Each is a sum of rank-one updates, op(a)[i0:i0+CB, n] x
// op(b)[n, j0:j0+L NV], held in CB x NV vector registers over a block of rows (L lanes per
// vector: 16 with AVX-512, 8 with AVX2; simd.h).
//
// Work is split over batch indices, groups of column blocks (kMaxVectors vectors each) and,
// when these are fewer than the workers, groups of rows of c: every item writes its own
// part of c, summing over n in increasing order, so results do not depend on threads.

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using namespace cnnrnn;  // NOLINT: the vector abstraction (simd.h) and the parallel loops

constexpr int64_t kRowBlock = 256;  // rows of a and b summed per pass, at most
constexpr int64_t kPassBytes = int64_t{256} << 10;  // of a's rows read per pass, at most
constexpr int kMaxVectors = kBlockVectors;  // vectors of output columns per column block
constexpr int64_t kCacheBytes = int64_t{640} << 10;  // most of a core's 1 MB L2
constexpr int64_t kL1Bytes = int64_t{32} << 10;
// Copy b's block of columns where its rows are narrower than four cache lines (8 lanes: 64
// bytes), whose strided rows then share few of L1's sets.
constexpr bool kPackB = kMaxVectors * kLanes * 4 < 256;
// Products of fewer multiply-adds run on the calling thread alone: waking the pool costs
// more than it saves (~10 us).
constexpr int64_t kMinParallelWork = int64_t{1} << 20;

// c[0:CB, 0:L NV] (row stride ldc) = (accumulate ? c : 0) + op(a)[0:CB, 0:rows] b[0:rows, 0:L NV],
// op(a)[i, n] = a[n lda + i] when kTransA, a[i lda + n] otherwise. The last vector of each
// row is masked by `tail` when kTail.
template <int NV, int CB, bool kTail, bool kTransA>
void Block(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb,
             float* __restrict c, int64_t ldc, int64_t rows, Mask tail, bool accumulate) {
  Vec acc[CB][NV];
  for (int i = 0; i < CB; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = Zero();
  for (int64_t n = 0; n < rows; ++n) {
    const float* br = b + n * ldb;
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = (kTail && v == NV - 1) ? LoadMasked(br + v * kLanes, tail)
                                     : Load(br + v * kLanes);
    }
    const float* ar = kTransA ? a + n * lda : a + n;
    for (int i = 0; i < CB; ++i) {
      const Vec ab = Set1(ar[kTransA ? i : i * lda]);
      for (int v = 0; v < NV; ++v) acc[i][v] = Fma(ab, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < CB; ++i) {
    float* out = c + i * ldc;
    for (int v = 0; v < NV; ++v) {
      Vec r = acc[i][v];
      if (kTail && v == NV - 1) {
        if (accumulate) r = Add(LoadMasked(out + v * kLanes, tail), r);
        StoreMasked(out + v * kLanes, tail, r);
      } else {
        if (accumulate) r = Add(Load(out + v * kLanes), r);
        Store(out + v * kLanes, r);
      }
    }
  }
}

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                      Mask, bool);

template <int NV, bool kTail, bool kTransA, int... CB>
constexpr std::array<BlockFn, sizeof...(CB)> BlockTable(std::integer_sequence<int, CB...>) {
  return {&Block<NV, CB + 1, kTail, kTransA>...};
}

// c[0:k, 0:L NV] (+)= op(a)[0:k, 0:rows] b[0:rows, 0:L NV].
template <int NV, bool kTail, bool kTransA>
void Columns(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t rows, int64_t k, Mask tail, bool accumulate) {
  constexpr int kCB = BroadcastBlockRows<NV>();  // rows of c per register block
  static constexpr auto table =
      BlockTable<NV, kTail, kTransA>(std::make_integer_sequence<int, kCB>());
  const int64_t row_step = kTransA ? 1 : lda;  // from one row of op(a) to the next
  int64_t i = 0;
  for (; i + kCB <= k; i += kCB) {
    Block<NV, kCB, kTail, kTransA>(a + i * row_step, lda, b, ldb, c + i * ldc, ldc, rows,
                                     tail, accumulate);
  }
  if (i < k) {
    table[k - i - 1](a + i * row_step, lda, b, ldb, c + i * ldc, ldc, rows, tail, accumulate);
  }
}

template <int NV, bool kTransA>
void Columns(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t rows, int64_t k, bool last_is_tail, Mask tail, bool accumulate) {
  if (last_is_tail) {
    Columns<NV, true, kTransA>(a, lda, b, ldb, c, ldc, rows, k, tail, accumulate);
  } else {
    Columns<NV, false, kTransA>(a, lda, b, ldb, c, ldc, rows, k, tail, accumulate);
  }
}

// c[0:k, 0:L nv] (+)= op(a)[0:k, 0:rows] b[0:rows, 0:L nv], nv = 1..kMaxVectors vectors of
// columns.
template <bool kTransA>
void ColumnBlock(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                   int64_t ldc, int64_t rows, int64_t k, int64_t nv, bool last_is_tail,
                   Mask tail, bool accumulate) {
  switch (nv) {
    case 1:
      Columns<1, kTransA>(a, lda, b, ldb, c, ldc, rows, k, last_is_tail, tail, accumulate);
      break;
    case 2:
      Columns<2, kTransA>(a, lda, b, ldb, c, ldc, rows, k, last_is_tail, tail, accumulate);
      break;
    case 3:
      Columns<3, kTransA>(a, lda, b, ldb, c, ldc, rows, k, last_is_tail, tail, accumulate);
      break;
    default:
      Columns<4, kTransA>(a, lda, b, ldb, c, ldc, rows, k, last_is_tail, tail, accumulate);
      break;
  }
}

template <bool kTransA>
void Matmul(ffi::ThreadPool& pool, const float* a, const float* b, float* c, int64_t batch,
            int64_t n, int64_t k, int64_t m, bool transpose_b) {
  const int64_t workers = batch * n * k * m < kMinParallelWork ? 1 : NumWorkers(pool);
  constexpr int64_t kBlockCols = kMaxVectors * kLanes;
  const int64_t col_blocks = (m + kBlockCols - 1) / kBlockCols;
  // Work items: (batch index, group of column blocks, group of rows of c). With fewer batch
  // indices than workers, each batch index is split into about workers / batch equal parts:
  // by column blocks where they divide evenly, else by rows of c (in multiples of 8).
  int64_t per_group = col_blocks, row_groups = 1;
  if (batch < workers) {
    const int64_t parts = (workers + batch - 1) / batch;
    if (col_blocks % parts == 0) {
      per_group = col_blocks / parts;
    } else {
      row_groups = std::min((k + 7) / 8, parts);
    }
  }
  const int64_t groups = (col_blocks + per_group - 1) / per_group;
  const int64_t rows_per_item = ((k + row_groups - 1) / row_groups + 7) / 8 * 8;
  row_groups = (k + rows_per_item - 1) / rows_per_item;
  const Mask tail = TailMask(m);
  // op(a) [k, n] is a [n, k] read by columns (a^T) or a [k, n] read by rows.
  const int64_t lda = kTransA ? k : n;
  ParallelFor(pool, workers, batch * groups * row_groups, [&](int64_t, int64_t item) {
    const int64_t bi = item / (groups * row_groups);
    const int64_t jb0 = item / row_groups % groups * per_group;
    const int64_t jb1 = std::min(col_blocks, jb0 + per_group);
    const int64_t i0 = item % row_groups * rows_per_item, ki = std::min(rows_per_item, k - i0);
    const float* ab = a + bi * n * k + (kTransA ? i0 : i0 * n);
    const float* bb = b + bi * n * m;
    float* cb = c + bi * k * m + i0 * m;
    if (n == 0) {  // An empty sum: zeros.
      const int64_t j0 = jb0 * kBlockCols, j1 = std::min(m, jb1 * kBlockCols);
      for (int64_t i = 0; i < ki; ++i) std::fill(cb + i * m + j0, cb + i * m + j1, 0.0f);
      return;
    }
    // Rows per pass: fewer where a's rows are long, so that the rows of a that every column
    // block reads again stay in L2 (K 768 at AVX2: 80 rows, 10.2-10.4 ms instead of
    // 13.8-15.3 for [3152, 768]^T [3152, 192] on one core). Set by K alone, so that the
    // order of the sums, and so the result, does not depend on the number of workers.
    const int64_t pass = std::clamp<int64_t>(kPassBytes / (4 * k) / 8 * 8, 64, kRowBlock);
    const auto block = [&](int64_t r0, int64_t jb) {
      const int64_t j0 = jb * kBlockCols;
      const int64_t nv = std::min<int64_t>(kMaxVectors, (m - j0 + kLanes - 1) / kLanes);
      const int64_t rows = std::min(pass, n - r0);
      const bool last_is_tail = j0 + nv * kLanes > m;
      alignas(64) thread_local float packed[kRowBlock * kBlockCols];
      const float* bp = bb + r0 * m + j0;
      int64_t ldbp = m;
      if (transpose_b) {
        // op(b)[r0:r0+rows, j0:j0+cols] from b's rows j0.. (each a run of n floats), copied
        // to rows of kBlockCols: the register blocks need b's columns as vectors.
        const int64_t cols = std::min(nv * kLanes, m - j0);
        for (int64_t j = 0; j < cols; ++j) {
          const float* from = bb + (j0 + j) * n + r0;
          for (int64_t r = 0; r < rows; ++r) packed[r * kBlockCols + j] = from[r];
        }
        bp = packed;
        ldbp = kBlockCols;
      } else if (kPackB && m > kBlockCols && rows * m * 4 > kL1Bytes) {
        // This block of b's columns, contiguous: every register block of the pass reads it
        // again, and at a row stride of m floats its rows fall into a few of L1's sets.
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t v = 0; v < nv; ++v) {
            const float* from = bp + r * m + v * kLanes;
            float* to = packed + r * kBlockCols + v * kLanes;
            if (last_is_tail && v == nv - 1) {
              StoreMasked(to, tail, LoadMasked(from, tail));
            } else {
              Store(to, Load(from));
            }
          }
        }
        bp = packed;
        ldbp = kBlockCols;
      }
      ColumnBlock<kTransA>(ab + (kTransA ? r0 * k : r0), lda, bp, ldbp, cb + j0, m, rows, ki,
                             nv, last_is_tail, tail, r0 > 0);
    };
    // Rows of a and b outermost while this item's part of c stays in L2: a block of rows of
    // a is then read from cache by every column block, not streamed again for each.
    const bool c_in_cache = ki * (jb1 - jb0) * kBlockCols * 4 <= kCacheBytes;
    if (c_in_cache) {
      for (int64_t r0 = 0; r0 < n; r0 += pass)
        for (int64_t jb = jb0; jb < jb1; ++jb) block(r0, jb);
    } else {
      for (int64_t jb = jb0; jb < jb1; ++jb)
        for (int64_t r0 = 0; r0 < n; r0 += pass) block(r0, jb);
    }
  });
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> c, bool transpose_a, bool transpose_b) {
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  const size_t rank = ad.size();
  bool ok = rank >= 2 && bd.size() == rank && cd.size() == rank;
  int64_t batch = 1;
  for (size_t d = 0; ok && d + 2 < rank; ++d) {
    ok = ad[d] == bd[d] && ad[d] == cd[d];
    batch *= ad[d];
  }
  // op(a) [k, n], op(b) [n, m].
  const int64_t k = ok ? ad[rank - (transpose_a ? 1 : 2)] : 0;
  const int64_t n = ok ? ad[rank - (transpose_a ? 2 : 1)] : 0;
  const int64_t m = ok ? bd[rank - (transpose_b ? 2 : 1)] : 0;
  if (!ok || bd[rank - (transpose_b ? 1 : 2)] != n || cd[rank - 2] != k || cd[rank - 1] != m) {
    return ffi::Error::InvalidArgument(
        "cnnrnn_matmul: expected op(a) [..., K, N], op(b) [..., N, M] and c [..., K, M], "
        "where op transposes the last two axes of an operand whose transpose_ flag is set");
  }
  if (batch == 0 || k == 0 || m == 0) return ffi::Error::Success();
  if (transpose_a) {
    Matmul<true>(pool, a.typed_data(), b.typed_data(), c->typed_data(), batch, n, k, m,
                 transpose_b);
  } else {
    Matmul<false>(pool, a.typed_data(), b.typed_data(), c->typed_data(), batch, n, k, m,
                  transpose_b);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
