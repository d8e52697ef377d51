// CPU kernels of the RoI feature-extraction operators of maskrcnn_plugin (RoIPool, RoIWarp, RoIAlign).
//
// The per-RoI geometry (RoIPool's integer bin ranges; RoIWarp/RoIAlign's sample start, bin size and grid)
// is computed in Python in the input dtype and passed in, so both backends read exactly the same cells.
//
// Layout: the forward kernels read the feature map channels-last (N, H, W, C), so the four bilinear
// corners of a sample are four contiguous channel vectors and the inner loop over channels vectorises.
// Forward runs in parallel over RoIs (each RoI writes its own output slice); the backward kernels run
// in parallel over channels, so no two threads ever write the same gradient element.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cfloat>
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

template <typename T>
struct Tap {      // one sample coordinate along one axis: its two neighbouring cells and their weights
  int64_t lo, hi;
  T wlo, whi;     // 0 when the coordinate lies outside [-1, size]
  bool valid;
};

// Bilinear rule along one axis, identical to torchvision's roi_align.
template <typename T>
inline Tap<T> make_tap(T c, int64_t size) {
  Tap<T> t;
  if (c < static_cast<T>(-1.0) || c > static_cast<T>(size)) {
    t.lo = t.hi = 0;
    t.wlo = t.whi = 0;
    t.valid = false;
    return t;
  }
  if (c <= 0) c = 0;
  int64_t lo = static_cast<int64_t>(c);
  int64_t hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    c = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  T l = c - static_cast<T>(lo);
  t.lo = lo;
  t.hi = hi;
  t.wlo = static_cast<T>(1.) - l;
  t.whi = l;
  t.valid = true;
  return t;
}

// Sample taps of all bins along one axis: taps[p * grid + i] for bin p, sample i.
template <typename T>
inline void axis_taps(T start, T bin, int64_t grid, int64_t pooled, int64_t size, std::vector<Tap<T>>& taps) {
  taps.resize(pooled * grid);
  for (int64_t p = 0; p < pooled; ++p) {
    for (int64_t i = 0; i < grid; ++i) {
      T c = start + static_cast<T>(p) * bin + static_cast<T>(i + .5f) * bin / static_cast<T>(grid);
      taps[p * grid + i] = make_tap<T>(c, size);
    }
  }
}

// Running arg-max update `if (v > acc) {acc = v; arg = s;}` written branch-free (strict '>', so the
// first maximal sample in scan order wins, as in torchvision) so that the compiler vectorises the loop.
template <typename T>
inline void max_update(T* __restrict__ acc, int32_t* __restrict__ arg, int64_t c, T v, int32_t s) {
  const T a = acc[c];
  const int32_t o = arg[c];
  const int32_t m = -static_cast<int32_t>(v > a);
  acc[c] = v > a ? v : a;
  arg[c] = (s & m) | (o & ~m);
}

