// Kernel modulation on the CPU: the forward and a fused backward, one pass over the kernels each.
//
// Optional: harmonize/layers/_kmod_ext.py builds this file on first use with
// torch.utils.cpp_extension and falls back to the pure-PyTorch op when it cannot.
//
// out[b, c, y, x] = sum_j kernels[b, c*k*k + j, y, x] * x[b, c, y + dy, x + dx],
// j = (dy + r) * k + (dx + r), r = k / 2, zero padding. Kernels are either per channel
// (B, C*k*k, H, W) or shared by all channels (B, k*k, H, W). All tensors contiguous.
//
// The op is bound by memory traffic: the kernels are k*k times the size of x. So each pass
// reads them once, in order, and writes the kernel gradient once (non-temporal stores when it
// is large); everything else stays in cache. Work is split into chunks of rows of one (b, c)
// plane, whose input rows are copied once into a zero-padded buffer (in the accumulation type:
// float for bfloat16 and half), so that every tap is a full-width loop over each row with no
// edge cases, which the compiler vectorises. For k = 3, 5, 7 the sum over the taps stays in
// registers (one store per output, not one per tap); other sizes take a generic tap-by-tap loop.
// Items (chunks or planes) are handed out one at a time to torch's threads (see run_items).

// Only the headers needed (torch/extension.h would add half a minute to the build).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define __restrict__ __restrict
#endif

namespace {

// Conversions between the storage type T and the accumulation type A. bfloat16 is stored as
// uint16_t, with bit operations that the compiler vectorises (c10::BFloat16's are not), and the
// same rounding as c10 (to nearest even; NaN stays NaN).
template <typename A, typename T>
inline A widen(T v) {
  return static_cast<A>(v);
}
template <>
inline float widen<float, uint16_t>(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename T, typename A>
inline T narrow(A v) {
  return static_cast<T>(v);
}
template <>
inline uint16_t narrow<uint16_t, float>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return f != f ? static_cast<uint16_t>(0x7FC0) : r;
}

// Elements of a chunk of rows (a row is never split): with its padded copies, it stays in L2.
constexpr int64_t kChunkElems = 4096;

struct Geom {
  int64_t H, W, k, r, Wp, HW, rows;  // rows per chunk
  Geom(int64_t H_, int64_t W_, int64_t k_) : H(H_), W(W_), k(k_), r(k_ / 2), Wp(W_ + k_ - 1), HW(H_ * W_) {
    rows = std::max<int64_t>(1, std::min<int64_t>(H, kChunkElems / std::max<int64_t>(W, 1)));
  }
  int64_t chunks() const { return (H + rows - 1) / rows; }
};

// Copy rows [y0 - r, y1 + r) of the plane into buf ((y1 - y0 + 2r) x Wp), zero outside the plane.
template <typename T, typename A>
inline void fill_padded(const T* __restrict__ src, A* __restrict__ buf, const Geom& g, int64_t y0, int64_t y1) {
  for (int64_t y = y0 - g.r; y < y1 + g.r; ++y) {
    A* row = buf + (y - y0 + g.r) * g.Wp;
    if (y < 0 || y >= g.H) {
      std::fill(row, row + g.Wp, A(0));
      continue;
    }
    std::fill(row, row + g.r, A(0));
    std::fill(row + g.r + g.W, row + g.Wp, A(0));
    const T* s = src + y * g.W;
    A* d = row + g.r;
    for (int64_t x = 0; x < g.W; ++x) d[x] = widen<A>(s[x]);
  }
}

// Copy n elements from src (a small buffer in cache) to dst. With stream, the 64-byte-aligned
// middle goes out with non-temporal stores: a large output that will not be read again soon
// need not first be read into the cache (half the memory traffic of writing it). The caller
// ends its parallel region with store_fence().
template <typename T>
inline void copy_out(T* __restrict__ dst, const T* __restrict__ src, int64_t n, bool stream) {
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
  if (stream) {
#if defined(__AVX512F__)
    constexpr int64_t V = 64;
#elif defined(__AVX__)
    constexpr int64_t V = 32;
#else
    constexpr int64_t V = 16;
#endif
    char* d = reinterpret_cast<char*>(dst);
    const char* s = reinterpret_cast<const char*>(src);
    int64_t bytes = n * static_cast<int64_t>(sizeof(T));
    const int64_t head = std::min<int64_t>(bytes, (V - reinterpret_cast<uintptr_t>(d) % V) % V);
    std::memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= V; d += V, s += V, bytes -= V) {
#if defined(__AVX512F__)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
#elif defined(__AVX__)
      _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#else
      _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
#endif
    }
    std::memcpy(d, s, bytes);
    return;
  }
#endif
  std::memcpy(dst, src, n * sizeof(T));
}

