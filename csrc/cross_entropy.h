// Softmax cross-entropy over a chunk of logits that the caller's matmul produced: the "cuda" backend
// of fastscale.ops.linear_cross_entropy (the math is ops/cross_entropy_torch.py's, line for line).
//
// The chunk is [rows, vocab] in float32, bfloat16 or float16 with a row stride in elements. Each row
// is cut into `splits` column ranges, one thread block each, so that a few long rows still fill the
// GPU. Pass 1 writes per-split partials (max, sum of exp, sum of logits) to a float32 workspace of
// 3 * splits * rows floats; pass 2 combines them per row into lse and loss; the optional pass 3
// overwrites the chunk in place with d loss / d logits.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastscale {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct CrossEntropyArgs {
  void* logits;              // [rows, vocab], row_stride elements apart; overwritten by the backward
  DType dtype;
  int64_t rows, vocab, row_stride;
  const int64_t* targets;    // [rows]
  float* loss;               // [rows], 0 where targets == ignore_index
  float* lse;                // [rows], for every row
  float* workspace;          // [3, splits, rows]
  int splits;                // column ranges per row, 1 <= splits <= kMaxSplits
  int64_t ignore_index;
  float label_smoothing;
  float z_loss;
  float softcap;             // <= 0: no softcap
  const float* token_grad;   // [rows], upstream gradient per token; backward only
  cudaStream_t stream;
};

constexpr int kMaxSplits = 65535;  // gridDim.y limit

// Both throw std::runtime_error if a launch fails. Arguments are validated by the caller (binding.cu).
void cross_entropy_forward(const CrossEntropyArgs& args);   // writes loss, lse
void cross_entropy_backward(const CrossEntropyArgs& args);  // writes loss, lse and the gradient

}  // namespace fastscale
