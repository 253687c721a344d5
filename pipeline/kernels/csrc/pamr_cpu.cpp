// Fused PAMR iterations on the CPU (see pipeline/kernels/pamr.py for the definition and the torch reference).
//
// One call runs `steps` iterations of  M(p) <- sum_n w_n(p) * M(p + o_n)  (replicate padding) for a block
// of up to four channels at a time, with every iteration of a block done before the next block starts.
// The taps are summed in the caller's order, starting from w_0 * M(p + o_0) and adding w_n * M(p + o_n)
// with fused multiply-adds, which is what the torch reference's `mul` + `addcmul_` chain computes.  Each
// weight load serves the block's four channels, and two vectors along x are computed together, so eight
// independent accumulators hide the FMA latency.  Vectors are the machine's native width (8 floats with
// AVX2, 16 with AVX-512: emulated 64-byte vectors on AVX2 measured 4x slower).
//
// ResCLIP's preliminary labels (docs/method.md §2.5 c-e) have their own entry point that fuses the whole chain
// per channel block: grid logits -> bilinear upsampling into the padded planes -> PAMR -> an online
// softmax over the queries (running max, argmax, sum of exp) -> temp_thd -> the mode of each patch.  The
// (Q, H, W) intermediates never exist.
//
// Work is spread over torch's own intra-op thread pool (at::parallel_for), so torch.set_num_threads()
// governs it and no second thread pool is started.  With an OpenMP build of torch, at::parallel_for is a
// header template around `#pragma omp parallel`: this file must then be compiled with -fopenmp and linked
// against torch's own libgomp, or it silently runs on one thread (pipeline/kernels/native.py does both, and
// reslabel_pamr_threads() lets a test check it).
//
// Built at first use by pipeline/kernels/native.py with the machine's C++ compiler and loaded with ctypes;
// the C ABI below takes raw pointers to contiguous float32 buffers.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int64_t kV = 16;  // floats per native vector
#else
constexpr int64_t kV = 8;  // AVX2 (and the width GCC lowers well elsewhere)
#endif
constexpr int XU = 2;            // vectors along x computed together
constexpr int64_t kRow = kV * XU;  // computed row width WR is a multiple of this
constexpr int64_t CB = 4;        // channels per block
typedef float vf __attribute__((vector_size(kV * sizeof(float))));

// Keeps a value in a register as it is, so the compiler cannot fuse the product that made it into a later
// multiply-add (stencil_row).  Where no such barrier is known, the taps stay a loop (which never fused).
#if defined(__x86_64__) || defined(__i386__)
#define RESLABEL_OPAQUE(v) asm("" : "+v"(v))
#define RESLABEL_UNROLL_TAPS 1
#elif defined(__aarch64__)
#define RESLABEL_OPAQUE(v) asm("" : "+w"(v))
#define RESLABEL_UNROLL_TAPS 1
#else
#define RESLABEL_OPAQUE(v) ((void)0)
#define RESLABEL_UNROLL_TAPS 0
#endif
typedef int32_t vi __attribute__((vector_size(kV * sizeof(int32_t))));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(vf)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

struct Geometry {
  int64_t H, W;   // plane size
  int64_t WR;     // computed row width: W rounded up to kRow
  int64_t m;      // the largest |offset|: the horizontal frame width
  int64_t G;      // row classes: every vertical offset is a multiple of G (see run_block)
  int64_t mr;     // the largest |vertical offset| / G: the wavefront's skew, in rows of one class
  int64_t S;      // row stride, frames included
  int64_t R;      // rows kept per level and class: 2 mr + 1
  int64_t P;      // floats between two rings: R * S, staggered (see make_geometry)
  // run_block's buffer: rings of two classes and the border rows, per level and channel of a block
  int64_t block_floats(int64_t steps) const { return 4 * (steps + 1) * CB * P; }
};