inline void store_fence() {
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
  _mm_sfence();
#endif
}

// One (plane, chunk of rows) of the forward.
template <typename T, typename A>
inline void forward_chunk(const T* __restrict__ xs, const T* __restrict__ ks, T* __restrict__ out,
                          A* __restrict__ xpad, A* __restrict__ acc, const Geom& g, int64_t y0, int64_t y1) {
  fill_padded(xs, xpad, g, y0, y1);
  const int64_t W = g.W, kk = g.k * g.k, centre = kk / 2;
  for (int64_t t = 0; t < kk; ++t) {
    const int64_t j = t == 0 ? centre : (t <= centre ? t - 1 : t);  // the centre tap first
    const int64_t dy = j / g.k - g.r, dx = j % g.k - g.r;
    const T* kj = ks + j * g.HW;
    for (int64_t y = y0; y < y1; ++y) {
      const T* __restrict__ kr = kj + y * W;
      const A* __restrict__ xr = xpad + (y - y0 + g.r + dy) * g.Wp + g.r + dx;
      A* __restrict__ ar = acc + (y - y0) * W;
      if (t == 0) {
        for (int64_t x = 0; x < W; ++x) ar[x] = widen<A>(kr[x]) * xr[x];
      } else {
        for (int64_t x = 0; x < W; ++x) ar[x] += widen<A>(kr[x]) * xr[x];
      }
    }
  }
  T* o = out + y0 * W;
  const int64_t n = (y1 - y0) * W;
  for (int64_t i = 0; i < n; ++i) o[i] = narrow<T>(acc[i]);
}

// The same for a kernel size known at compile time: every output row sums all k*k taps in
// registers, reading the k*k kernel rows side by side.
template <int KS, typename T, typename A>
inline void forward_chunk_k(const T* __restrict__ xs, const T* __restrict__ ks, T* __restrict__ out,
                            A* __restrict__ xpad, const Geom& g, int64_t y0, int64_t y1) {
  constexpr int KK = KS * KS;
  fill_padded(xs, xpad, g, y0, y1);
  const int64_t W = g.W, HW = g.HW, Wp = g.Wp;
  for (int64_t y = y0; y < y1; ++y) {
    const T* __restrict__ kr = ks + y * W;
    const A* __restrict__ xr = xpad + (y - y0) * Wp;  // padded row y - r
    T* __restrict__ o = out + y * W;
    for (int64_t x = 0; x < W; ++x) {
      A s = 0;
#pragma GCC unroll 49
      for (int j = 0; j < KK; ++j) s += widen<A>(kr[j * HW + x]) * xr[(j / KS) * Wp + j % KS + x];
      o[x] = narrow<T>(s);
    }
  }
}

// grad_x at one pixel, from the taps whose source (y - dy, x - dx) is on the plane.
template <int KS, typename T, typename A>
inline A grad_x_at(const T* ks, const T* gs, const Geom& g, int64_t y, int64_t x) {
  constexpr int R = KS / 2;
  A s = 0;
  for (int j = 0; j < KS * KS; ++j) {
    const int64_t ys = y - (j / KS - R), xs = x - (j % KS - R);
    if (ys >= 0 && ys < g.H && xs >= 0 && xs < g.W)
      s += widen<A>(ks[j * g.HW + ys * g.W + xs]) * widen<A>(gs[ys * g.W + xs]);
  }
  return s;
}