// dst[c * P + i] = src[i * C + c] for a (P x C) channels-last tile: per-RoI results are accumulated
// channels-last (vectorised over C) and transposed once into the NCHW output in cache-sized blocks.
template <typename T>
inline void transpose_to(const T* src, T* dst, int64_t P, int64_t C) {
  constexpr int64_t B = 16;
  for (int64_t c0 = 0; c0 < C; c0 += B) {
    const int64_t c1 = std::min(C, c0 + B);
    for (int64_t i = 0; i < P; ++i) {
      const T* s = src + i * C;
      for (int64_t c = c0; c < c1; ++c) dst[c * P + i] = s[c];
    }
  }
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

// ------------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp (bilinear sampling)
// ------------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> sample_forward(
    const at::Tensor& input, const at::Tensor& batch, const at::Tensor& sy, const at::Tensor& sx,
    const at::Tensor& bh, const at::Tensor& bw, const at::Tensor& gh, const at::Tensor& gw,
    int64_t ph, int64_t pw, bool is_max) {
  check_cpu(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be N x C x H x W");
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = batch.size(0);
  (void)N;
  auto x = input.permute({0, 2, 3, 1}).contiguous();
  auto out = at::empty({K, C, ph, pw}, input.options());
  auto argmax = at::empty({is_max ? K : 0, C, ph, pw}, input.options().dtype(at::kInt));
  if (K == 0 || C == 0) return {out, argmax};
  auto batch_c = batch.contiguous();
  auto gh_c = gh.contiguous();
  auto gw_c = gw.contiguous();
  const int64_t* bp = batch_c.data_ptr<int64_t>();
  const int64_t* ghp = gh_c.data_ptr<int64_t>();
  const int64_t* gwp = gw_c.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_sample_forward", [&] {
    using T = scalar_t;
    auto syc = sy.contiguous(), sxc = sx.contiguous(), bhc = bh.contiguous(), bwc = bw.contiguous();
    const T* syp = syc.data_ptr<T>();
    const T* sxp = sxc.data_ptr<T>();
    const T* bhp = bhc.data_ptr<T>();
    const T* bwp = bwc.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    int32_t* ap = is_max ? argmax.data_ptr<int32_t>() : nullptr;

    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      std::vector<Tap<T>> ty, tx;
      std::vector<T> obuf(ph * pw * C);
      std::vector<int32_t> abuf(is_max ? ph * pw * C : 0);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t g_h = ghp[k], g_w = gwp[k];
        if (g_h <= 0 || g_w <= 0) {  // no sample: output 0, no gradient
          std::fill(op + k * C * ph * pw, op + (k + 1) * C * ph * pw, static_cast<T>(0));
          if (is_max) std::fill(ap + k * C * ph * pw, ap + (k + 1) * C * ph * pw, -1);
          continue;
        }
        axis_taps<T>(syp[k], bhp[k], g_h, ph, H, ty);
        axis_taps<T>(sxp[k], bwp[k], g_w, pw, W, tx);
        const T* base = xp + bp[k] * H * W * C;
        T* o = op + k * C * ph * pw;
        int32_t* a_out = is_max ? ap + k * C * ph * pw : nullptr;
        const T count = static_cast<T>(g_h * g_w);
        for (int64_t p_h = 0; p_h < ph; ++p_h) {
          for (int64_t p_w = 0; p_w < pw; ++p_w) {
            const int64_t off = p_h * pw + p_w;
            T* __restrict__ accp = obuf.data() + off * C;
            int32_t* __restrict__ argp = is_max ? abuf.data() + off * C : nullptr;
            if (is_max) {
              for (int64_t c = 0; c < C; ++c) {
                accp[c] = -std::numeric_limits<T>::infinity();
                argp[c] = -1;
              }
            } else {
              for (int64_t c = 0; c < C; ++c) accp[c] = 0;
            }
            for (int64_t iy = 0; iy < g_h; ++iy) {
              const Tap<T>& a = ty[p_h * g_h + iy];
              for (int64_t ix = 0; ix < g_w; ++ix) {
                const Tap<T>& b = tx[p_w * g_w + ix];
                const int32_t s = static_cast<int32_t>(iy * g_w + ix);
                if (!a.valid || !b.valid) {  // the sample reads 0
                  if (is_max) {
                    for (int64_t c = 0; c < C; ++c) max_update<T>(accp, argp, c, static_cast<T>(0), s);
                  }
                  continue;
                }
                const T w1 = a.wlo * b.wlo, w2 = a.wlo * b.whi, w3 = a.whi * b.wlo, w4 = a.whi * b.whi;
                const T* p1 = base + (a.lo * W + b.lo) * C;
                const T* p2 = base + (a.lo * W + b.hi) * C;
                const T* p3 = base + (a.hi * W + b.lo) * C;
                const T* p4 = base + (a.hi * W + b.hi) * C;
                if (is_max) {
                  for (int64_t c = 0; c < C; ++c) {
                    max_update<T>(accp, argp, c, w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c], s);
                  }
                } else {
                  for (int64_t c = 0; c < C; ++c) {
                    accp[c] += w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c];
                  }
                }
              }
            }
            if (!is_max) {
              for (int64_t c = 0; c < C; ++c) accp[c] = accp[c] / count;
            }
          }
        }
        transpose_to<T>(obuf.data(), o, ph * pw, C);
        if (is_max) transpose_to<int32_t>(abuf.data(), a_out, ph * pw, C);
      }
    });
  });
  return {out, argmax};
}