// Geometry for taps dy/dx.  Rings are spaced by a multiple of 4 KiB plus 320 bytes, so the same pixel of
// different channels does not map to the same L1 set (measured ~15% faster).
Geometry make_geometry(int64_t H, int64_t W, int64_t K, const int64_t* dy, const int64_t* dx) {
  Geometry g;
  g.H = H;
  g.W = W;
  g.WR = (W + kRow - 1) / kRow * kRow;
  g.m = 0;
  g.G = 0;
  int64_t my = 0;
  for (int64_t k = 0; k < K; ++k) {
    g.m = std::max({g.m, std::abs(dy[k]), std::abs(dx[k])});
    my = std::max(my, std::abs(dy[k]));
    g.G = std::gcd(g.G, std::abs(dy[k]));
  }
  g.G = std::max<int64_t>(g.G, 1);
  g.mr = my / g.G;
  g.S = (g.WR + 2 * g.m + kV + kV - 1) / kV * kV;
  g.R = 2 * g.mr + 1;
  g.P = (g.R * g.S + 1023) / 1024 * 1024 + 80;
  return g;
}

// Replicate the ends of one row (interior at p[0..W-1]) into its frames p[-m..-1] and p[W..S-m-1]; this
// also overwrites the columns W..WR-1 that the vector loop computed.
inline void fill_row_frame(float* p, const Geometry& g) {
  std::fill(p - g.m, p, p[0]);
  std::fill(p + g.W, p + g.S - g.m, p[g.W - 1]);
}

// One output row of NC channels (channel c at out + c * P, WR columns, a multiple of kRow): out(x) =
// sum_k wy_k(x) * src_k(x), taps summed in order with FMAs starting from w_0 * src_0 (the torch chain).
// src[k] points at tap k's source row of channel 0 (channel c at + c * P); wy is the row's weights in the
// kernel layout.  KK: the tap count when known at compile time (16: two dilations), 0 for K.
template <int NC, int KK>
inline void stencil_row(float* out, const float* const* src, const float* wy, int64_t K, int64_t WR, int64_t P) {
  const int64_t nk = KK > 0 ? KK : K;
  for (int64_t x = 0; x < WR; x += kRow) {
    vf acc[NC][XU];
    for (int u = 0; u < XU; ++u) {
      const vf wv = load(wy + x * nk + u * kV);
      for (int c = 0; c < NC; ++c) {
        acc[c][u] = wv * load(src[0] + c * P + x + u * kV);
        // the product is rounded on its own, as torch's `mul` does: with the taps unrolled, the compiler
        // could otherwise fuse it into the next tap's multiply-add (and round differently)
        RESLABEL_OPAQUE(acc[c][u]);
      }
    }
#pragma GCC unroll 16
    for (int64_t k = 1; k < nk; ++k) {
      const float* wk = wy + x * nk + k * kRow;
      const float* s = src[k] + x;
      vf wv[XU];
      for (int u = 0; u < XU; ++u) wv[u] = load(wk + u * kV);
      for (int c = 0; c < NC; ++c)
        for (int u = 0; u < XU; ++u) acc[c][u] += wv[u] * load(s + c * P + u * kV);
    }
    for (int c = 0; c < NC; ++c)
      for (int u = 0; u < XU; ++u) store(out + c * P + x + u * kV, acc[c][u]);
  }
}