// The backward for one chunk of rows [y0, y1) of a plane, kernel size known at compile time:
//   grad_k[j, y, x] = g[y, x] * x[y + dy, x + dx]                  (if gk; per-channel kernels)
//   grad_x[y, x] = sum_j kernels[j, y - dy, x - dx] * g[y - dy, x - dx]   (if gx)
// Both sums over the taps stay in registers. grad_x reads g from a zero-padded copy (gpad) and
// the kernels in place (from a row of zeros where y - dy is off the plane); the first and last
// r columns, where some x - dx is off the plane, leave those taps out.
template <int KS, typename T, typename A>
inline void backward_chunk_k(const T* __restrict__ xs, const T* __restrict__ ks, const T* __restrict__ gs,
                             T* __restrict__ gk, T* __restrict__ gx, A* __restrict__ xpad, A* __restrict__ gpad,
                             const T* __restrict__ zeros, T* __restrict__ stage, bool stream, const Geom& g,
                             int64_t y0, int64_t y1) {
  constexpr int KK = KS * KS, R = KS / 2;
  const int64_t W = g.W, HW = g.HW, Wp = g.Wp;
  if (gk) fill_padded(xs, xpad, g, y0, y1);
  if (gx) fill_padded(gs, gpad, g, y0, y1);
  if (gk) {
    // Tap by tap: the chunk of grad_k[j] is one contiguous run, written from the staging
    // buffer (in L1) with streaming stores when asked (see copy_out).
    for (int j = 0; j < KK; ++j) {
      for (int64_t y = y0; y < y1; ++y) {
        const T* __restrict__ gr = gs + y * W;
        const A* __restrict__ xj = xpad + (y - y0 + j / KS) * Wp + j % KS;  // x[y + dy, x + dx]
        T* __restrict__ row = stage + (y - y0) * W;
        for (int64_t x = 0; x < W; ++x) row[x] = narrow<T>(widen<A>(gr[x]) * xj[x]);
      }
      copy_out(gk + j * HW + y0 * W, stage, (y1 - y0) * W, stream);
    }
  }
  if (gx) {
    for (int64_t y = y0; y < y1; ++y) {
      const A* __restrict__ gr = gpad + (y - y0 + 2 * R) * Wp + 2 * R;  // padded row y + r, column + r
      T* __restrict__ o = gx + y * W;
      // All columns in one loop that the compiler vectorises. In the first and last r columns,
      // a tap whose x - dx is off the plane reads a kernel of the row before or after (or of a
      // neighbouring tap: still this plane's kernels) times a padding zero of g; that is right
      // unless the kernel is inf or NaN, so those columns are computed again below.
      if (y >= R && y < g.H - R) {  // every tap reads a kernel row of the plane
        const T* __restrict__ kr = ks + y * W;
        for (int64_t x = 0; x < W; ++x) {
          A s = 0;
#pragma GCC unroll 49
          for (int j = 0; j < KK; ++j)
            s += widen<A>(kr[j * HW - (j / KS - R) * W - (j % KS - R) + x]) * gr[x - (j / KS) * Wp - j % KS];
          o[x] = narrow<T>(s);
        }
      } else {  // taps whose row is off the plane read a row of zeros
        const T* krow[KK];
        for (int j = 0; j < KK; ++j) {
          const int64_t ys = y - (j / KS - R), dx = j % KS - R;
          krow[j] = ys >= 0 && ys < g.H ? ks + j * HW + ys * W - dx : zeros + R;
        }
        for (int64_t x = 0; x < W; ++x) {
          A s = 0;
#pragma GCC unroll 49
          for (int j = 0; j < KK; ++j) s += widen<A>(krow[j][x]) * gr[x - (j / KS) * Wp - j % KS];
          o[x] = narrow<T>(s);
        }
      }
      const int64_t xa = std::min<int64_t>(R, W), xb = std::max<int64_t>(W - R, xa);
      for (int64_t x = 0; x < xa; ++x) o[x] = narrow<T>(grad_x_at<KS, T, A>(ks, gs, g, y, x));
      for (int64_t x = xb; x < W; ++x) o[x] = narrow<T>(grad_x_at<KS, T, A>(ks, gs, g, y, x));
    }
  }
}

