// Mask paste-back on the CPU (Mask R-CNN Section 3.1, "Inference": each M x M soft mask is resized to its
// box in the image and thresholded at 0.5).
//
// One pass per mask over detectron2's per-box pixel region, with detectron2's sampling: pixel centre
// (x + 0.5) -> grid coordinate (x + 0.5 - x0) / (x1 - x0) * 2 - 1 -> grid_sample's unnormalisation for
// align_corners=False, (g + 1) * (M / 2) - 0.5, then bilinear interpolation with zero padding, evaluated in
// float32 in grid_sample's order of operations. The output tensor is allocated (zeroed) by the caller; only
// non-zero pixels of the region are written. Masks are independent, so they are split across threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct AxisSample {
  int64_t i0;   // first tap (may be -1 or M: zero padding)
  float w0;     // weight of tap i0
  float w1;     // weight of tap i0 + 1
  bool finite;  // false for degenerate (zero-size / non-finite) boxes: the pixel stays 0
};

// Region [lo, hi) of detectron2's _do_paste_mask for one box (floor(b0) - 1 .. ceil(b1) + 1, clipped).
inline void region(float b0, float b1, int64_t size, int64_t& lo, int64_t& hi) {
  if (!std::isfinite(b0) || !std::isfinite(b1)) {
    lo = hi = 0;
    return;
  }
  double l = std::max(std::floor(static_cast<double>(b0)) - 1.0, 0.0);
  double h = std::min(std::ceil(static_cast<double>(b1)) + 1.0, static_cast<double>(size));
  l = std::min(l, static_cast<double>(size));
  lo = static_cast<int64_t>(l);
  hi = std::max(static_cast<int64_t>(h), lo);
}

void axis_samples(int64_t lo, int64_t hi, float b0, float b1, int64_t m, std::vector<AxisSample>& out) {
  out.resize(hi - lo);
  const float scale = static_cast<float>(m) / 2.0f;
  const float span = b1 - b0;
  for (int64_t p = lo; p < hi; ++p) {
    const float centre = static_cast<float>(p) + 0.5f;
    const float g = (centre - b0) / span * 2.0f - 1.0f;
    const float pos = (g + 1.0f) * scale - 0.5f;
    AxisSample s;
    s.finite = std::isfinite(pos);
    if (!s.finite || pos < -1.0f || pos > static_cast<float>(m)) {
      // Both taps outside the mask (or undefined): the value is 0, which never passes a threshold > 0.
      s.i0 = -2;
      s.w0 = s.w1 = 0.0f;
    } else {
      const float fl = std::floor(pos);
      s.i0 = static_cast<int64_t>(fl);
      s.w1 = pos - fl;
      s.w0 = 1.0f - s.w1;
    }
    out[p - lo] = s;
  }
}

inline float tap(const float* mask, int64_t m, int64_t y, int64_t x) {
  return (y < 0 || y >= m || x < 0 || x >= m) ? 0.0f : mask[y * m + x];
}

template <typename out_t, bool kThreshold>
void paste_one(const float* mask, int64_t m, const std::vector<AxisSample>& xs, const std::vector<AxisSample>& ys,
               int64_t x_lo, int64_t y_lo, int64_t width, out_t* plane, float threshold) {
  for (size_t r = 0; r < ys.size(); ++r) {
    const AxisSample& sy = ys[r];
    out_t* row = plane + (y_lo + static_cast<int64_t>(r)) * width + x_lo;
    if (!sy.finite) continue;
    for (size_t c = 0; c < xs.size(); ++c) {
      const AxisSample& sx = xs[c];
      if (!sx.finite) continue;
      float v = 0.0f;
      if (sy.i0 != -2 && sx.i0 != -2) {
        // grid_sample's weights (dist. to south * dist. to east, ...) and its summation order.
        const float nw = sy.w0 * sx.w0, ne = sy.w0 * sx.w1, sw = sy.w1 * sx.w0, se = sy.w1 * sx.w1;
        const int64_t y0 = sy.i0, x0 = sx.i0;
        v = tap(mask, m, y0, x0) * nw + tap(mask, m, y0, x0 + 1) * ne + tap(mask, m, y0 + 1, x0) * sw +
            tap(mask, m, y0 + 1, x0 + 1) * se;
      }
      // The plane is zero already: writing only non-zero pixels leaves pages that would receive only
      // zeros untouched (never faulted in), which is most of the cost for large output images.
      if (kThreshold) {
        if (v >= threshold) row[c] = true;
      } else {
        const out_t q = static_cast<out_t>(v * 255.0f);
        if (q) row[c] = q;
      }
    }
  }
}

}  // namespace

// masks: (N, M, M) float32 contiguous; boxes: (N, 4) float32 (x0, y0, x1, y1); out: (N, H, W) bool (threshold
// >= 0) or uint8 (threshold < 0: value * 255, truncated), zero-filled by the caller.
void paste_masks(const torch::Tensor& masks, const torch::Tensor& boxes, torch::Tensor& out, double threshold) {
  TORCH_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2), "masks must be (N, M, M), got ", masks.sizes());
  TORCH_CHECK(masks.scalar_type() == torch::kFloat && boxes.scalar_type() == torch::kFloat,
              "masks and boxes must be float32");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == masks.size(0) && boxes.size(1) == 4,
              "boxes must be (N, 4) for N masks, got ", boxes.sizes());
  TORCH_CHECK(out.dim() == 3 && out.size(0) == masks.size(0) && out.is_contiguous(), "bad output tensor");
  const bool binary = threshold >= 0;
  TORCH_CHECK(out.scalar_type() == (binary ? torch::kBool : torch::kByte), "output dtype must be ",
              binary ? "bool" : "uint8");
  auto m_c = masks.contiguous();
  auto b_c = boxes.contiguous();
  const int64_t n = m_c.size(0), m = m_c.size(1), h = out.size(1), w = out.size(2);
  const float* mp = m_c.data_ptr<float>();
  const float* bp = b_c.data_ptr<float>();
  const float thr = static_cast<float>(threshold);
  bool* ob = binary ? out.data_ptr<bool>() : nullptr;
  uint8_t* ou = binary ? nullptr : out.data_ptr<uint8_t>();

  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<AxisSample> xs, ys;
    for (int64_t i = begin; i < end; ++i) {
      const float* b = bp + 4 * i;
      int64_t x_lo, x_hi, y_lo, y_hi;
      region(b[0], b[2], w, x_lo, x_hi);
      region(b[1], b[3], h, y_lo, y_hi);
      if (x_hi <= x_lo || y_hi <= y_lo) continue;
      axis_samples(x_lo, x_hi, b[0], b[2], m, xs);
      axis_samples(y_lo, y_hi, b[1], b[3], m, ys);
      const float* mask = mp + i * m * m;
      if (binary) {
        paste_one<bool, true>(mask, m, xs, ys, x_lo, y_lo, w, ob + i * h * w, thr);
      } else {
        paste_one<uint8_t, false>(mask, m, xs, ys, x_lo, y_lo, w, ou + i * h * w, thr);
      }
    }
  });
}