// `steps` PAMR iterations of NC channels as wavefronts over rows.  Every vertical offset is a multiple of
// G (ResCLIP's dilations 8 and 16: G = 8), so row y only reads rows of its class y mod G, except where the
// replicate padding clamps a read to row 0 or H - 1.  Each class runs as its own wavefront: level 0 is the
// input, level t the t-th iteration, and level t keeps only the last R = 2 mr + 1 rows of the class in a
// ring.  At time tau, level t computes class row tau - t mr: every row it reads from level t-1 was computed
// at this time step or earlier and is still in that ring.  So each weight row is used by all iterations
// while it is in cache, and the live data is (steps + 1) rings of R rows per channel (5 rows for ResCLIP's
// taps instead of the 33 of one wavefront over all rows, whose rings did not fit the L2 cache).
// Rows 0 and H - 1 of every level are also kept aside: the classes holding them run first, together (they
// may read each other's), then every other class with them already there.
// The sum of one output is the same chain of FMAs in the same tap order as before (and as the torch path).
// fill(c, y, row) writes input row y of channel c (W floats); sink(c, y, row) reads result row y.
template <int NC, typename Fill, typename Sink>
void run_block(float* buf, const Geometry& g, const float* w, int64_t K, const int64_t* dy, const int64_t* dx,
               int64_t steps, Fill&& fill, Sink&& sink) {
  const int64_t m = g.m, P = g.P, G = g.G, H = g.H;
  // ring j (0, 1) of level t: row i of the class at (i % R); border rows: side 0 = row 0, 1 = row H - 1
  auto ring = [&](int j, int64_t t, int64_t i) { return buf + ((t * 2 + j) * NC) * P + (i % g.R) * g.S + m; };
  float* borders = buf + 2 * (steps + 1) * NC * P;
  auto border = [&](int side, int64_t t) { return borders + ((t * 2 + side) * NC) * P + m; };  // channel 0
  auto rows_of = [&](int64_t a) { return (H - a + G - 1) / G; };
  std::vector<const float*> src(K);
  auto run_group = [&](const std::vector<int64_t>& cls) {
    int64_t n_max = 0;
    for (int64_t a : cls) n_max = std::max(n_max, rows_of(a));
    for (int64_t tau = 0; tau < n_max + steps * g.mr; ++tau) {
      for (int64_t t = 0; t <= steps; ++t) {
        for (size_t j = 0; j < cls.size(); ++j) {
          const int64_t a = cls[j], i = tau - t * g.mr;
          if (i < 0 || i >= rows_of(a)) continue;
          const int64_t y = a + G * i;
          float* out = ring(j, t, i);
          if (t == 0) {
            for (int c = 0; c < NC; ++c) fill(c, y, out + c * P);
          } else {
            for (int64_t k = 0; k < K; ++k) {
              const int64_t yy = y + dy[k];  // a row of class a unless clamped
              src[k] = (yy < 0 ? border(0, t - 1) : yy >= H ? border(1, t - 1) : ring(j, t - 1, (yy - a) / G)) + dx[k];
            }
            const float* wy = w + y * K * g.WR;
            if (RESLABEL_UNROLL_TAPS && K == 16) stencil_row<NC, 16>(out, src.data(), wy, K, g.WR, P);
            else stencil_row<NC, 0>(out, src.data(), wy, K, g.WR, P);
          }
          for (int c = 0; c < NC; ++c) fill_row_frame(out + c * P, g);
          for (int side = 0; side < 2; ++side)
            if (y == (side == 0 ? 0 : H - 1))
              for (int c = 0; c < NC; ++c) std::memcpy(border(side, t) + c * P - m, out + c * P - m, g.S * sizeof(float));
          if (t == steps)
            for (int c = 0; c < NC; ++c) sink(c, y, out + c * P);
        }
      }
    }
  };
  const int64_t classes = std::min(G, H), aH = (H - 1) % G;
  run_group(aH == 0 ? std::vector<int64_t>{0} : std::vector<int64_t>{0, aH});
  for (int64_t a = 1; a < classes; ++a)
    if (a != aH) run_group({a});
}

// ---- vector helpers ---------------------------------------------------------------------------------

inline vi loadi(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof(vi)); return v; }
inline void storei(int32_t* p, vi v) { std::memcpy(p, &v, sizeof(vi)); }
inline vf splat(float x) { return vf{} + x; }

// exp(x) per lane (Cephes' expf: 2^n times a degree-6 polynomial; ~1 ulp on [-87.3, 88.4], inputs
// clamped to that range, so exp(-inf) gives ~1e-38 instead of 0, which no sum of ones can see).
inline vf vexp(vf x) {
  x = x < splat(-87.33654f) ? splat(-87.33654f) : x;
  x = x > splat(88.37626f) ? splat(88.37626f) : x;
  const vf fx = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(fx, vi);  // truncation; floor below
  n = n + (__builtin_convertvector(n, vf) > fx);  // a comparison is -1 where true
  const vf nf = __builtin_convertvector(n, vf);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  const vf z = x * x;
  vf y = splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  return y * scale;
}

// ---- block driver -------------------------------------------------------------------------------------

// Calls f(std::integral_constant<int, NC>{}) for the block's channel count nc in 1..CB.
template <typename F>
void with_count(int64_t nc, F&& f) {
  switch (nc) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

struct Buffer {  // 64-byte aligned, zeroed floats
  std::unique_ptr<float, void (*)(void*)> p{nullptr, &std::free};
  explicit Buffer(int64_t n) {
    const size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    p.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!p) throw std::bad_alloc();
    std::memset(p.get(), 0, bytes);
  }
  float* get() const { return p.get(); }
};

