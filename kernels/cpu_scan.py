"""Fused C++ CPU kernel of the selective scan, for the ``torch`` backend of ``ssm_ops.py`` on CPU float32 / float64.

The eager torch scan makes full passes over (L, D, N) products (the decays exp(dt A), the inputs x B, the steps, y's
product) and over (L, D) tensors in mixed layouts (transposes, softplus, the gate); on a CPU those passes, not the
arithmetic, are its cost. This kernel walks time once per block of 16 channels (8 in float64), the block's N states
in registers / L1: one exp per (channel, state, step), nothing of size (L, D, N) allocated, u / delta / z read in
their own strides (a mixer's time-major views in place, channel-major tensors through small transposed tiles). The
forward keeps the state at every 64-step block start; the backward recomputes each block's states from there, then
runs the reverse scan over the block. Two entry points:

* ``selective_scan``: the whole function (delta's bias and softplus, x = dt u, the scan, the D skip, the z gate) and
  its gradients, as an autograd Function: what ``ssm_ops.selective_scan_torch`` runs in eager mode.
* ``scan_forward`` / ``scan_backward``: the time-major scan alone (dt, x given), below ssm_ops' custom op, which is
  what torch.compile traces.

It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (the system C++ compiler and ninja, no
network; about 25 s on 2 cores), once per machine: torch keeps the library in its extensions folder
(``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) under a name that hashes this source, the
compile flags, the CPU capability torch detected and the torch / Python versions, so builds for other CPUs or
versions never mix. Where it cannot be built (no compiler or ninja, a build error, Windows) ssm_ops uses its eager
path and says why once; ``SSMVL_CPU_SCAN_KERNEL=0`` turns it off. The ops are registered with ``TORCH_LIBRARY``
under a namespace of the same name (no Python binding module). float32 computes exp as a polynomial (under 1.5
ulp); float64 calls the C library.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from typing import Optional

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

ENV_VAR = "SSMVL_CPU_SCAN_KERNEL"
_STALE_LOCK_S = 900  # a build lock older than this was left by a killed build: not waited on

_SOURCE = r"""
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif

namespace {

#define SSMVL_INLINE inline __attribute__((always_inline))

// 32-byte vectors (GCC / clang vector extensions): one AVX2 register, two SSE / NEON ones. The channels of a block
// lie along the lanes: every step is element-wise across lanes, and only gB / gC's sums cross them.
constexpr int kBytes = 32;
template <typename T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(kBytes))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(kBytes))); };
template <typename T> using V = typename VecOf<T>::type;
template <typename T> constexpr int lanes() { return kBytes / sizeof(T); }
constexpr int NV = 2;  // vectors of channels in a block
template <typename T> constexpr int64_t block_channels() { return NV * lanes<T>(); }

template <typename T> SSMVL_INLINE V<T> splat(T s) { return V<T>{} + s; }
template <typename T> SSMVL_INLINE V<T> loadu(const T* p) { V<T> v; std::memcpy(&v, p, sizeof(v)); return v; }
template <typename T> SSMVL_INLINE void storeu(T* p, const V<T>& v) { std::memcpy(p, &v, sizeof(v)); }

// 2^y of a float vector: y = k + f, k an integer, |f| <= 1/2 (exact), 2^f a degree-6 polynomial fitted for relative
// error (1.9e-9 before rounding; measured worst case over [-120, 120]: 8.2e-8, under one float ulp and a half); y
// clamped to [-126, 127] (results 1.2e-38 .. 1.7e38: no denormals, no inf); NaN stays NaN. Branch-free: it stays in
// vector registers, about 15 operations. The decays exp(dt A) are 2^(dt (A log2 e)), A scaled once per block.
SSMVL_INLINE V<float> vexp2(V<float> y) {
  typedef int32_t VI __attribute__((vector_size(kBytes)));
  const V<float> lo = splat(-126.0f), hi = splat(127.0f);
#ifdef __AVX__
  // max(lo, y) / min(hi, y) return y where y is NaN (one instruction each; the ternaries below compile to two)
  y = (V<float>)_mm256_min_ps((__m256)hi, _mm256_max_ps((__m256)lo, (__m256)y));
#else
  y = y < lo ? lo : y;
  y = y > hi ? hi : y;
#endif
  const V<float> magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  const V<float> t = y + magic;
  const V<float> f = y - (t - magic);
  V<float> p = splat(1.535086630610749e-4f);
  p = splat(1.339997397735715e-3f) + f * p;
  p = splat(9.618470445275307e-3f) + f * p;
  p = splat(5.550328642129898e-2f) + f * p;
  p = splat(2.4022647738456726e-1f) + f * p;
  p = splat(6.931471824645996e-1f) + f * p;
  p = splat(1.0f) + f * p;
  const VI scale = ((VI)t - (VI)magic + 127) << 23;
  return p * (V<float>)scale;
}

constexpr float kLog2e = 1.44269504088896341f;

SSMVL_INLINE V<float> vexp(V<float> x) { return vexp2(x * kLog2e); }

// the decay exp(dt A) from dt and rate(A): float: 2^(dt (A log2 e)); float64: exp(dt A) of the C library
SSMVL_INLINE float rate(float a) { return a * kLog2e; }
SSMVL_INLINE double rate(double a) { return a; }
SSMVL_INLINE V<float> vdecay(V<float> x) { return vexp2(x); }

// log1p(w) for w in [0, 1] (all softplus needs): 2 atanh(s) with s = w / (2 + w) <= 1/3, odd series to s^13
// (relative error below 2e-8, exact for tiny w)
SSMVL_INLINE V<float> vlog1p01(V<float> w) {
  const V<float> s = w / (2.0f + w), s2 = s * s;
  V<float> p = splat(1.0f / 11.0f) + s2 * (1.0f / 13.0f);
  p = splat(1.0f / 9.0f) + s2 * p;
  p = splat(1.0f / 7.0f) + s2 * p;
  p = splat(1.0f / 5.0f) + s2 * p;
  p = splat(1.0f / 3.0f) + s2 * p;
  p = splat(1.0f) + s2 * p;
  return 2.0f * s * p;
}