at::Tensor sample_backward(
    const at::Tensor& grad, const at::Tensor& batch, const at::Tensor& sy, const at::Tensor& sx,
    const at::Tensor& bh, const at::Tensor& bw, const at::Tensor& gh, const at::Tensor& gw,
    const at::Tensor& argmax, int64_t N, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
    bool is_max) {
  check_cpu(grad, "grad");
  const int64_t K = batch.size(0);
  auto batch_c = batch.contiguous();
  auto gh_c = gh.contiguous();
  auto gw_c = gw.contiguous();
  const int64_t* bp = batch_c.data_ptr<int64_t>();
  const int64_t* ghp = gh_c.data_ptr<int64_t>();
  const int64_t* gwp = gw_c.data_ptr<int64_t>();
  at::Tensor result;

  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_sample_backward", [&] {
    using T = scalar_t;
    auto syc = sy.contiguous(), sxc = sx.contiguous(), bhc = bh.contiguous(), bwc = bw.contiguous();
    const T* syp = syc.data_ptr<T>();
    const T* sxp = sxc.data_ptr<T>();
    const T* bhp = bhc.data_ptr<T>();
    const T* bwp = bwc.data_ptr<T>();
    if (!is_max) {
      // channels-last gradient buffer; each thread owns a channel range [c0, c1) of every cell
      auto go = grad.permute({0, 2, 3, 1}).contiguous();  // K, ph, pw, C
      auto gi = at::zeros({N, H, W, C}, grad.options());
      const T* gop = go.data_ptr<T>();
      T* gip = gi.data_ptr<T>();
      at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
        std::vector<Tap<T>> ty, tx;
        const int64_t len = c1 - c0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t g_h = ghp[k], g_w = gwp[k];
          if (g_h <= 0 || g_w <= 0) continue;
          axis_taps<T>(syp[k], bhp[k], g_h, ph, H, ty);
          axis_taps<T>(sxp[k], bwp[k], g_w, pw, W, tx);
          T* base = gip + bp[k] * H * W * C + c0;
          const T count = static_cast<T>(g_h * g_w);
          for (int64_t p_h = 0; p_h < ph; ++p_h) {
            for (int64_t p_w = 0; p_w < pw; ++p_w) {
              const T* g = gop + ((k * ph + p_h) * pw + p_w) * C + c0;
              for (int64_t iy = 0; iy < g_h; ++iy) {
                const Tap<T>& a = ty[p_h * g_h + iy];
                if (!a.valid) continue;
                for (int64_t ix = 0; ix < g_w; ++ix) {
                  const Tap<T>& b = tx[p_w * g_w + ix];
                  if (!b.valid) continue;
                  const int64_t off[4] = {(a.lo * W + b.lo) * C, (a.lo * W + b.hi) * C,
                                          (a.hi * W + b.lo) * C, (a.hi * W + b.hi) * C};
                  const T wt[4] = {a.wlo * b.wlo / count, a.wlo * b.whi / count,
                                   a.whi * b.wlo / count, a.whi * b.whi / count};
                  for (int j = 0; j < 4; ++j) {  // separate loops: corners may coincide at borders
                    T* dst = base + off[j];
                    const T w = wt[j];
                    for (int64_t c = 0; c < len; ++c) dst[c] += g[c] * w;
                  }
                }
              }
            }
          }
        }
      });
      result = gi.permute({0, 3, 1, 2}).contiguous();
    } else {
      auto gc = grad.contiguous();
      auto am = argmax.contiguous();
      auto gi = at::zeros({N, C, H, W}, grad.options());
      const T* gp = gc.data_ptr<T>();
      const int32_t* ap = am.data_ptr<int32_t>();
      T* gip = gi.data_ptr<T>();
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        std::vector<Tap<T>> ty, tx;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t g_h = ghp[k], g_w = gwp[k];
          if (g_h <= 0 || g_w <= 0) continue;
          axis_taps<T>(syp[k], bhp[k], g_h, ph, H, ty);
          axis_taps<T>(sxp[k], bwp[k], g_w, pw, W, tx);
          for (int64_t c = c0; c < c1; ++c) {
            T* plane = gip + (bp[k] * C + c) * H * W;
            const int64_t o = (k * C + c) * ph * pw;
            for (int64_t p_h = 0; p_h < ph; ++p_h) {
              for (int64_t p_w = 0; p_w < pw; ++p_w) {
                const int32_t s = ap[o + p_h * pw + p_w];
                if (s < 0) continue;
                const Tap<T>& a = ty[p_h * g_h + s / g_w];
                const Tap<T>& b = tx[p_w * g_w + s % g_w];
                if (!a.valid || !b.valid) continue;
                const T g = gp[o + p_h * pw + p_w];
                plane[a.lo * W + b.lo] += g * (a.wlo * b.wlo);
                plane[a.lo * W + b.hi] += g * (a.wlo * b.whi);
                plane[a.hi * W + b.lo] += g * (a.whi * b.wlo);
                plane[a.hi * W + b.hi] += g * (a.whi * b.whi);
              }
            }
          }
        }
      });
      result = gi;
    }
  });
  return result;
}

