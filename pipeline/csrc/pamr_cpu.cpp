// Fused PAMR iterations on the CPU (see pipeline/pamr.py for the definition and the torch reference).
//
// One call runs `steps` iterations of  M(p) <- sum_n w_n(p) * M(p + o_n)  (replicate padding) for a block
// of up to four channels at a time, with every iteration of a block done before the next block starts, so
// the block's two ping-pong planes stay in the core's L2 cache.  The taps are summed in the caller's order,
// starting from w_0 * M(p + o_0) and adding w_n * M(p + o_n) with fused multiply-adds, which is what the
// torch reference's `mul` + `addcmul_` chain computes.  Work is spread over torch's own intra-op thread pool
// (at::parallel_for), so torch.set_num_threads() governs it and no second thread pool is started.
//
// Built at first use by pipeline/pamr_native.py with the machine's C++ compiler and loaded with ctypes;
// the C ABI below takes raw pointers to contiguous float32 buffers.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <vector>

namespace {

constexpr int64_t kV = 16;  // floats per vector
typedef float vf __attribute__((vector_size(kV * sizeof(float))));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(vf)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

struct Geometry {
  int64_t H, W;   // plane size
  int64_t WR;     // computed row width: W rounded up to kV
  int64_t m;      // padding: the largest |offset|
  int64_t S;      // row stride of a padded plane
  int64_t P;      // floats per padded plane ((H + 2m) * S)
};

// Replicate the interior (rows m..m+H-1, columns m..m+W-1) of a padded plane into its frame.
void fill_frame(float* p, const Geometry& g) {
  for (int64_t y = g.m; y < g.m + g.H; ++y) {
    float* r = p + y * g.S;
    std::fill(r, r + g.m, r[g.m]);
    std::fill(r + g.m + g.W, r + g.S, r[g.m + g.W - 1]);
  }
  for (int64_t y = 0; y < g.m; ++y) std::memcpy(p + y * g.S, p + g.m * g.S, g.S * sizeof(float));
  for (int64_t y = g.m + g.H; y < g.H + 2 * g.m; ++y)
    std::memcpy(p + y * g.S, p + (g.m + g.H - 1) * g.S, g.S * sizeof(float));
}

// `steps` iterations of CB channels. w: (H, K, WR) neighbour weights of one image, zero past W.
// A holds the current planes (frames valid); returns the array holding the result (A or B).
template <int CB>
float** run_block(float** A, float** B, const float* w, int64_t K, const int64_t* off, int64_t steps,
                  const Geometry& g) {
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t y = 0; y < g.H; ++y) {
      const float* wy = w + y * K * g.WR;
      const int64_t row = (y + g.m) * g.S + g.m;
      for (int64_t x = 0; x < g.WR; x += kV) {
        const int64_t base = row + x;
        vf acc[CB];
        vf wv = load(wy + x);
        for (int c = 0; c < CB; ++c) acc[c] = wv * load(A[c] + base + off[0]);
        for (int64_t k = 1; k < K; ++k) {
          wv = load(wy + k * g.WR + x);
          for (int c = 0; c < CB; ++c) acc[c] += wv * load(A[c] + base + off[k]);
        }
        for (int c = 0; c < CB; ++c) store(B[c] + base, acc[c]);
      }
    }
    for (int c = 0; c < CB; ++c) fill_frame(B[c], g);  // also overwrites the columns W..WR-1 computed above
    std::swap(A, B);
  }
  return A;
}

template <int CB>
void channels(const float* mask, float* out, const float* w, int64_t K, const int64_t* off, int64_t steps,
              const Geometry& g, float* buf) {
  float* A[CB];
  float* B[CB];
  for (int c = 0; c < CB; ++c) {
    A[c] = buf + (2 * c) * g.P;
    B[c] = buf + (2 * c + 1) * g.P;
    for (int64_t y = 0; y < g.H; ++y)
      std::memcpy(A[c] + (y + g.m) * g.S + g.m, mask + (c * g.H + y) * g.W, g.W * sizeof(float));
    fill_frame(A[c], g);
  }
  float** R = run_block<CB>(A, B, w, K, off, steps, g);
  for (int c = 0; c < CB; ++c)
    for (int64_t y = 0; y < g.H; ++y)
      std::memcpy(out + (c * g.H + y) * g.W, R[c] + (y + g.m) * g.S + g.m, g.W * sizeof(float));
}