// Sparse rows of a resize matrix (out, in): the nonzero (column, weight) pairs of each row, in column order.
struct SparseRows {
  std::vector<int64_t> start, col;
  std::vector<float> val;
  SparseRows(const float* m, int64_t rows, int64_t cols) {
    start.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c)
        if (m[r * cols + c] != 0.f) {
          col.push_back(c);
          val.push_back(m[r * cols + c]);
        }
      start.push_back(static_cast<int64_t>(col.size()));
    }
  }
};

// The two passes of a separable bilinear resize with sparse rows, shared by the fused labels and the resize
// entry point.  Each output is a multiply-add chain over its row's nonzeros in column order, starting from
// the first product: what a dense product's FMA chain gives (its other terms are exact zeros).
// u (h, W) = x (h, w) . rx^T, with sx the sparse rows of rx (W, w).
void resize_along_x(const float* x, int64_t h, int64_t w, const SparseRows& sx, int64_t W, float* u) {
  for (int64_t r = 0; r < h; ++r)
    for (int64_t X = 0; X < W; ++X) {
      const int64_t e0 = sx.start[X], e1 = sx.start[X + 1];
      float v = e0 < e1 ? x[r * w + sx.col[e0]] * sx.val[e0] : 0.f;
      for (int64_t e = e0 + 1; e < e1; ++e) v = std::fma(x[r * w + sx.col[e]], sx.val[e], v);
      u[r * W + X] = v;
    }
}

// dst (W) = row y of ry (sparse rows sy) . u (h, W).
void resize_row_y(const float* u, int64_t W, const SparseRows& sy, int64_t y, float* dst) {
  const int64_t e0 = sy.start[y], e1 = sy.start[y + 1];
  if (e0 == e1) {
    std::fill(dst, dst + W, 0.f);
    return;
  }
  const float a0 = sy.val[e0];
  const float* u0 = u + sy.col[e0] * W;
  for (int64_t x = 0; x < W; ++x) dst[x] = a0 * u0[x];
  for (int64_t e = e0 + 1; e < e1; ++e) {
    const float a = sy.val[e];
    const float* ue = u + sy.col[e] * W;
    for (int64_t x = 0; x < W; ++x) dst[x] = std::fma(a, ue[x], dst[x]);
  }
}

// Per-pixel state of the online softmax over queries (rows of stride WR): running max of scale * logit,
// sum of exp(x - max), and the first query that reached the max.
struct Online {
  std::vector<float> m, s;
  std::vector<int32_t> a;
  explicit Online(int64_t n) : m(n, -INFINITY), s(n, 0.f), a(n, 0) {}
};

// Folds row y of channel `q` into the state: one exp per value, exp(-|x - max|).  Reads WR values (the
// columns past W are frame copies, finite, and their state is never read).
void fold(Online& st, const float* row, int64_t y, int32_t q, float scale, const Geometry& g) {
  const vi qv = vi{} + q;
  float* m = st.m.data() + y * g.WR;
  float* s = st.s.data() + y * g.WR;
  int32_t* a = st.a.data() + y * g.WR;
  for (int64_t x = 0; x < g.WR; x += kV) {
    const vf v = load(row + x) * scale;
    const vf mo = load(m + x), so = load(s + x);
    const vf d = v - mo;
    const vi up = d > splat(0.f);
    const vf e = vexp(up ? -d : d);
    store(s + x, up ? so * e + 1.0f : so + e);
    store(m + x, up ? v : mo);
    storei(a + x, up ? qv : loadi(a + x));
  }
}

// into <- into (+) later, `later` holding queries after those of `into` (ties keep the earlier query).
void merge(Online& into, const Online& later) {
  for (size_t i = 0; i < into.m.size(); ++i) {
    const float m1 = into.m[i], m2 = later.m[i];
    if (m2 > m1) {
      into.s[i] = into.s[i] * std::exp(m1 - m2) + later.s[i];
      into.m[i] = m2;
      into.a[i] = later.a[i];
    } else {
      into.s[i] += later.s[i] * std::exp(m2 - m1);
    }
  }
}