// The backward over one whole plane, chunk by chunk in order.
//   grad_k[j, y, x] = g[y, x] * x[y + dy, x + dx]            (if gk; per-channel kernels)
//   grad_x[y + dy, x + dx] += kernels[j, y, x] * g[y, x]     (if gx)
// grad_x is scattered into a padded accumulator covering rows [y0 - r, y1 + r); after a chunk,
// rows [y0 - r, y1 - r) are complete and written out, and rows [y1 - r, y1 + r) carry over.
template <typename T, typename A>
void backward_plane(const T* __restrict__ xs, const T* __restrict__ ks, const T* __restrict__ gs,
                    T* __restrict__ gk, T* __restrict__ gx, A* __restrict__ xpad, A* __restrict__ acc,
                    const Geom& g) {
  const int64_t W = g.W, Wp = g.Wp, r = g.r, kk = g.k * g.k;
  if (gx) std::fill(acc, acc + (g.rows + 2 * r) * Wp, A(0));
  for (int64_t y0 = 0; y0 < g.H; y0 += g.rows) {
    const int64_t y1 = std::min(g.H, y0 + g.rows), n = y1 - y0;
    if (gk) fill_padded(xs, xpad, g, y0, y1);
    for (int64_t j = 0; j < kk; ++j) {
      const int64_t dy = j / g.k - r, dx = j % g.k - r;
      const T* kj = ks + j * g.HW;
      T* gkj = gk ? gk + j * g.HW : nullptr;
      for (int64_t y = y0; y < y1; ++y) {
        const T* __restrict__ gr = gs + y * W;
        const int64_t off = (y - y0 + r + dy) * Wp + r + dx;
        if (gk && gx) {
          const T* __restrict__ kr = kj + y * W;
          const A* __restrict__ xr = xpad + off;
          A* __restrict__ ar = acc + off;
          T* __restrict__ gkr = gkj + y * W;
          for (int64_t x = 0; x < W; ++x) {
            const A gv = widen<A>(gr[x]);
            gkr[x] = narrow<T>(gv * xr[x]);
            ar[x] += widen<A>(kr[x]) * gv;
          }
        } else if (gk) {
          const A* __restrict__ xr = xpad + off;
          T* __restrict__ gkr = gkj + y * W;
          for (int64_t x = 0; x < W; ++x) gkr[x] = narrow<T>(widen<A>(gr[x]) * xr[x]);
        } else {
          const T* __restrict__ kr = kj + y * W;
          A* __restrict__ ar = acc + off;
          for (int64_t x = 0; x < W; ++x) ar[x] += widen<A>(kr[x]) * widen<A>(gr[x]);
        }
      }
    }
    if (!gx) continue;
    // Rows [y0 - r, y1 - r) are complete; the last chunk completes all of its rows.
    const int64_t last = y1 == g.H ? n + r : n;
    for (int64_t a = 0; a < last; ++a) {
      const int64_t y = y0 - r + a;
      if (y < 0 || y >= g.H) continue;
      const A* ar = acc + a * Wp + r;
      T* o = gx + y * W;
      for (int64_t x = 0; x < W; ++x) o[x] = narrow<T>(ar[x]);
    }
    if (y1 < g.H) {
      std::memmove(acc, acc + n * Wp, 2 * r * Wp * sizeof(A));
      std::fill(acc + 2 * r * Wp, acc + (n + 2 * r) * Wp, A(0));
    }
  }
}

// grad_k of shared kernels: sum over the channels of g * shifted x, for one chunk of rows.
template <typename T, typename A>
void backward_shared_gk_chunk(const T* __restrict__ xs, const T* __restrict__ gs, T* __restrict__ gk, int64_t C,
                              A* __restrict__ xpad, A* __restrict__ gacc, const Geom& g, int64_t y0, int64_t y1) {
  const int64_t W = g.W, kk = g.k * g.k, n = y1 - y0;
  std::fill(gacc, gacc + kk * n * W, A(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = xs + c * g.HW;
    const T* gc = gs + c * g.HW;
    fill_padded(xc, xpad, g, y0, y1);
    for (int64_t j = 0; j < kk; ++j) {
      const int64_t dy = j / g.k - g.r, dx = j % g.k - g.r;
      for (int64_t y = y0; y < y1; ++y) {
        const T* __restrict__ gr = gc + y * W;
        const A* __restrict__ xr = xpad + (y - y0 + g.r + dy) * g.Wp + g.r + dx;
        A* __restrict__ ar = gacc + (j * n + y - y0) * W;
        for (int64_t x = 0; x < W; ++x) ar[x] += widen<A>(gr[x]) * xr[x];
      }
    }
  }
  for (int64_t j = 0; j < kk; ++j) {
    T* o = gk + j * g.HW + y0 * W;
    const A* a = gacc + j * n * W;
    for (int64_t i = 0; i < n * W; ++i) o[i] = narrow<T>(a[i]);
  }
}

// bfloat16 data is handled as uint16_t (see widen/narrow).
template <typename T>
using Storage = std::conditional_t<std::is_same_v<T, at::BFloat16>, uint16_t, T>;

// Grad_k runs of at least this many bytes in all go out with streaming stores (copy_out).
constexpr int64_t kStreamBytes = 16 << 20;

// Run body(i) for i in [0, n) on torch's threads, handing out items one at a time, so that a
// thread that the OS preempts (another process on the same cores) holds up at most one item.
// make_state() builds each thread's scratch buffers; body(state, i).
template <typename MakeState, typename Body>
void run_items(int64_t n, bool stream, MakeState make_state, Body body) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) body(state, i);
    if (stream) store_fence();
  });
}