// Runs body() and turns a C++ exception into return code 1 with its message in err (errlen bytes):
// exceptions must not cross the C ABI into ctypes.
template <typename Body>
int guarded(char* err, int64_t errlen, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::strncpy(err, e.what(), errlen - 1);
  } catch (...) {
    std::strncpy(err, "unknown C++ exception", errlen - 1);
  }
  return 1;
}

}  // namespace

extern "C" {

int64_t reslabel_pamr_vector_width() { return kV; }

// mask, out: (B, Q, H, W) float32 contiguous. weights: (B, H, K, WR) float32 contiguous, WR = W rounded
// up to reslabel_pamr_vector_width(), zero-filled past W. dy, dx: the K tap offsets in pixels, in the order
// the taps are summed. Returns 0, or 1 with a message in err (errlen bytes).
int reslabel_pamr_f32(const float* mask, const float* weights, float* out, int64_t B, int64_t Q, int64_t H,
                      int64_t W, int64_t K, const int64_t* dy, const int64_t* dx, int64_t steps, char* err,
                      int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (B <= 0 || Q <= 0 || H <= 0 || W <= 0 || K <= 0 || steps < 0) {
      std::strncpy(err, "bad sizes", errlen - 1);
      return 1;
    }
    Geometry g;
    g.H = H;
    g.W = W;
    g.WR = (W + kV - 1) / kV * kV;
    g.m = 0;
    for (int64_t k = 0; k < K; ++k) g.m = std::max({g.m, std::abs(dy[k]), std::abs(dx[k])});
    g.S = g.WR + 2 * g.m + kV;
    g.S = (g.S + kV - 1) / kV * kV;
    g.P = (H + 2 * g.m) * g.S;
    std::vector<int64_t> off(K);
    for (int64_t k = 0; k < K; ++k) off[k] = dy[k] * g.S + dx[k];
    constexpr int64_t CB = 4;
    const int64_t blocks = (Q + CB - 1) / CB;
    const int64_t plane = H * W;
    at::parallel_for(0, B * blocks, 1, [&](int64_t i0, int64_t i1) {
      const size_t bytes = ((2 * CB * g.P * sizeof(float) + 63) / 64) * 64;
      float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (buf == nullptr) throw std::bad_alloc();
      std::unique_ptr<float, void (*)(void*)> owner(buf, &std::free);
      std::memset(buf, 0, bytes);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks, c0 = (i % blocks) * CB, nc = std::min(CB, Q - c0);
        const float* w = weights + b * H * K * g.WR;
        const float* src = mask + (b * Q + c0) * plane;
        float* dst = out + (b * Q + c0) * plane;
        switch (nc) {
          case 4: channels<4>(src, dst, w, K, off.data(), steps, g, buf); break;
          case 3: channels<3>(src, dst, w, K, off.data(), steps, g, buf); break;
          case 2: channels<2>(src, dst, w, K, off.data(), steps, g, buf); break;
          default: channels<1>(src, dst, w, K, off.data(), steps, g, buf); break;
        }
      }
    });
    return 0;
  });
}