// How many contiguous slices items [0, n) are split into: one per thread of torch's intra-op pool, at most n.
int64_t slice_count(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n)); }

// Splits items [0, n) into T = slice_count(n) contiguous slices and runs body(slice, i0, i1) for each on
// torch's intra-op pool.
template <typename Body>
void sliced(int64_t n, int64_t T, Body&& body) {
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) body(t, n * t / T, n * (t + 1) / T);
  });
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

int fail(char* err, int64_t errlen, const char* what) {
  std::strncpy(err, what, errlen - 1);
  return 1;
}

}  // namespace

extern "C" {

int64_t reslabel_pamr_vector_width() { return kRow; }

// How many distinct threads of torch's intra-op pool at::parallel_for used here (1 means the kernel was
// built without the OpenMP flag an OpenMP build of torch needs, and runs serially).
int64_t reslabel_pamr_threads() {
  std::vector<std::atomic<int>> seen(256);
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
    seen[std::min<int64_t>(at::get_thread_num(), 255)] = 1;
  });
  int64_t n = 0;
  for (auto& s : seen) n += s.load();
  return n;
}

// mask, out: (B, Q, H, W) float32 contiguous. weights: (B, H, WR / U, K, U) float32 contiguous, U =
// reslabel_pamr_vector_width(), WR = W rounded up to U, zero past W: per row, chunks of U columns each
// holding the K taps' weights one after another (one sequential stream per row, not K; 12-40% faster). dy, dx: the K tap offsets in pixels, in the order
// the taps are summed. Returns 0, or 1 with a message in err (errlen bytes).
int reslabel_pamr_f32(const float* mask, const float* weights, float* out, int64_t B, int64_t Q, int64_t H,
                      int64_t W, int64_t K, const int64_t* dy, const int64_t* dx, int64_t steps, char* err,
                      int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (B <= 0 || Q <= 0 || H <= 0 || W <= 0 || K <= 0 || steps < 0) return fail(err, errlen, "bad sizes");
    const Geometry g = make_geometry(H, W, K, dy, dx);
    const int64_t blocks = (Q + CB - 1) / CB, plane = H * W;
    sliced(B * blocks, slice_count(B * blocks), [&](int64_t, int64_t i0, int64_t i1) {
      Buffer buf(g.block_floats(steps));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks, c0 = (i % blocks) * CB;
        const float* src = mask + (b * Q + c0) * plane;
        float* dst = out + (b * Q + c0) * plane;
        with_count(std::min(CB, Q - c0), [&](auto nc) {
          run_block<decltype(nc)::value>(buf.get(), g, weights + b * H * K * g.WR, K, dy, dx, steps,
            [&](int c, int64_t y, float* p) { std::memcpy(p, src + (c * H + y) * W, W * sizeof(float)); },
            [&](int c, int64_t y, const float* p) { std::memcpy(dst + (c * H + y) * W, p, W * sizeof(float)); });
        });
      }
    });
    return 0;
  });
}