// float64 (the parity tests): the C library, lane by lane
SSMVL_INLINE V<double> vexp(V<double> x) {
  V<double> r;
  for (int i = 0; i < lanes<double>(); ++i) r[i] = std::exp(x[i]);
  return r;
}

SSMVL_INLINE V<double> vdecay(V<double> x) { return vexp(x); }

SSMVL_INLINE V<double> vlog1p01(V<double> w) {
  V<double> r;
  for (int i = 0; i < lanes<double>(); ++i) r[i] = std::log1p(w[i]);
  return r;
}

// sigmoid, and softplus(v) = max(v, 0) + log1p(exp(-|v|)), accurate for every v (torch's returns v above 20:
// equal in rounding); VT a float or double vector
template <typename VT> SSMVL_INLINE VT vsigmoid(VT v) { return 1 / (1 + vexp(-v)); }

template <typename VT> SSMVL_INLINE VT vsoftplus(VT v) {
  const VT zero = VT{};
  const VT a = v < zero ? -v : v;
  return (v > zero ? v : zero) + vlog1p01(vexp(-a));
}

// out[i] += the sum of v[i]'s lanes, i < n (gB / gC: sums over a block's channels)
template <typename T> SSMVL_INLINE void add_lane_sums(const V<T>* v, int64_t n, T* out) {
  int64_t i = 0;
#ifdef __AVX__
  if constexpr (std::is_same<T, float>::value) {
    for (; i + 8 <= n; i += 8) {  // eight sums at once: a tree of horizontal adds
      const __m256 a = _mm256_hadd_ps((__m256)v[i], (__m256)v[i + 1]), b = _mm256_hadd_ps((__m256)v[i + 2], (__m256)v[i + 3]);
      const __m256 c = _mm256_hadd_ps((__m256)v[i + 4], (__m256)v[i + 5]), d = _mm256_hadd_ps((__m256)v[i + 6], (__m256)v[i + 7]);
      const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
      const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
      _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), sums));
    }
  }
#endif
  for (; i < n; ++i) {
    T sum = v[i][0];
    for (int l = 1; l < lanes<T>(); ++l) sum += v[i][l];
    out[i] += sum;
  }
}

// A (batch, channel, time) tensor of any strides.
template <typename T> struct Seq {
  T* p = nullptr;
  int64_t sb = 0, sd = 0, sl = 0;
  Seq() = default;
  explicit Seq(const at::Tensor& t)
      : p(t.defined() ? (T*)t.data_ptr<T>() : nullptr), sb(t.defined() ? t.stride(0) : 0),
        sd(t.defined() ? t.stride(1) : 0), sl(t.defined() ? t.stride(2) : 0) {}
  SSMVL_INLINE T* at(int64_t bi, int64_t ch, int64_t t) const { return p + bi * sb + ch * sd + t * sl; }
};