// ------------------------------------------------------------------------------------------------------
// RoIPool (max over integer cell ranges)
// ------------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> pool_forward(
    const at::Tensor& input, const at::Tensor& batch, const at::Tensor& hs, const at::Tensor& he,
    const at::Tensor& ws, const at::Tensor& we) {
  check_cpu(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be N x C x H x W");
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = batch.size(0);
  const int64_t ph = hs.size(1), pw = ws.size(1);
  auto x = input.permute({0, 2, 3, 1}).contiguous();
  auto out = at::empty({K, C, ph, pw}, input.options());
  auto argmax = at::empty({K, C, ph, pw}, input.options().dtype(at::kInt));
  if (K == 0 || C == 0) return {out, argmax};
  auto batch_c = batch.contiguous(), hs_c = hs.contiguous(), he_c = he.contiguous();
  auto ws_c = ws.contiguous(), we_c = we.contiguous();
  const int64_t* bp = batch_c.data_ptr<int64_t>();
  const int64_t* hsp = hs_c.data_ptr<int64_t>();
  const int64_t* hep = he_c.data_ptr<int64_t>();
  const int64_t* wsp = ws_c.data_ptr<int64_t>();
  const int64_t* wep = we_c.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_forward", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    int32_t* ap = argmax.data_ptr<int32_t>();
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> obuf(ph * pw * C);
      std::vector<int32_t> abuf(ph * pw * C);
      for (int64_t k = begin; k < end; ++k) {
        const T* base = xp + bp[k] * H * W * C;
        for (int64_t p_h = 0; p_h < ph; ++p_h) {
          const int64_t h0 = hsp[k * ph + p_h], h1 = hep[k * ph + p_h];
          for (int64_t p_w = 0; p_w < pw; ++p_w) {
            const int64_t w0 = wsp[k * pw + p_w], w1 = wep[k * pw + p_w];
            T* __restrict__ accp = obuf.data() + (p_h * pw + p_w) * C;
            int32_t* __restrict__ argp = abuf.data() + (p_h * pw + p_w) * C;
            const bool empty = h1 <= h0 || w1 <= w0;  // empty bin: 0, no gradient
            for (int64_t c = 0; c < C; ++c) {
              accp[c] = empty ? static_cast<T>(0) : static_cast<T>(-FLT_MAX);  // torchvision's initial max
              argp[c] = -1;
            }
            if (empty) continue;
            for (int64_t h = h0; h < h1; ++h) {
              for (int64_t w = w0; w < w1; ++w) {
                const T* p = base + (h * W + w) * C;
                const int32_t idx = static_cast<int32_t>(h * W + w);
                for (int64_t c = 0; c < C; ++c) max_update<T>(accp, argp, c, p[c], idx);
              }
            }
          }
        }
        transpose_to<T>(obuf.data(), op + k * C * ph * pw, ph * pw, C);
        transpose_to<int32_t>(abuf.data(), ap + k * C * ph * pw, ph * pw, C);
      }
    });
  });
  return {out, argmax};
}

at::Tensor pool_backward(
    const at::Tensor& grad, const at::Tensor& batch, const at::Tensor& argmax, int64_t N, int64_t C,
    int64_t H, int64_t W) {
  check_cpu(grad, "grad");
  const int64_t K = batch.size(0);
  const int64_t ph = grad.size(2), pw = grad.size(3);
  auto gi = at::zeros({N, C, H, W}, grad.options());
  auto batch_c = batch.contiguous();
  auto am = argmax.contiguous();
  auto gc = grad.contiguous();
  const int64_t* bp = batch_c.data_ptr<int64_t>();
  const int32_t* ap = am.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_pool_backward", [&] {
    using T = scalar_t;
    const T* gp = gc.data_ptr<T>();
    T* gip = gi.data_ptr<T>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = c0; c < c1; ++c) {
          T* plane = gip + (bp[k] * C + c) * H * W;
          const int64_t o = (k * C + c) * ph * pw;
          for (int64_t i = 0; i < ph * pw; ++i) {
            const int32_t idx = ap[o + i];
            if (idx >= 0) plane[idx] += gp[o + i];
          }
        }
      }
    });
  });
  return gi;
}

}  // namespace

// paste_masks.cpp
void paste_masks(const torch::Tensor& masks, const torch::Tensor& boxes, torch::Tensor& out, double threshold);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "maskrcnn_plugin CPU kernels: RoIPool / RoIWarp / RoIAlign, mask paste-back";
  m.def("sample_forward", &sample_forward, "bilinear-sampling RoI extraction, forward (avg or max)");
  m.def("sample_backward", &sample_backward, "bilinear-sampling RoI extraction, backward");
  m.def("pool_forward", &pool_forward, "RoIPool forward (max over integer cells)");
  m.def("pool_backward", &pool_backward, "RoIPool backward (to the arg-max cell)");
  m.def("paste_masks", &paste_masks, "paste M x M soft masks into their boxes in (N, H, W) planes");
}