// ResCLIP's preliminary patch labels (docs/method.md §2.5 c-e) from grid logits, fused per channel block:
// grid (B, Q, gh, gw) float32 -> bilinear resize to (H, W) with the matrices ry (H, gh) and rx (W, gw)
// (M = ry . (G . rx^T), the nonzeros of each row summed in column order) -> `steps` PAMR iterations with
// weights (B, H, WR / U, K, U) and taps dy/dx as in reslabel_pamr_f32 -> per pixel softmax over the Q queries of
// scale * logits, kept online (running max, first argmax, sum of exp) -> label = argmax, or 0 where the
// top probability 1 / sum < thd -> labels (B, H / ph, W / pw) int64: the most frequent label of each
// ph x pw patch (ties: the smallest label; trailing partial patches dropped).
// maxprob (B, H, W) float32 and argmax (B, H, W) int32 receive the per-pixel top probability and query
// when not null.  Returns 0, or 1 with a message in err.
int reslabel_pamr_labels_f32(const float* grid, int64_t B, int64_t Q, int64_t gh, int64_t gw, const float* ry,
                             const float* rx, int64_t H, int64_t W, const float* weights, int64_t K,
                             const int64_t* dy, const int64_t* dx, int64_t steps, float scale, float thd,
                             int64_t ph, int64_t pw, int64_t* labels, float* maxprob, int32_t* argmax,
                             char* err, int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (B <= 0 || Q <= 0 || gh <= 0 || gw <= 0 || H <= 0 || W <= 0 || K <= 0 || steps < 0 || ph <= 0 ||
        pw <= 0 || Q > INT32_MAX)
      return fail(err, errlen, "bad sizes");
    const Geometry g = make_geometry(H, W, K, dy, dx);
    const SparseRows sy(ry, H, gh), sx(rx, W, gw);
    const int64_t blocks = (Q + CB - 1) / CB, n = H * g.WR;
    // states[t][b]: slice t's online softmax over its queries of image b (null where it had none)
    std::vector<std::vector<std::unique_ptr<Online>>> states;
    const int64_t T = slice_count(B * blocks);
    states.resize(T);
    for (auto& s : states) s.resize(B);
    sliced(B * blocks, T, [&](int64_t t, int64_t i0, int64_t i1) {
      Buffer buf(g.block_floats(steps));
      std::vector<float> u(CB * gh * W);  // G . rx^T of the block's channels: the grid rows resized along x
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks, c0 = (i % blocks) * CB;
        if (!states[t][b]) states[t][b].reset(new Online(n));
        Online& st = *states[t][b];
        with_count(std::min(CB, Q - c0), [&](auto nc) {
          constexpr int NC = decltype(nc)::value;
          for (int c = 0; c < NC; ++c)
            resize_along_x(grid + ((b * Q + c0 + c) * gh) * gw, gh, gw, sx, W, u.data() + c * gh * W);
          run_block<NC>(buf.get(), g, weights + b * H * K * g.WR, K, dy, dx, steps,
            [&](int c, int64_t y, float* dst) { resize_row_y(u.data() + c * gh * W, W, sy, y, dst); },
            [&](int c, int64_t y, const float* p) { fold(st, p, y, static_cast<int32_t>(c0 + c), scale, g); });
        });
      }
    });
    const int64_t hp = H / ph, wp = W / pw;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<int32_t> lab(H * W);
      std::vector<int32_t> count(Q, 0);
      for (int64_t b = b0; b < b1; ++b) {
        Online* st = nullptr;
        for (int64_t t = 0; t < T; ++t) {
          if (!states[t][b]) continue;
          if (st == nullptr) st = states[t][b].get();
          else merge(*st, *states[t][b]);
        }
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            const float top = 1.0f / st->s[y * g.WR + x];
            const int32_t q = st->a[y * g.WR + x];
            lab[y * W + x] = top < thd ? 0 : q;
            if (maxprob) maxprob[(b * H + y) * W + x] = top;
            if (argmax) argmax[(b * H + y) * W + x] = q;
          }
        for (int64_t r = 0; r < hp; ++r)
          for (int64_t c = 0; c < wp; ++c) {
            for (int64_t y = r * ph; y < (r + 1) * ph; ++y)
              for (int64_t x = c * pw; x < (c + 1) * pw; ++x) ++count[lab[y * W + x]];
            int32_t best = 0;
            for (int64_t y = r * ph; y < (r + 1) * ph; ++y)  // only labels present; ties -> smallest
              for (int64_t x = c * pw; x < (c + 1) * pw; ++x) {
                const int32_t l = lab[y * W + x];
                if (count[l] > count[best] || (count[l] == count[best] && l < best)) best = l;
              }
            labels[(b * hp + r) * wp + c] = best;
            for (int64_t y = r * ph; y < (r + 1) * ph; ++y)
              for (int64_t x = c * pw; x < (c + 1) * pw; ++x) count[lab[y * W + x]] = 0;
          }
      }
    });
    return 0;
  });
}