// A tile of cw channels x n steps between a Seq (channel stride sd, step stride sl) and a (n, CB) buffer of rows of
// channels: buf[j * CB + c] = seq[c * sd + j * sl] (GATHER) or back (scatter). Channel-major float tensors (sl = 1)
// move in 8 x 8 blocks transposed in registers (AVX); the rest one element at a time.
#ifdef __AVX__
// out row r = column r of the 8 x 8 block whose rows are at in + i * istride
SSMVL_INLINE void transpose8(const float* in, int64_t istride, float* out, int64_t ostride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * istride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ostride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ostride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

template <bool GATHER, typename T>
SSMVL_INLINE void move_tile(T* seq, int64_t sd, int64_t sl, int64_t cw, int64_t n, T* buf) {
  constexpr int64_t CB = block_channels<T>();
  int64_t c8 = 0, j8 = 0;
#ifdef __AVX__
  if constexpr (std::is_same<T, float>::value) {
    if (sl == 1) {
      c8 = cw / 8 * 8, j8 = n / 8 * 8;
      for (int64_t c = 0; c < c8; c += 8)
        for (int64_t j = 0; j < j8; j += 8) {
          if constexpr (GATHER) transpose8(seq + c * sd + j, sd, buf + j * CB + c, CB);
          else transpose8(buf + j * CB + c, CB, seq + c * sd + j, sd);
        }
    }
  }
#endif
  for (int64_t c = 0; c < cw; ++c)
    for (int64_t j = (c < c8 ? j8 : 0); j < n; ++j) {
      if constexpr (GATHER) buf[j * CB + c] = seq[c * sd + j * sl];
      else seq[c * sd + j * sl] = buf[j * CB + c];
    }
}

// One block of channels [ch, ch + cw) over the steps [t0, t0 + n) of a Seq, read and written a step at a time as NV
// vectors (zeros past cw). Time-major tensors (channel stride 1: a mixer's views) are used in place. Other layouts
// (channel-major: each channel's steps contiguous) go through a (n, NV * lanes) buffer filled / written back a block
// of steps at once, so the steps read vectors, not scattered elements.
template <typename T> struct Run {
  static constexpr int64_t CB = block_channels<T>();
  const Seq<T>* s;
  std::vector<T> buf;
  int64_t bi = 0, ch = 0, cw = 0, t0 = 0, n = 0, L = 0;
  bool direct;

  Run(const Seq<T>& seq, int64_t block, int64_t L_)
      : s(&seq), buf(seq.sd == 1 || seq.p == nullptr ? 0 : block * CB), L(L_), direct(seq.sd == 1) {}

  SSMVL_INLINE void open(int64_t bi_, int64_t ch_, int64_t cw_, int64_t t0_, int64_t n_, bool read) {
    bi = bi_; ch = ch_; cw = cw_; t0 = t0_; n = n_;
    if (direct || s->p == nullptr) return;
    if (cw < CB) std::fill(buf.begin(), buf.end(), T(0));
    if (read) move_tile<true>(s->at(bi, ch, t0), s->sd, s->sl, cw, n, buf.data());
  }
  SSMVL_INLINE void flush() const {
    if (!direct && s->p != nullptr) move_tile<false>(s->at(bi, ch, t0), s->sd, s->sl, cw, n, const_cast<T*>(buf.data()));
  }
  SSMVL_INLINE void load(int64_t t, V<T>* out) const {
    constexpr int W = lanes<T>();
    if (!direct) {
      const T* q = buf.data() + (t - t0) * CB;
      for (int v = 0; v < NV; ++v) out[v] = loadu(q + v * W);
      return;
    }
    const T* q = s->at(bi, ch, t);
    if (cw == CB) {
      for (int v = 0; v < NV; ++v) out[v] = loadu(q + v * W);
      return;
    }
    T tmp[CB] = {};
    std::memcpy(tmp, q, cw * sizeof(T));
    for (int v = 0; v < NV; ++v) out[v] = loadu(tmp + v * W);
  }
  SSMVL_INLINE void store(int64_t t, const V<T>* in) {
    constexpr int W = lanes<T>();
    if (!direct) {
      T* q = buf.data() + (t - t0) * CB;
      for (int v = 0; v < NV; ++v) storeu(q + v * W, in[v]);
      return;
    }
    T* q = s->at(bi, ch, t);
    if (cw == CB) {
      for (int v = 0; v < NV; ++v) storeu(q + v * W, in[v]);
      return;
    }
    T tmp[CB];
    for (int v = 0; v < NV; ++v) storeu(tmp + v * W, in[v]);
    std::memcpy(q, tmp, cw * sizeof(T));
  }
};

// a (channels,) vector: cw entries from p (zeros past cw, or everywhere when p is null)
template <typename T> SSMVL_INLINE void load_channels(const T* p, int64_t cw, V<T>* out) {
  constexpr int W = lanes<T>();
  T tmp[NV * W] = {};
  if (p != nullptr) std::memcpy(tmp, p, cw * sizeof(T));
  for (int v = 0; v < NV; ++v) out[v] = loadu(tmp + v * W);
}

template <typename T> SSMVL_INLINE void store_channels(T* p, int64_t cw, const V<T>* in) {
  constexpr int W = lanes<T>();
  T tmp[NV * W];
  for (int v = 0; v < NV; ++v) storeu(tmp + v * W, in[v]);
  std::memcpy(p, tmp, cw * sizeof(T));
}

// (cw channels, N states) rows of a (..., channels, N) tensor <-> s[n * NV + v][lane] (zeros past cw, or everywhere
// when p is null)
template <typename T> SSMVL_INLINE void load_states(const T* p, int64_t cw, int64_t N, V<T>* s) {
  constexpr int W = lanes<T>();
  for (int64_t i = 0; i < N * NV; ++i) s[i] = V<T>{};
  if (p == nullptr) return;
  for (int64_t c = 0; c < cw; ++c)
    for (int64_t n = 0; n < N; ++n) s[n * NV + c / W][c % W] = p[c * N + n];
}

// A's rows as the decays' rates (see rate())
template <typename T> SSMVL_INLINE void load_rates(const T* p, int64_t cw, int64_t N, V<T>* s) {
  constexpr int W = lanes<T>();
  for (int64_t i = 0; i < N * NV; ++i) s[i] = V<T>{};
  for (int64_t c = 0; c < cw; ++c)
    for (int64_t n = 0; n < N; ++n) s[n * NV + c / W][c % W] = rate(p[c * N + n]);
}

template <typename T> SSMVL_INLINE void store_states(T* p, int64_t cw, int64_t N, const V<T>* s) {
  constexpr int W = lanes<T>();
  for (int64_t c = 0; c < cw; ++c)
    for (int64_t n = 0; n < N; ++n) p[c * N + n] = s[n * NV + c / W][c % W];
}

// What a scan reads. Channel ch = g * dg + c; u, delta, z: (b, G * dg, L); A: (G, dg, N); B, C: (L, b, G, N);
// D, bias: (G * dg,); h0: (b, G, dg, N). x_given: u already holds x = dt * u and delta holds dt (no bias, no
// softplus; the time-major op of ssm_ops), so no x product, and neither D skip nor z gate.
template <typename T> struct Scan {
  Seq<T> u, delta, z;
  const T *A = nullptr, *B = nullptr, *C = nullptr, *D = nullptr, *bias = nullptr;
  bool softplus = false, x_given = false;
  int64_t L = 0, b = 0, G = 0, dg = 0, N = 0, block = 0;

  // A block of steps' inputs, before its scan: us[j] = u, dts[j] = softplus(delta + bias), xs[j] = dt u, sigs[j] =
  // softplus' (when asked), for j < steps (the steps are independent here: their transcendentals overlap)
  SSMVL_INLINE void block_inputs(const Run<T>& ru, const Run<T>& rd, int64_t t0, int64_t steps, const V<T>* biasv,
                                 V<T>* us, V<T>* dts, V<T>* xs, V<T>* sigs) const {
    for (int64_t j = 0; j < steps; ++j) {
      V<T>* uv = us + j * NV;
      V<T>* dtv = dts + j * NV;
      ru.load(t0 + j, uv);
      rd.load(t0 + j, dtv);
      for (int v = 0; v < NV; ++v) {
        dtv[v] += biasv[v];
        if (softplus) {
          if (sigs != nullptr) sigs[j * NV + v] = vsigmoid(dtv[v]);
          dtv[v] = vsoftplus(dtv[v]);
        }
        xs[j * NV + v] = x_given ? uv[v] : dtv[v] * uv[v];
      }
    }
  }
};

template <typename T>
void forward_kernel(const Scan<T>& s, const T* __restrict__ h0, const Seq<T>& out, T* __restrict__ last,
                    T* __restrict__ ckpt) {
  constexpr int64_t CB = block_channels<T>();
  const int64_t L = s.L, G = s.G, dg = s.dg, N = s.N, block = s.block;
  const int64_t nb = (dg + CB - 1) / CB, bc_row = s.b * G * N, state = s.b * G * dg * N;
  const bool gate = s.z.p != nullptr;
  at::parallel_for(0, s.b * G * nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<V<T>> ar(N * NV), h(N * NV);
    std::vector<V<T>> us(block * NV), dts(block * NV), xs(block * NV), gates(block * NV);
    Run<T> ru(s.u, block, L), rd(s.delta, block, L), rz(s.z, block, L), ro(out, block, L);
    V<T> y[NV], biasv[NV], Dv[NV], zv[NV];
    // channel block `task` over the steps [t0, t0 + block), from its state h
    auto steps_of = [&](int64_t task, int64_t t0) {
      const int64_t blk = task % nb, bg = task / nb, g = bg % G, bi = bg / G;
      const int64_t c0 = blk * CB, cw = std::min(CB, dg - c0), ch = g * dg + c0;
      const int64_t sc = bg * dg + c0;  // (bi, g, c0) in a (b, G, dg) state
      const int64_t steps = std::min(block, L - t0);
      load_rates(s.A + ch * N, cw, N, ar.data());
      load_channels(s.bias == nullptr ? nullptr : s.bias + ch, cw, biasv);
      load_channels(s.D == nullptr ? nullptr : s.D + ch, cw, Dv);
      store_states(ckpt + (t0 / block) * state + sc * N, cw, N, h.data());
      ru.open(bi, ch, cw, t0, steps, true);
      rd.open(bi, ch, cw, t0, steps, true);
      ro.open(bi, ch, cw, t0, steps, false);
      s.block_inputs(ru, rd, t0, steps, biasv, us.data(), dts.data(), xs.data(), nullptr);
      if (gate) {  // silu(z) of the block's steps, ahead as well
        rz.open(bi, ch, cw, t0, steps, true);
        for (int64_t j = 0; j < steps; ++j) {
          rz.load(t0 + j, zv);
          for (int v = 0; v < NV; ++v) gates[j * NV + v] = zv[v] * vsigmoid(zv[v]);
        }
      }
      for (int64_t j = 0; j < steps; ++j) {
        const int64_t t = t0 + j;
        const V<T>* dtv = dts.data() + j * NV;
        const V<T>* xv = xs.data() + j * NV;
        const T* Bt = s.B + t * bc_row + bg * N;
        const T* Ct = s.C + t * bc_row + bg * N;
        for (int v = 0; v < NV; ++v) y[v] = V<T>{};
        for (int64_t n = 0; n < N; ++n) {
          const T bn = Bt[n], cn = Ct[n];
          for (int v = 0; v < NV; ++v) {
            const V<T> hv = vdecay(dtv[v] * ar[n * NV + v]) * h[n * NV + v] + xv[v] * bn;
            h[n * NV + v] = hv;
            y[v] += hv * cn;
          }
        }
        if (s.D != nullptr)
          for (int v = 0; v < NV; ++v) y[v] += Dv[v] * us[j * NV + v];
        if (gate)
          for (int v = 0; v < NV; ++v) y[v] *= gates[j * NV + v];
        ro.store(t, y);
      }
      ro.flush();
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % nb, bg = task / nb, c0 = blk * CB, cw = std::min(CB, dg - c0);
      load_states(h0 == nullptr ? nullptr : h0 + (bg * dg + c0) * N, cw, N, h.data());
      for (int64_t t0 = 0; t0 < L; t0 += block) steps_of(task, t0);
      store_states(last + (bg * dg + c0) * N, cw, N, h.data());
    }
  });
}

