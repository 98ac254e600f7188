// Local (sliding-window) attention, the attention path of ResNet-ACmix's Stage II, for CPU: forward
// and a hand-written backward, without any unfolded k_a^2 x C x H x W tensor. Each query pixel attends
// to the k_a x k_a window around it (not to a fixed, non-overlapping window as in Swin).
//
// Layout (all contiguous, one dtype):
//   q   (BN, Cq, Ho, Wo)      scaled queries; the last G channels pair with the grid
//   kd  (BN, Ck, Hp, S, Wq)   padded keys, columns split by phase: kd[.., r, p, m] = k[.., r, m*S + p]
//   g   (G, Hp, S, Wq)        padded extra key channels shared by every (b, n) (the coordinate grid)
//   vd  (BN, Cv, Hp, S, Wq)   padded values, same split
//   weights (BN, K2, Ho, Wo)  softmax weights: returned by forward on request (tests); the backward
//                             recomputes them block by block (nothing of this size is saved or allocated)
// Window offset j = i * ka + b reads padded row r = y*S + i*dil and column x*S + b*dil,
// i.e. phase (b*dil) % S, position x + (b*dil) / S: every inner loop runs over x with
// unit stride, for any stride.
// Cq = Ck + G. Logits are sum over the Cq channels, out = sum_j weights_j v_j.
//
// Work is done per block of R output rows of one (b, n). A padded key/value row r is read by
// every output row y of the block with r = y*S + i*dil (0 <= i < ka): those (y, i) pairs are
// handled together, so each key/value vector loaded from memory feeds up to NR rows' FMAs
// (register tiles: NR rows x NB window columns x one vector of x). Columns are processed
// in whole vectors (AVX-512: 16 floats / 8 doubles; else 8 / 4) and at most one half vector,
// over a width padded up to half a vector; the lanes past Wo compute values that are never
// stored to the outputs (queries and output gradients are copied into zero-padded block buffers;
// softmax weights and their gradients are zeroed past Wo, so the scatters add exact zeros there).
//
// Sources: local_attention_tiles.h (register tiles), local_attention_blocks.h (blocks of rows),
// local_attention_forward.cpp, local_attention_backward.cpp, pad_split.cpp (the kd / vd layout from
// a (B, C, H, W) map), local_attention_bindings.cpp; SIMD types in simd.h.
#pragma once

#include <torch/extension.h>

#include <vector>

// (out (BN, Cv, Ho, Wo), softmax weights (BN, K2, Ho, Wo) if save_weights, else an empty tensor)
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid,
                                const at::Tensor& vd, int64_t ka, int64_t dil, bool save_weights);

// (dq, dkd, dvd), shaped as q, kd, vd
std::vector<at::Tensor> backward(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                                 const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil);

// dq; the key/value gradients go, reflection-folded and times scale, into dst (see the definition)
at::Tensor backward_fold(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                         const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil, at::Tensor dst,
                         int64_t heads, int64_t k_off, int64_t v_off, int64_t pad, double scale);

// src (B, Ctot, H, W) channels c_off .. c_off + C - 1 -> (B, C, Hp, S, Wq), reflection-padded and phase-split
at::Tensor pad_split(const at::Tensor& src, int64_t c_off, int64_t C, int64_t pad, int64_t S);

// Small maps (local_attention_lanes.cpp): the (b, n) planes in the vector lanes, keys and values read from
// the Stage I output qkv (B, 3C, H, W) (channels [q | k | v], head n at n*d); q (BN, d + 2, H', W') the
// extended queries, grid (2, Hp, S, Wq) as above. Forward: (B, C, H', W').
at::Tensor lanes_forward(const at::Tensor& qkv, const at::Tensor& q, const at::Tensor& grid, int64_t heads, int64_t ka,
                         int64_t S, int64_t dil, int64_t pad);
// Backward: returns dq (unscaled); adds scale * (dk, dv), through the reflection padding, into dst (shaped as qkv).
at::Tensor lanes_backward_fold(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& q,
                               const at::Tensor& grid, at::Tensor dst, int64_t heads, int64_t ka, int64_t S,
                               int64_t dil, int64_t pad, double scale);