// Bilinear resize of N planes x (N, h, w) float32 to out (N, H, W) with the resize matrices ry (H, h) and
// rx (W, w): out = ry . (x . rx^T) with resize_along_x / resize_row_y (only the nonzeros: a dense product
// does 10x the multiply-adds for a 16x upsampling).
int reslabel_resize_f32(const float* x, int64_t N, int64_t h, int64_t w, const float* ry, int64_t H,
                        const float* rx, int64_t W, float* out, char* err, int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (N <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0) return fail(err, errlen, "bad sizes");
    const SparseRows sy(ry, H, h), sx(rx, W, w);
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> u(h * W);  // x . rx^T of one plane
      for (int64_t n = n0; n < n1; ++n) {
        resize_along_x(x + n * h * w, h, w, sx, W, u.data());
        for (int64_t y = 0; y < H; ++y) resize_row_y(u.data(), W, sy, y, out + (n * H + y) * W);
      }
    });
    return 0;
  });
}

// SFR's path validity (docs/method.md §2.5 f2) for patch labels (B, N) int64 on an hp x wp grid: valid[b, i, j]
// = 1 when the probes k = 1..D_ij (D = Chebyshev distance) of the partial segment from i towards j all carry
// label L_i.  Probe coordinates come from the caller's tables rows (hp, hp, K1) and cols (wp, wp, K1),
// K1 = D_max + 1, so the rounding is exactly the caller's.  A path stops at its first foreign probe.
int reslabel_sfr_valid_paths(const int64_t* labels, int64_t B, int64_t hp, int64_t wp, const int64_t* rows,
                             const int64_t* cols, int64_t K1, uint8_t* valid, char* err, int64_t errlen) {
  return guarded(err, errlen, [&]() -> int {
    if (B <= 0 || hp <= 0 || wp <= 0 || K1 < std::max(hp, wp)) return fail(err, errlen, "bad sizes");
    const int64_t N = hp * wp;
    at::parallel_for(0, B * N, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / N, i = r % N, ri = i / wp, ci = i % wp;
        const int64_t* L = labels + b * N;
        const int64_t li = L[i];
        uint8_t* out = valid + r * N;
        for (int64_t j = 0; j < N; ++j) {
          const int64_t rj = j / wp, cj = j % wp;
          const int64_t d = std::max(std::abs(ri - rj), std::abs(ci - cj));
          const int64_t* pr = rows + (ri * hp + rj) * K1;
          const int64_t* pc = cols + (ci * wp + cj) * K1;
          uint8_t ok = 1;
          for (int64_t k = 1; k <= d; ++k)
            if (L[pr[k] * wp + pc[k]] != li) {
              ok = 0;
              break;
            }
          out[j] = ok;
        }
      }
    });
    return 0;
  });
}

// Neighbour weights of PAMR (docs/method.md §2.6) from a guide image (B, C, H, W) float32, written as
// (B, H, WR / U, K, U) (the layout of reslabel_pamr_f32) with zeros past W, K = 8 * nd: per colour channel the unbiased standard deviation over the
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
      std::vector<float> src(3 * nd * L), mean(W), sq(W), den(W), logit(K * WR);  // logit rows: WR, zero past W
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
              float* lg = logit.data() + (8 * t + k) * WR;
              for (int64_t x = 0; x < W; ++x) lg[x] += -std::fabs(centre[x] - nb[x]) / den[x];
            }
        }
        // softmax over the K taps of each pixel, kV pixels at a time (vexp: std::exp is scalar and was
        // most of this function's time); the columns past W are computed from zeros, then zeroed
        const vf cv = splat(static_cast<float>(C));
        for (int64_t x = 0; x < WR; x += kV) {
          vf top = splat(-INFINITY);
          for (int64_t k = 0; k < K; ++k) {
            const vf v = load(logit.data() + k * WR + x) / cv;
            store(logit.data() + k * WR + x, v);
            top = v > top ? v : top;
          }
          vf z = splat(0.f);
          for (int64_t k = 0; k < K; ++k) {
            const vf e = vexp(load(logit.data() + k * WR + x) - top);
            store(logit.data() + k * WR + x, e);
            z += e;
          }
          float* o = out + (x / kRow) * K * kRow + x % kRow;
          for (int64_t k = 0; k < K; ++k) store(o + k * kRow, load(logit.data() + k * WR + x) / z);
        }
        for (int64_t x = W; x < WR; ++x) for (int64_t k = 0; k < K; ++k) out[(x / kRow) * K * kRow + k * kRow + x % kRow] = 0.f;
      }
    });
    return 0;
  });
}

}  // extern "C"