template <typename T>
void backward_kernel(const Scan<T>& s, const Seq<T>& gout, const T* __restrict__ glast, const T* __restrict__ ckpt,
                     const Seq<T>& gu, const Seq<T>& gdelta, const Seq<T>& gz, T* __restrict__ gA_part,
                     T* __restrict__ gB_part, T* __restrict__ gC_part, T* __restrict__ gD_part,
                     T* __restrict__ gbias_part, T* __restrict__ gh0, int64_t splits) {
  constexpr int64_t CB = block_channels<T>();
  const int64_t L = s.L, G = s.G, dg = s.dg, N = s.N, block = s.block, Dm = G * dg;
  const int64_t nb = (dg + CB - 1) / CB, bc_row = s.b * G * N, state = s.b * G * dg * N;
  const int64_t nblk = (L + block - 1) / block;
  const bool gate = s.z.p != nullptr, skip = s.D != nullptr;
  // one task = the channel blocks [sp * nb / splits, (sp + 1) * nb / splits) of a (batch, group). gB / gC are sums
  // over a group's channels: each task adds its share into its own slice sp of gB_part / gC_part (no element
  // written by two threads); gA, gD, gbias are sums over the batch: each (batch, channel) written once to its part
  at::parallel_for(0, s.b * G * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<V<T>> a(N * NV), ar(N * NV);
    std::vector<V<T>> hs((block + 1) * N * NV), dAs(block * N * NV), redB(block * N), redC(block * N);
    std::vector<V<T>> us(block * NV), dts(block * NV), xs(block * NV), sigs(block * NV);
    std::vector<V<T>> gouts(block * NV), gys(block * NV), zs(block * NV), szs(block * NV);
    // of the channel block in hand: the gradient of its state (gcar), its sums for gA, gD, gbias
    std::vector<V<T>> gcar(N * NV), gA(N * NV);
    V<T> gDacc[NV], gbacc[NV];
    Run<T> ru(s.u, block, L), rd(s.delta, block, L), rz(s.z, block, L), rg(gout, block, L);
    Run<T> rgu(gu, block, L), rgd(gdelta, block, L), rgz(gz, block, L);
    V<T> gxv[NV], gdtv[NV], yv[NV], tmp[NV], biasv[NV], Dv[NV];
    // channel block blk of task over the steps of time block k, in reverse
    auto steps_of = [&](int64_t task, int64_t blk, int64_t k) {
      const int64_t sp = task % splits, bg = task / splits, g = bg % G, bi = bg / G;
      const int64_t c0 = blk * CB, cw = std::min(CB, dg - c0), ch = g * dg + c0, sc = bg * dg + c0;
      const int64_t t0 = k * block, steps = std::min(block, L - t0);
      load_states(s.A + ch * N, cw, N, a.data());
      load_rates(s.A + ch * N, cw, N, ar.data());
      load_channels(s.bias == nullptr ? nullptr : s.bias + ch, cw, biasv);
      load_channels(s.D == nullptr ? nullptr : s.D + ch, cw, Dv);
      ru.open(bi, ch, cw, t0, steps, true);
      rd.open(bi, ch, cw, t0, steps, true);
      rg.open(bi, ch, cw, t0, steps, true);
      if (gate) {
        rz.open(bi, ch, cw, t0, steps, true);
        rgz.open(bi, ch, cw, t0, steps, false);
      }
      rgu.open(bi, ch, cw, t0, steps, false);
      rgd.open(bi, ch, cw, t0, steps, false);
      // the block's inputs and states again: hs[j] = h before step t0 + j, dAs[j] = exp(dt A) of that step
      s.block_inputs(ru, rd, t0, steps, biasv, us.data(), dts.data(), xs.data(), sigs.data());
      load_states(ckpt + k * state + sc * N, cw, N, hs.data());
      for (int64_t j = 0; j < steps; ++j) {
        const int64_t t = t0 + j;
        const V<T>* dtv = dts.data() + j * NV;
        const V<T>* xj = xs.data() + j * NV;
        const T* Bt = s.B + t * bc_row + bg * N;
        const V<T>* hp = hs.data() + j * N * NV;
        V<T>* hn = hs.data() + (j + 1) * N * NV;
        V<T>* dA = dAs.data() + j * N * NV;
        for (int64_t n = 0; n < N; ++n) {
          const T bn = Bt[n];
          for (int v = 0; v < NV; ++v) {
            const V<T> e = vdecay(dtv[v] * ar[n * NV + v]);
            dA[n * NV + v] = e;
            hn[n * NV + v] = e * hp[n * NV + v] + xj[v] * bn;
          }
        }
      }
      // the output's gradient through the gate, every step ahead: gy = gout silu(z) (szs = sigmoid(z))
      for (int64_t j = 0; j < steps; ++j) {
        V<T>* go = gouts.data() + j * NV;
        rg.load(t0 + j, go);
        if (gate) {
          V<T>* zv = zs.data() + j * NV;
          rz.load(t0 + j, zv);
          for (int v = 0; v < NV; ++v) {
            szs[j * NV + v] = vsigmoid(zv[v]);
            gys[j * NV + v] = go[v] * zv[v] * szs[j * NV + v];
          }
        } else {
          for (int v = 0; v < NV; ++v) gys[j * NV + v] = go[v];
        }
      }
      // the reverse scan: g_t = gy_t C_t + gcar; gcar <- g_t exp(dt_t A) (the gradient of h_{t-1})
      for (int64_t j = steps - 1; j >= 0; --j) {
        const int64_t t = t0 + j;
        const V<T>* dtv = dts.data() + j * NV;
        const V<T>* xj = xs.data() + j * NV;
        const V<T>* uv = us.data() + j * NV;
        const V<T>* gyv = gys.data() + j * NV;
        const T* Bt = s.B + t * bc_row + bg * N;
        const T* Ct = s.C + t * bc_row + bg * N;
        const V<T>* hp = hs.data() + j * N * NV;
        const V<T>* hn = hs.data() + (j + 1) * N * NV;
        const V<T>* dA = dAs.data() + j * N * NV;
        for (int v = 0; v < NV; ++v) gxv[v] = gdtv[v] = yv[v] = V<T>{};
        for (int64_t n = 0; n < N; ++n) {
          const T bn = Bt[n], cn = Ct[n];
          V<T> sB{}, sC{};
          for (int v = 0; v < NV; ++v) {
            const int64_t i = n * NV + v;
            const V<T> gv = gyv[v] * cn + gcar[i];
            gxv[v] += gv * bn;
            yv[v] += hn[i] * cn;
            sB += xj[v] * gv;
            sC += gyv[v] * hn[i];
            const V<T> gdA = gv * hp[i] * dA[i];
            gdtv[v] += gdA * a[i];
            gA[i] += gdA * dtv[v];
            gcar[i] = gv * dA[i];
          }
          redB[j * N + n] = sB;
          redC[j * N + n] = sC;
        }
        if (gate) {  // dz = gout y silu'(z), y before the gate
          const V<T>* go = gouts.data() + j * NV;
          const V<T>* zv = zs.data() + j * NV;
          const V<T>* szv = szs.data() + j * NV;
          for (int v = 0; v < NV; ++v) {
            const V<T> y = skip ? yv[v] + Dv[v] * uv[v] : yv[v];
            tmp[v] = go[v] * y * szv[v] * (T(1) + zv[v] * (T(1) - szv[v]));
          }
          rgz.store(t, tmp);
        }
        if (s.x_given) {
          rgu.store(t, gxv);
          rgd.store(t, gdtv);
          continue;
        }
        for (int v = 0; v < NV; ++v) {  // x = dt u: du = gx dt (+ gy D), ddt = gdt + gx u
          tmp[v] = skip ? gxv[v] * dtv[v] + gyv[v] * Dv[v] : gxv[v] * dtv[v];
          if (skip) gDacc[v] += gyv[v] * uv[v];
        }
        rgu.store(t, tmp);
        for (int v = 0; v < NV; ++v) {
          const V<T> gdt = gdtv[v] + gxv[v] * uv[v];
          tmp[v] = s.softplus ? gdt * sigs[j * NV + v] : gdt;
          gbacc[v] += tmp[v];
        }
        rgd.store(t, tmp);
      }
      rgu.flush();
      rgd.flush();
      if (gate) rgz.flush();
      T* pB = gB_part + (sp * L + t0) * bc_row + bg * N;
      T* pC = gC_part + (sp * L + t0) * bc_row + bg * N;
      for (int64_t j = 0; j < steps; ++j) {
        add_lane_sums(redB.data() + j * N, N, pB + j * bc_row);
        add_lane_sums(redC.data() + j * N, N, pC + j * bc_row);
      }
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sp = task % splits, bg = task / splits, g = bg % G, bi = bg / G;
      for (int64_t blk = sp * nb / splits; blk < (sp + 1) * nb / splits; ++blk) {
        const int64_t c0 = blk * CB, cw = std::min(CB, dg - c0), sc = bg * dg + c0;
        load_states(glast + sc * N, cw, N, gcar.data());
        for (int64_t i = 0; i < N * NV; ++i) gA[i] = V<T>{};
        for (int v = 0; v < NV; ++v) gDacc[v] = gbacc[v] = V<T>{};
        for (int64_t k = nblk - 1; k >= 0; --k) steps_of(task, blk, k);
        store_states(gh0 + sc * N, cw, N, gcar.data());
        store_states(gA_part + sc * N, cw, N, gA.data());
        store_channels(gD_part + bi * Dm + g * dg + c0, cw, gDacc);
        store_channels(gbias_part + bi * Dm + g * dg + c0, cw, gbacc);
      }
    }
  });
}

