// Kernels of the "cuda" backend of linear_cross_entropy; see cross_entropy.h for the contract and
// ops/cross_entropy_torch.py for the math. All math is float32; all offsets into the chunk are 64-bit.
#include "cross_entropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastscale {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr int kVectorBytes = 16;
// Split boundaries are multiples of 8 elements (16 bytes of 16-bit data, 32 of float32), so when a
// row starts 16-byte aligned every split does too and its vector loads stay aligned.
constexpr int64_t kSplitAlign = 8;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

// N consecutive elements as float32: one 16-byte access when N fills a vector, else N scalar ones.
template <typename T, int N>
__device__ __forceinline__ void load(const T* p, float (&x)[N]) {
  if constexpr (N * sizeof(T) == kVectorBytes) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = to_float(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = to_float(p[i]);
  }
}

template <typename T, int N>
__device__ __forceinline__ void store(T* p, const float (&x)[N]) {
  if constexpr (N * sizeof(T) == kVectorBytes) {
    uint4 raw;
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = from_float<T>(x[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_float<T>(x[i]);
  }
}

__device__ __forceinline__ float cap(float z, float softcap) {
  return softcap > 0.f ? softcap * tanhf(z / softcap) : z;
}

struct ColumnRange {
  int64_t begin, end;
};

// The columns of split blockIdx.y; empty for the trailing splits that rounding left without columns.
__device__ __forceinline__ ColumnRange split_range(int64_t vocab, int64_t split_cols) {
  const int64_t begin = blockIdx.y * split_cols;
  if (begin >= vocab) return {vocab, vocab};
  return {begin, begin + split_cols < vocab ? begin + split_cols : vocab};
}

// Columns cols of one row, split over the block's threads: f(width, col) handles the `width`
// columns from col, VEC at a time while whole vectors remain, then one at a time for the tail.
template <int VEC, typename F>
__device__ __forceinline__ void for_columns(ColumnRange cols, F&& f) {
  const int64_t n_vectors = (cols.end - cols.begin) / VEC;
  for (int64_t i = threadIdx.x; i < n_vectors; i += blockDim.x)
    f(std::integral_constant<int, VEC>{}, cols.begin + i * VEC);
  for (int64_t col = cols.begin + n_vectors * VEC + threadIdx.x; col < cols.end; col += blockDim.x)
    f(std::integral_constant<int, 1>{}, col);
}

// A running logsumexp (max and sum of exp(x - max)) and the plain sum of a set of logits.
struct Stats {
  float max;
  float sumexp;
  float sum;
};

__device__ __forceinline__ Stats empty_stats() { return {-INFINITY, 0.f, 0.f}; }

__device__ __forceinline__ Stats merge(const Stats& a, const Stats& b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f, a.sum + b.sum};  // exp(-inf - -inf) would be NaN
  return {m, a.sumexp * expf(a.max - m) + b.sumexp * expf(b.max - m), a.sum + b.sum};
}

// Folds N logits in with one rescale of the running sum rather than one per element.
template <int N>
__device__ __forceinline__ void fold(Stats& s, const float (&x)[N]) {
  float m = s.max;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, x[i]);
  float sumexp = m == -INFINITY ? 0.f : s.sumexp * expf(s.max - m);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (m != -INFINITY) sumexp += expf(x[i] - m);
    s.sum += x[i];
  }
  s.max = m;
  s.sumexp = sumexp;
}

__device__ __forceinline__ Stats warp_reduce(Stats s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Stats other{__shfl_xor_sync(0xffffffffu, s.max, offset),
                      __shfl_xor_sync(0xffffffffu, s.sumexp, offset),
                      __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = merge(s, other);
  }
  return s;
}

// The block's combined stats, valid in thread 0. blockDim.x is a multiple of 32.
__device__ __forceinline__ Stats block_reduce(Stats s) {
  __shared__ Stats per_warp[kMaxWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  s = warp_reduce(s);
  if (lane == 0) per_warp[warp] = s;
  __syncthreads();
  if (warp != 0) return s;
  return warp_reduce(lane < static_cast<int>(blockDim.x / 32) ? per_warp[lane] : empty_stats());
}

__device__ __forceinline__ int64_t clamped_target(const CrossEntropyArgs& a, int64_t row) {
  // As the reference's targets.clamp(0, V - 1): ignored rows read some valid column, then get loss 0
  // and (through token_grad 0) gradient 0.
  const int64_t t = a.targets[row];
  return t < 0 ? 0 : (t >= a.vocab ? a.vocab - 1 : t);
}

// Block (row, split): the stats of the split's columns of the row -> workspace[:, split, row].
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) partial_stats_kernel(CrossEntropyArgs a, int64_t split_cols) {
  const int64_t row = blockIdx.x;
  const ColumnRange cols = split_range(a.vocab, split_cols);
  const T* z = static_cast<const T*>(a.logits) + row * a.row_stride;
  Stats s = empty_stats();
  for_columns<VEC>(cols, [&](auto width, int64_t col) {
    constexpr int N = decltype(width)::value;
    float x[N];
    load<T, N>(z + col, x);
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = cap(x[i], a.softcap);
    fold(s, x);
  });
  s = block_reduce(s);
  if (threadIdx.x == 0) {
    const int64_t plane = static_cast<int64_t>(a.splits) * a.rows;
    const int64_t i = static_cast<int64_t>(blockIdx.y) * a.rows + row;
    a.workspace[i] = s.max;
    a.workspace[plane + i] = s.sumexp;
    a.workspace[2 * plane + i] = s.sum;
  }
}