// Neighbour weights of PAMR (METHODS.md 2.6) from a guide image (B, C, H, W) float32, written as
// (B, H, K, WR) with zeros past W, K = 8 * nd: per colour channel the unbiased standard deviation over the
// 3x3 dilated windows of all dilations pooled (centre once per dilation), affinity logits averaged over
// channels, softmax over the K taps. Tap order: dilation-major, then the 3x3 window in raster order without
// its centre (the order pipeline/pamr_native.taps gives). Returns 0, or 1 with a message in err.
int reslabel_pamr_weights_f32(const float* image, float* weights, int64_t B, int64_t C, int64_t H, int64_t W,
                              int64_t WR, int64_t nd, const int64_t* dil, char* err, int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || nd <= 0 || nd > 32 || WR < W) {
      std::strncpy(err, "bad sizes", errlen - 1);
      return 1;
    }
    const int64_t K = 8 * nd, n = 9 * nd;
    int64_t m = 0;
    for (int64_t t = 0; t < nd; ++t) m = std::max(m, dil[t]);
    const int64_t L = W + 2 * m;  // a source row with replicate padding of m on both sides
    auto clampi = [](int64_t v, int64_t hi) { return std::min<int64_t>(std::max<int64_t>(v, 0), hi - 1); };
    at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
      // rows of all window elements of one channel, padded; per-pixel accumulators over a row
      std::vector<float> src(3 * nd * L), mean(W), sq(W), den(W), logit(K * W);
      std::vector<const float*> elem(n);  // element e of the window at x = 0, as a pointer into src
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, y = r % H;
        const float* img = image + b * C * H * W;
        float* out = weights + (b * H + y) * K * WR;
        for (int64_t t = 0; t < nd; ++t)
          for (int64_t i = 0; i < 3; ++i)
            for (int64_t j = 0; j < 3; ++j) elem[9 * t + 3 * i + j] = src.data() + (3 * t + i) * L + m + (j - 1) * dil[t];
        std::fill(logit.begin(), logit.end(), 0.f);
        for (int64_t c = 0; c < C; ++c) {
          const float* ch = img + c * H * W;
          for (int64_t t = 0; t < nd; ++t)
            for (int64_t i = 0; i < 3; ++i) {
              const float* row = ch + clampi(y + (i - 1) * dil[t], H) * W;
              float* dst = src.data() + (3 * t + i) * L;
              std::fill(dst, dst + m, row[0]);
              std::memcpy(dst + m, row, W * sizeof(float));
              std::fill(dst + m + W, dst + L, row[W - 1]);
            }
          std::fill(mean.begin(), mean.end(), 0.f);
          for (int64_t e = 0; e < n; ++e)
            for (int64_t x = 0; x < W; ++x) mean[x] += elem[e][x];
          for (int64_t x = 0; x < W; ++x) mean[x] /= n;
          std::fill(sq.begin(), sq.end(), 0.f);
          for (int64_t e = 0; e < n; ++e)
            for (int64_t x = 0; x < W; ++x) sq[x] += (elem[e][x] - mean[x]) * (elem[e][x] - mean[x]);
          for (int64_t x = 0; x < W; ++x) den[x] = 1e-8f + 0.1f * std::sqrt(sq[x] / (n - 1));
          const float* centre = ch + y * W;
          for (int64_t t = 0; t < nd; ++t)
            for (int64_t k = 0; k < 8; ++k) {
              const float* nb = elem[9 * t + k + (k >= 4)];
              float* lg = logit.data() + (8 * t + k) * W;
              for (int64_t x = 0; x < W; ++x) lg[x] += -std::fabs(centre[x] - nb[x]) / den[x];
            }
        }
        for (int64_t x = 0; x < W; ++x) {  // softmax over the K taps of each pixel
          float top = -INFINITY;
          for (int64_t k = 0; k < K; ++k) top = std::max(top, logit[k * W + x] /= C);
          float z = 0.f;
          for (int64_t k = 0; k < K; ++k) z += (logit[k * W + x] = std::exp(logit[k * W + x] - top));
          for (int64_t k = 0; k < K; ++k) out[k * WR + x] = logit[k * W + x] / z;
        }
        for (int64_t k = 0; k < K; ++k) std::fill(out + k * WR + W, out + (k + 1) * WR, 0.f);
      }
    });
    return 0;
  });
}

}  // extern "C"