at::Tensor optional_as(const std::optional<at::Tensor>& t, const at::Tensor& like) {
  return t.has_value() && t->defined() ? t->to(like.scalar_type()) : at::Tensor();
}

// checks and the Scan of the inputs (strided tensors keep their strides; the small ones made contiguous)
template <typename T>
Scan<T> make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                  bool softplus, bool x_given, int64_t block) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u and delta must be (batch, dim, seqlen)");
  TORCH_CHECK(A.dim() == 3 && A.size(0) * A.size(1) == u.size(1), "A must be (groups, dim / groups, dstate)");
  const int64_t b = u.size(0), L = u.size(2), G = A.size(0), N = A.size(2);
  for (const at::Tensor* t : {&B, &C})
    TORCH_CHECK(t->dim() == 4 && t->size(0) == L && t->size(1) == b && t->size(2) == G && t->size(3) == N
                && t->is_contiguous(), "B and C must be contiguous (seqlen, batch, groups, dstate)");
  for (const at::Tensor* t : {&D, &bias})
    TORCH_CHECK(!t->defined() || (t->dim() == 1 && t->size(0) == u.size(1) && t->is_contiguous()),
                "D and delta_bias must be contiguous (dim,)");
  TORCH_CHECK(!z.defined() || z.sizes() == u.sizes(), "z must have u's shape");
  TORCH_CHECK(block > 0, "block must be positive");
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D, &z, &bias})
    TORCH_CHECK(!t->defined() || (t->scalar_type() == u.scalar_type() && t->device().is_cpu()),
                "all inputs must be CPU tensors of one dtype");
  TORCH_CHECK(A.is_contiguous(), "A must be contiguous");
  Scan<T> s;
  s.u = Seq<T>(u);
  s.delta = Seq<T>(delta);
  s.z = Seq<T>(z);
  s.A = A.data_ptr<T>();
  s.B = B.data_ptr<T>();
  s.C = C.data_ptr<T>();
  s.D = D.defined() ? D.data_ptr<T>() : nullptr;
  s.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  s.softplus = softplus;
  s.x_given = x_given;
  s.L = L; s.b = b; s.G = G; s.dg = A.size(1); s.N = N; s.block = block;
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A_, const at::Tensor& B_, const at::Tensor& C_,
    const std::optional<at::Tensor>& D_, const std::optional<at::Tensor>& z_,
    const std::optional<at::Tensor>& bias_, const std::optional<at::Tensor>& h0_, bool softplus, bool x_given,
    int64_t block) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "float32 or float64 only");
  const at::Tensor A = A_.contiguous(), B = B_.contiguous(), C = C_.contiguous();
  const at::Tensor D = optional_as(D_, u), z = optional_as(z_, u), bias = optional_as(bias_, u);
  const int64_t b = u.size(0), L = u.size(2), G = A.size(0), dg = A.size(1), N = A.size(2);
  at::Tensor h0 = optional_as(h0_, u);
  if (h0.defined()) {
    h0 = h0.contiguous();
    TORCH_CHECK(h0.sizes() == at::IntArrayRef({b, G, dg, N}), "h0 must be (batch, groups, dim / groups, dstate)");
  }
  at::Tensor out = at::empty_like(u);
  at::Tensor last = at::empty({b, G, dg, N}, u.options());
  at::Tensor ckpt = at::empty({(L + block - 1) / block, b, G, dg, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "ssmvl_scan_fwd", [&] {
    const Scan<scalar_t> s = make_scan<scalar_t>(u, delta, A, B, C, D.defined() ? D.contiguous() : D, z,
                                                 bias.defined() ? bias.contiguous() : bias, softplus, x_given, block);
    forward_kernel<scalar_t>(s, h0.defined() ? h0.data_ptr<scalar_t>() : nullptr, Seq<scalar_t>(out),
                             last.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>());
  });
  return {out, last, ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
scan_bwd(const at::Tensor& gout_, const at::Tensor& glast_, const at::Tensor& u, const at::Tensor& delta,
         const at::Tensor& A_, const at::Tensor& B_, const at::Tensor& C_, const std::optional<at::Tensor>& D_,
         const std::optional<at::Tensor>& z_, const std::optional<at::Tensor>& bias_, const at::Tensor& ckpt_,
         bool softplus, bool x_given, int64_t block) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "float32 or float64 only");
  const at::Tensor A = A_.contiguous(), B = B_.contiguous(), C = C_.contiguous();
  const at::Tensor D = optional_as(D_, u), z = optional_as(z_, u), bias = optional_as(bias_, u);
  const at::Tensor Dc = D.defined() ? D.contiguous() : D, biasc = bias.defined() ? bias.contiguous() : bias;
  const int64_t b = u.size(0), Dm = u.size(1), L = u.size(2), G = A.size(0), dg = A.size(1), N = A.size(2);
  const at::Tensor gout = gout_.to(u.scalar_type()), glast = glast_.to(u.scalar_type()).contiguous();
  const at::Tensor ckpt = ckpt_.to(u.scalar_type()).contiguous();
  TORCH_CHECK(gout.sizes() == u.sizes(), "the output's gradient must have u's shape");
  TORCH_CHECK(glast.sizes() == at::IntArrayRef({b, G, dg, N}), "g_last must be (batch, groups, dim / groups, dstate)");
  TORCH_CHECK(block > 0 && ckpt.sizes() == at::IntArrayRef({(L + block - 1) / block, b, G, dg, N}),
              "checkpoints must be (ceil(seqlen / block), batch, groups, dim / groups, dstate)");
  int64_t nb = 0;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "ssmvl_scan_nb", [&] {
    nb = (dg + block_channels<scalar_t>() - 1) / block_channels<scalar_t>();
  });
  // enough tasks to keep every thread busy (about four a thread), at most one a channel block
  const int64_t want = (4 * at::get_num_threads() + b * G - 1) / (b * G);
  const int64_t splits = std::max<int64_t>(1, std::min(nb, want));
  at::Tensor gu = at::empty_like(u), gdelta = at::empty_like(delta);
  at::Tensor gz = z.defined() ? at::empty_like(z) : at::empty({0}, u.options());
  at::Tensor gh0 = at::empty({b, G, dg, N}, u.options()), gA_part = at::empty({b, G, dg, N}, u.options());
  at::Tensor gB_part = at::zeros({splits, L, b, G, N}, u.options());
  at::Tensor gC_part = at::zeros({splits, L, b, G, N}, u.options());
  at::Tensor gD_part = at::empty({b, Dm}, u.options()), gbias_part = at::empty({b, Dm}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "ssmvl_scan_bwd", [&] {
    const Scan<scalar_t> s = make_scan<scalar_t>(u, delta, A, B, C, Dc, z, biasc, softplus, x_given, block);
    backward_kernel<scalar_t>(s, Seq<scalar_t>(gout), glast.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>(),
                              Seq<scalar_t>(gu), Seq<scalar_t>(gdelta), Seq<scalar_t>(z.defined() ? gz : at::Tensor()),
                              gA_part.data_ptr<scalar_t>(), gB_part.data_ptr<scalar_t>(), gC_part.data_ptr<scalar_t>(),
                              gD_part.data_ptr<scalar_t>(), gbias_part.data_ptr<scalar_t>(), gh0.data_ptr<scalar_t>(),
                              splits);
  });
  const at::Tensor none = at::empty({0}, u.options());
  return {gu,
          gdelta,
          gA_part.sum(0),
          splits == 1 ? gB_part[0] : gB_part.sum(0),
          splits == 1 ? gC_part[0] : gC_part.sum(0),
          D.defined() ? gD_part.sum(0) : none,
          gz,
          bias.defined() ? gbias_part.sum(0) : none,
          gh0};
}

}  // namespace