// One thread per row: combines the splits into lse and the loss
//   lse - (1 - eps) * z[target] - eps * mean(z) + z_loss * lse^2   (0 where target == ignore_index).
template <typename T>
__global__ void __launch_bounds__(kMaxThreads) finalize_kernel(CrossEntropyArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= a.rows) return;
  const int64_t plane = static_cast<int64_t>(a.splits) * a.rows;
  Stats s = empty_stats();
  for (int k = 0; k < a.splits; ++k) {
    const int64_t i = static_cast<int64_t>(k) * a.rows + row;
    s = merge(s, Stats{a.workspace[i], a.workspace[plane + i], a.workspace[2 * plane + i]});
  }
  const float lse = s.max + logf(s.sumexp);
  a.lse[row] = lse;
  float loss = 0.f;
  if (a.targets[row] != a.ignore_index) {
    const T* z = static_cast<const T*>(a.logits) + row * a.row_stride;
    const float target_logit = cap(to_float(z[clamped_target(a, row)]), a.softcap);
    loss = lse - (1.f - a.label_smoothing) * target_logit;
    loss -= a.label_smoothing * (s.sum / static_cast<float>(a.vocab));
    loss += a.z_loss * lse * lse;
  }
  a.loss[row] = loss;
}

// Block (row, split): overwrites the split's logits with
//   g * ((1 + 2 z_loss lse) softmax(z) - (1 - eps) onehot(target) - eps / V) * (1 - (z / softcap)^2)
// where z are the capped logits and g the row's token_grad (the last factor only with a softcap). The
// caller passes token gradients divided by their largest magnitude (ops/cross_entropy_cuda.py), so
// |g| <= 1 and a 16-bit result keeps probabilities down to float16's subnormals: with the mean over
// 32k tokens as g, every p below ~2e-3 would round to 0 here.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) logit_grad_kernel(CrossEntropyArgs a, int64_t split_cols) {
  const int64_t row = blockIdx.x;
  const ColumnRange cols = split_range(a.vocab, split_cols);
  T* z = static_cast<T*>(a.logits) + row * a.row_stride;
  const float lse = a.lse[row];
  const float grad = a.token_grad[row];
  const float p_scale = 1.f + 2.f * a.z_loss * lse;
  const float on_target = 1.f - a.label_smoothing;
  const float smooth = a.label_smoothing / static_cast<float>(a.vocab);
  const int64_t target = clamped_target(a, row);
  for_columns<VEC>(cols, [&](auto width, int64_t col) {
    constexpr int N = decltype(width)::value;
    float x[N];
    load<T, N>(z + col, x);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float zc = cap(x[i], a.softcap);
      float d = p_scale * expf(zc - lse) - (col + i == target ? on_target : 0.f) - smooth;
      d *= grad;
      if (a.softcap > 0.f) {
        const float r = zc / a.softcap;
        d *= 1.f - r * r;
      }
      x[i] = d;
    }
    store<T, N>(z + col, x);
  });
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastscale._C: launch of ") + kernel + " failed: " + cudaGetErrorString(err));
}

// Threads per block: one per vector of the split, in whole warps, at most kMaxThreads (short rows get
// small blocks, so that more of them fit on an SM instead of idling threads).
unsigned block_threads(int64_t split_cols, int vec) {
  const int64_t warps = ((split_cols + vec - 1) / vec + 31) / 32;
  return static_cast<unsigned>(32 * (warps < kMaxWarps ? warps : kMaxWarps));
}

int64_t split_columns(int64_t vocab, int splits) {
  const int64_t per_split = (vocab + splits - 1) / splits;
  return (per_split + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
}

// 16-byte vectors need every row start 16-byte aligned; otherwise fall back to scalar accesses.
bool rows_vector_aligned(const CrossEntropyArgs& a, size_t element_size) {
  return reinterpret_cast<uintptr_t>(a.logits) % kVectorBytes == 0 &&
         (a.row_stride * static_cast<int64_t>(element_size)) % kVectorBytes == 0;
}

template <typename T>
void launch(const CrossEntropyArgs& a, bool backward) {
  if (a.rows == 0) return;  // a grid of 0 blocks is a launch error
  constexpr int kVec = kVectorBytes / sizeof(T);
  const bool vectors = rows_vector_aligned(a, sizeof(T));
  const int64_t split_cols = split_columns(a.vocab, a.splits);
  const unsigned threads = block_threads(split_cols, vectors ? kVec : 1);
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.splits));
  if (vectors) partial_stats_kernel<T, kVec><<<grid, threads, 0, a.stream>>>(a, split_cols);
  else partial_stats_kernel<T, 1><<<grid, threads, 0, a.stream>>>(a, split_cols);
  check_launch("partial_stats_kernel");
  const unsigned finalize_blocks = static_cast<unsigned>((a.rows + kMaxThreads - 1) / kMaxThreads);
  finalize_kernel<T><<<finalize_blocks, kMaxThreads, 0, a.stream>>>(a);
  check_launch("finalize_kernel");
  if (!backward) return;
  if (vectors) logit_grad_kernel<T, kVec><<<grid, threads, 0, a.stream>>>(a, split_cols);
  else logit_grad_kernel<T, 1><<<grid, threads, 0, a.stream>>>(a, split_cols);
  check_launch("logit_grad_kernel");
}

void dispatch(const CrossEntropyArgs& a, bool backward) {
  switch (a.dtype) {
    case DType::kFloat32: return launch<float>(a, backward);
    case DType::kBFloat16: return launch<__nv_bfloat16>(a, backward);
    case DType::kFloat16: return launch<__half>(a, backward);
  }
  throw std::invalid_argument("fastscale._C: unknown dtype code " + std::to_string(static_cast<int>(a.dtype)));
}

}  // namespace

void cross_entropy_forward(const CrossEntropyArgs& args) { dispatch(args, false); }

void cross_entropy_backward(const CrossEntropyArgs& args) { dispatch(args, true); }

}  // namespace fastscale