template <typename T, typename A>
struct Scratch {
  std::vector<A> xpad, gpad, acc;
  std::vector<T> zeros, stage;
};

// T: the storage type (see widen/narrow), A: the accumulation type.
template <typename T, typename A>
void forward_impl(const at::Tensor& x, const at::Tensor& kernels, at::Tensor& out, int64_t k, bool shared) {
  const int64_t C = x.size(1);
  const Geom g(x.size(2), x.size(3), k);
  const int64_t nchunks = g.chunks(), kplane = k * k * g.HW, padded = (g.rows + 2 * g.r) * g.Wp;
  const T* xp = static_cast<T*>(x.data_ptr());
  const T* kp = static_cast<T*>(kernels.data_ptr());
  T* op = static_cast<T*>(out.data_ptr());
  run_items(
      x.size(0) * C * nchunks, false,
      [&] {
        Scratch<T, A> s;
        s.xpad.resize(padded);
        if (k != 3 && k != 5 && k != 7) s.acc.resize(g.rows * g.W);
        return s;
      },
      [&](Scratch<T, A>& s, int64_t i) {
        const int64_t plane = i / nchunks, y0 = (i % nchunks) * g.rows, y1 = std::min(g.H, y0 + g.rows);
        const T* xs = xp + plane * g.HW;
        const T* ks = kp + (shared ? plane / C : plane) * kplane;
        T* os = op + plane * g.HW;
        switch (k) {
          case 3: return forward_chunk_k<3, T, A>(xs, ks, os, s.xpad.data(), g, y0, y1);
          case 5: return forward_chunk_k<5, T, A>(xs, ks, os, s.xpad.data(), g, y0, y1);
          case 7: return forward_chunk_k<7, T, A>(xs, ks, os, s.xpad.data(), g, y0, y1);
          default: return forward_chunk<T, A>(xs, ks, os, s.xpad.data(), s.acc.data(), g, y0, y1);
        }
      });
}

template <typename T, typename A>
void backward_impl(const at::Tensor& x, const at::Tensor& kernels, const at::Tensor& grad, at::Tensor* grad_x,
                   at::Tensor* grad_k, int64_t k, bool shared) {
  const int64_t B = x.size(0), C = x.size(1);
  const Geom g(x.size(2), x.size(3), k);
  const int64_t kplane = k * k * g.HW, padded = (g.rows + 2 * g.r) * g.Wp, nchunks = g.chunks();
  const T* xp = static_cast<T*>(x.data_ptr());
  const T* kp = static_cast<T*>(kernels.data_ptr());
  const T* gp = static_cast<T*>(grad.data_ptr());
  T* gxp = grad_x ? static_cast<T*>(grad_x->data_ptr()) : nullptr;
  T* gkp = grad_k ? static_cast<T*>(grad_k->data_ptr()) : nullptr;
  T* gk_here = shared ? nullptr : gkp;  // per-channel kernel gradients: in the same pass as grad_x
  if (gxp || gk_here) {
    if (k == 3 || k == 5 || k == 7) {
      const bool stream = gk_here && grad_k->nbytes() >= kStreamBytes;
      run_items(
          B * C * nchunks, stream,
          [&] {
            Scratch<T, A> s;
            s.xpad.resize(gk_here ? padded : 0);
            s.stage.resize(gk_here ? g.rows * g.W : 0);
            s.gpad.resize(gxp ? padded : 0);
            s.zeros.assign(gxp ? g.W + 2 * g.r : 0, T(0));
            return s;
          },
          [&](Scratch<T, A>& s, int64_t i) {
            const int64_t plane = i / nchunks, y0 = (i % nchunks) * g.rows, y1 = std::min(g.H, y0 + g.rows);
            const T* xs = xp + plane * g.HW;
            const T* ks = kp + (shared ? plane / C : plane) * kplane;
            const T* gs = gp + plane * g.HW;
            T* gk = gk_here ? gk_here + plane * kplane : nullptr;
            T* gx = gxp ? gxp + plane * g.HW : nullptr;
            auto run = [&](auto ks_const) {
              backward_chunk_k<decltype(ks_const)::value, T, A>(xs, ks, gs, gk, gx, s.xpad.data(), s.gpad.data(),
                                                                s.zeros.data(), s.stage.data(), stream, g, y0, y1);
            };
            if (k == 3) run(std::integral_constant<int, 3>{});
            else if (k == 5) run(std::integral_constant<int, 5>{});
            else run(std::integral_constant<int, 7>{});
          });
    } else {
      run_items(
          B * C, false,
          [&] {
            Scratch<T, A> s;
            s.xpad.resize(gk_here ? padded : 0);
            s.acc.resize(gxp ? padded : 0);
            return s;
          },
          [&](Scratch<T, A>& s, int64_t plane) {
            backward_plane<T, A>(xp + plane * g.HW, kp + (shared ? plane / C : plane) * kplane, gp + plane * g.HW,
                                 gk_here ? gk_here + plane * kplane : nullptr, gxp ? gxp + plane * g.HW : nullptr,
                                 s.xpad.data(), s.acc.data(), g);
          });
    }
  }
  if (gkp && shared) {
    run_items(
        B * nchunks, false,
        [&] {
          Scratch<T, A> s;
          s.xpad.resize(padded);
          s.acc.resize(k * k * g.rows * g.W);
          return s;
        },
        [&](Scratch<T, A>& s, int64_t i) {
          const int64_t b = i / nchunks, y0 = (i % nchunks) * g.rows, y1 = std::min(g.H, y0 + g.rows);
          backward_shared_gk_chunk<T, A>(xp + b * C * g.HW, gp + b * C * g.HW, gkp + b * kplane, C, s.xpad.data(),
                                         s.acc.data(), g, y0, y1);
        });
  }
}