TORCH_LIBRARY(SSMVL_NAMESPACE, m) {
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
        "Tensor? h0, bool softplus, bool x_given, int block) -> (Tensor, Tensor, Tensor)");
  m.def("bwd(Tensor gout, Tensor g_last, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? delta_bias, Tensor checkpoints, bool softplus, bool x_given, int block) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(SSMVL_NAMESPACE, CPU, m) {
  m.impl("fwd", &scan_fwd);
  m.impl("bwd", &scan_bwd);
}
"""


def _cpu_flags():
    """Vector-ISA flags for the CPU capability torch detected (``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY`` can only lower): no ``-march=native``, so the build is what the name says."""
    cap = "default"
    try:
        cap = "".join(c for c in torch.backends.cpu.get_cpu_capability().lower() if c.isalnum()) or cap
    except Exception:  # an old torch
        pass
    flags = {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512dq"]}
    return cap, flags.get(cap, [])


def _build_settings():
    """(name, cflags, ldflags): the name hashes everything the library depends on."""
    cap, isa = _cpu_flags()
    cflags = ["-O3"] + isa
    ldflags = []
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is a `#pragma omp parallel` in ATen's headers: without -fopenmp it runs on one thread.
        # The library then needs libgomp.so.1, which resolves to the copy torch already loaded
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    key = "\n".join([_SOURCE, " ".join(cflags), " ".join(ldflags), cap, torch.__version__, sys.version])
    name = f"ssmvl_cpu_scan_{cap}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return name, cflags + [f"-DSSMVL_NAMESPACE={name}"], ldflags


# ---------------------------------------------------------------------------------------------------------------------
# Loader: built / loaded once per process (a lock keeps two threads from loading it twice); a failure is kept too, so
# a process that cannot build tries once.
# ---------------------------------------------------------------------------------------------------------------------
_OPS = None
_ERROR: Optional[str] = None
_LOAD_SECONDS: Optional[float] = None
_LOCK = threading.Lock()


def enabled() -> bool:
    """``SSMVL_CPU_SCAN_KERNEL``: "auto" (default) / "1" use the kernel where it builds; "0" / "off" never."""
    return os.environ.get(ENV_VAR, "auto").strip().lower() not in ("0", "off", "false", "no")


def _registered(name):
    """The ops of library ``name`` if this process already has them (another copy of this file loaded them)."""
    try:
        ops = getattr(torch.ops, name)
        ops.fwd, ops.bwd  # noqa: B018 - raises AttributeError / RuntimeError when the library is not loaded
        return ops
    except (AttributeError, RuntimeError):
        return None


def _wait_for_other_build(build_dir):
    """torch's build lock (a file) is waited on forever by torch; a killed build leaves it behind. Wait for a live
    one here instead, and give up on one older than _STALE_LOCK_S."""
    lock = os.path.join(build_dir, "lock")
    while os.path.exists(lock):
        try:
            age = time.time() - os.path.getmtime(lock)
        except OSError:  # released meanwhile
            break
        if age > _STALE_LOCK_S:
            raise RuntimeError(f"a build lock {lock} is {age:.0f} s old (a killed build?); remove it to build")
        time.sleep(0.2)


def _build():
    if os.name == "nt":
        raise RuntimeError("the kernel is written for GCC / clang (vector extensions), not MSVC")
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja (the build tool) is not on PATH")
    name, cflags, ldflags = _build_settings()
    ops = _registered(name)
    if ops is not None:
        return ops
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    build_dir = os.path.join(root, name)
    os.makedirs(build_dir, exist_ok=True)
    _wait_for_other_build(build_dir)
    _load_inline(name=name, cpp_sources=[_SOURCE], extra_cflags=cflags, extra_ldflags=ldflags,
                 build_directory=build_dir, is_python_module=False, no_implicit_headers=True)
    return getattr(torch.ops, name)


def _load_inline(**kwargs):
    from torch.utils import cpp_extension

    return cpp_extension.load_inline(**kwargs)


def load():
    """The kernel's ops (``torch.ops.<name>``), or None where they cannot be built (``error()`` says why)."""
    global _OPS, _ERROR, _LOAD_SECONDS
    if _OPS is None and _ERROR is None:
        with _LOCK:
            if _OPS is None and _ERROR is None:
                start = time.perf_counter()
                try:
                    _OPS = _build()
                    _LOAD_SECONDS = time.perf_counter() - start
                    logger.info(f"ssmvl: CPU scan kernel ready ({_LOAD_SECONDS:.1f} s to build or load)")
                except Exception as err:  # no compiler / ninja, a build error, a stale lock
                    _ERROR = f"{type(err).__name__}: {str(err).strip()[-2000:]}"
    return _OPS


