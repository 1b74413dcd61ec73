// The gradient of an embedding lookup, called from JAX through the XLA FFI.
//
// XLA differentiates `table[ids]` into a scatter-add onto a zero-filled [V, F] buffer. The
// zero fill has no operand, so XLA:CPU schedules it at the very start of a training step,
// where it competes with the forward pass for the cores; and the freshly allocated buffer
// (26 MB for a 10k x 650 table) takes a page fault every 4 KB. Here the fill and the
// scatter are one call that runs only once the cotangent exists, on huge pages.
//
// cnnrnn_rows_grad(dy [N, F], ids [N]) -> out [V, F] with out[v] = sum of dy[n] over the n
//   with ids[n] == v, in increasing n. Ids outside [0, V) contribute nothing (as XLA's
//   scatter drops out-of-bounds updates).
//
// Rows are split into chunks of about 1 MB; each chunk is zeroed and then receives its
// rows' updates by one worker, so results do not depend on the threads.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using cnnrnn::AdviseHugePages;
using cnnrnn::NumWorkers;
using cnnrnn::ParallelFor;

ffi::Error RowsGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> ids,
                        ffi::ResultBuffer<ffi::F32> out) {
  const auto dd = dy.dimensions(), od = out->dimensions();
  if (dd.size() != 2 || od.size() != 2 || dd[1] != od[1] || ids.dimensions().size() != 1 ||
      ids.dimensions()[0] != dd[0]) {
    return ffi::Error::InvalidArgument(
        "cnnrnn_rows_grad: expected dy [N, F], ids [N] and out [V, F]");
  }
  const int64_t n = dd[0], f = dd[1], v = od[0];
  if (v == 0 || f == 0) return ffi::Error::Success();
  AdviseHugePages(out);
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 18) / f);  // rows per ~1 MB
  const float* src = dy.typed_data();
  const int32_t* rows = ids.typed_data();
  float* dst = out->typed_data();
  ParallelFor(pool, NumWorkers(pool), (v + chunk - 1) / chunk, [&](int64_t, int64_t c) {
    const int64_t lo = c * chunk, hi = std::min(v, lo + chunk);
    std::memset(dst + lo * f, 0, sizeof(float) * (hi - lo) * f);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = rows[i];
      if (r < lo || r >= hi) continue;
      float* __restrict o = dst + r * f;
      const float* __restrict s = src + i * f;
      for (int64_t k = 0; k < f; ++k) o[k] += s[k];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnrnnRowsGrad, RowsGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out