// A new tensor like t, about to be written in full. On Linux, its whole 2 MiB pages are marked
// for transparent huge pages: where the allocator hands out fresh memory (glibc does for large
// blocks unless told otherwise), the first writes then fault in 2 MiB at a time, not 4 KiB,
// which otherwise costs as much as the op itself (torch does the same for all its tensors
// with THP_MEM_ALLOC_ENABLE=1). A hint: memory already mapped stays as it is (khugepaged may
// merge it later), and errors are ignored.
at::Tensor empty_for_writing(const at::Tensor& t) {
  at::Tensor out = at::empty_like(t);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + out.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return out;
}

void check(const at::Tensor& x, const at::Tensor& kernels, int64_t k, bool shared) {
  TORCH_CHECK(x.device().is_cpu() && kernels.device().is_cpu(), "kernel_modulation: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && kernels.dim() == 4, "kernel_modulation: 4-d tensors expected");
  TORCH_CHECK(x.is_contiguous() && kernels.is_contiguous(), "kernel_modulation: contiguous tensors expected");
  TORCH_CHECK(x.scalar_type() == kernels.scalar_type(), "kernel_modulation: x and kernels differ in dtype");
  TORCH_CHECK(k >= 1 && k % 2 == 1, "kernel_modulation: odd kernel size expected");
  TORCH_CHECK(kernels.size(0) == x.size(0) && kernels.size(1) == (shared ? 1 : x.size(1)) * k * k &&
                  kernels.size(2) == x.size(2) && kernels.size(3) == x.size(3),
              "kernel_modulation: kernels ", kernels.sizes(), " do not fit x ", x.sizes());
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& kernels, int64_t k, bool shared) {
  check(x, kernels, k, shared);
  at::Tensor out = empty_for_writing(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "kernel_modulation_forward", [&] {
    forward_impl<Storage<scalar_t>, at::opmath_type<scalar_t>>(x, kernels, out, k, shared);
  });
  return out;
}

std::vector<at::Tensor> backward(const at::Tensor& x, const at::Tensor& kernels, const at::Tensor& grad, int64_t k,
                                 bool shared, bool need_x, bool need_k) {
  check(x, kernels, k, shared);
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "kernel_modulation: grad must be contiguous and match x");
  at::Tensor gx = need_x ? empty_for_writing(x) : at::Tensor();
  at::Tensor gk = need_k ? empty_for_writing(kernels) : at::Tensor();
  if (x.numel() == 0) {
    if (need_k) gk.zero_();
    return {gx, gk};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "kernel_modulation_backward", [&] {
    backward_impl<Storage<scalar_t>, at::opmath_type<scalar_t>>(x, kernels, grad, need_x ? &gx : nullptr,
                                                                 need_k ? &gk : nullptr, k, shared);
  });
  return {gx, gk};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "kernel modulation forward (CPU)");
  m.def("backward", &backward, "kernel modulation backward: (grad_x, grad_kernels) (CPU)");
}