def error() -> Optional[str]:
    return _ERROR


def load_seconds() -> Optional[float]:
    """Seconds the first ``load()`` of this process took (the compile, on a machine's first use), else None."""
    return _LOAD_SECONDS


def _channel_view(t):
    """(L, b, G, dg, 1) -> a (b, G * dg, L) view (time-major strides)."""
    L, b = t.shape[:2]
    return t.reshape(L, b, -1).permute(1, 2, 0)


def _time_major(t, like):
    """The inverse of _channel_view for a (b, D, L) tensor allocated like one (a view again)."""
    return t.permute(2, 0, 1).reshape(like.shape)


def scan_forward(dt, x, A, B, C, h0, block: int):
    """``ssm_ops._time_major_scan_forward``: dt, x: (L, b, G, dg, 1); A: (G, dg, N); B, C: (L, b, G, 1, N); h0:
    (b, G, dg, N) or None -> ys (L, b, G, dg, 1), the last state and the block-start states. Call after ``load()``
    returned the ops."""
    ys, last, ckpt = _OPS.fwd(_channel_view(x), _channel_view(dt), A, B.squeeze(3), C.squeeze(3), None, None, None,
                              h0, False, True, block)
    return _time_major(ys, dt), last, ckpt


def scan_backward(gy, g_last, dt, x, A, B, C, checkpoints, block: int):
    """``ssm_ops._time_major_scan_backward``: the gradients of dt (through exp(dt A) only), x, A, B, C and h0."""
    gx, gdt, gA, gB, gC, _, _, _, gh0 = _OPS.bwd(_channel_view(gy), g_last, _channel_view(x), _channel_view(dt), A,
                                                 B.squeeze(3), C.squeeze(3), None, None, None, checkpoints, False,
                                                 True, block)
    return _time_major(gdt, dt), _time_major(gx, x), gA, gB.unsqueeze(3), gC.unsqueeze(3), gh0


class _FusedScan(torch.autograd.Function):
    """The whole selective scan of ssm_ops (delta's bias and softplus, x = dt u, the scan, the D skip, the z gate) in
    one pass each way: u, delta, z read in their own strides (a mixer's time-major views or channel-major tensors),
    no (L, D)-sized temporaries or transposes."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, block):
        out, last, ckpt = _OPS.fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus, False, block)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus, ctx.block, ctx.has_h0 = softplus, block, h0 is not None
        return out, last

    @staticmethod
    def backward(ctx, gout, g_last):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        gout = torch.zeros_like(u) if gout is None else gout
        g_last = torch.zeros_like(ckpt[0]) if g_last is None else g_last
        gu, gdelta, gA, gB, gC, gD, gz, gbias, gh0 = _OPS.bwd(gout, g_last, u, delta, A, B, C, D, z, delta_bias,
                                                              ckpt, ctx.softplus, False, ctx.block)
        return (gu, gdelta, gA, gB, gC, gD if D is not None else None, gz if z is not None else None,
                gbias if delta_bias is not None else None, gh0 if ctx.has_h0 else None, None, None)


def selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus: bool, h0, block: int):
    """The fused scan (differentiable). u, delta, z: (b, G * dg, L), any strides; A: (G, dg, N); B, C: contiguous
    (L, b, G, N); D, delta_bias: (G * dg,); h0: (b, G, dg, N) or None; one dtype, float32 or float64. Returns
    ``<h_t, C_t> + D u_t`` times ``silu(z_t)`` (b, G * dg, L), in u's strides where u is dense, and the last state
    (b, G, dg, N). Call after ``load()`` returned the ops."""
    return _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, h0, softplus, block)
