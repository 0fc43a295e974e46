// CPU launchers of the dropout ops.
//
// bernoulli_fill_cpu draws what torch's CPU bernoulli_(p) draws where it runs its serial
// loop (every CPU but Intel's with MKL): per element two 32-bit Mersenne Twister words of the
// default generator, joined high word first, their low 53 bits as a double u in [0, 1), and
// u < p. torch calls the generator once per element through a non-inlined function; here
// the words are tempered a state block at a time and compared a chunk at a time (loops the
// compiler vectorises), and the generator's state is advanced by exactly the words used. The Python side checks once per
// process that the two agree, and uses torch's bernoulli_ where they do not.
//
// masked_dot and its backward read the bool mask at whatever strides it was drawn in (the
// dropout's (B, C, H, W) order under a channels-last view), a block of pixels per task; the
// weight's gradient is summed per task, then over tasks in a fixed order, so the result
// does not depend on the number of threads.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/MT19937RNGEngine.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <mutex>
#include <vector>

#include "../dropout_ops.h"

namespace featup_mmseg {
namespace {

constexpr int kStateWords = at::MERSENNE_STATE_N;  // 624
constexpr int kShift = at::MERSENNE_STATE_M;       // 397

// The words at::mt19937 returns, from a copy of its state, which then is its state after them.
class MersenneStream {
 public:
  explicit MersenneStream(const at::mt19937_data_pod& data)
      : state_(data.state_), left_(data.left_), next_(int(data.next_)) {}

  // the next n words into out
  void fill(uint32_t* out, int64_t n) {
    while (n > 0) {
      // at::mt19937 returns state_[next_] after decrementing left_, regenerating the state
      // block first when left_ reaches 0: left_ - 1 words are available before that.
      if (left_ == 1) {
        regenerate();
        left_ = kStateWords + 1;
        next_ = 0;
      }
      const int take = int(std::min<int64_t>(n, left_ - 1));
      const uint32_t* words = state_.data() + next_;
      for (int i = 0; i < take; ++i) out[i] = temper(words[i]);
      next_ += take;
      left_ -= take;
      out += take;
      n -= take;
    }
  }

  void store(at::mt19937_data_pod& data) const {
    data.state_ = state_;
    data.next_ = uint32_t(next_);
    data.left_ = left_;
  }

 private:
  static inline uint32_t temper(uint32_t y) {
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
  }

  static inline uint32_t twist(uint32_t u, uint32_t v) {
    const uint32_t mixed = (u & at::UMASK) | (v & at::LMASK);
    return (mixed >> 1) ^ ((v & 1u) ? at::MATRIX_A : 0u);
  }

  void regenerate() {
    uint32_t* s = state_.data();
    int i = 0;
    for (; i < kStateWords - kShift; ++i) s[i] = s[i + kShift] ^ twist(s[i], s[i + 1]);
    for (; i < kStateWords - 1; ++i)
      s[i] = s[i + kShift - kStateWords] ^ twist(s[i], s[i + 1]);
    s[i] = s[i + kShift - kStateWords] ^ twist(s[i], s[0]);
  }

  std::array<uint32_t, kStateWords> state_;
  int left_;
  int next_;
};

// pixels per task of masked_dot and its backward, and per tile within a task: a tile's mask
// is first copied pixel-major (C bytes a pixel), so the channel loops below read x, the
// mask and the weight contiguously and vectorise whatever order the mask was drawn in
constexpr int64_t kTaskPixels = 512;
constexpr int64_t kTilePixels = 32;
// independent partial sums of a pixel's dot product (a vector's lanes)
constexpr int64_t kLanes = 8;

struct MaskedDotGeometry {
  int64_t batch, pixels, channels, tasks_per_batch;
  int64_t x_batch, x_pixel;                 // x's channel stride is 1
  int64_t keep_batch, keep_pixel, keep_channel;

  MaskedDotGeometry(const at::Tensor& x, const at::Tensor& keep)
      : batch(x.size(0)), pixels(x.size(1)), channels(x.size(2)),
        tasks_per_batch((x.size(1) + kTaskPixels - 1) / kTaskPixels),
        x_batch(x.stride(0)), x_pixel(x.stride(1)),
        keep_batch(keep.stride(0)), keep_pixel(keep.stride(1)), keep_channel(keep.stride(2)) {}

  int64_t tasks() const { return batch * tasks_per_batch; }

  // calls tile(b, first pixel, pixel count, the tile's mask (count x channels, pixel-major))
  // for each tile of the tasks [begin, end)
  template <typename Tile>
  void for_each_tile(const bool* keep, int64_t begin, int64_t end, const Tile& tile) const {
    std::vector<uint8_t> tile_keep(kTilePixels * channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_batch;
      const int64_t task_first = (task % tasks_per_batch) * kTaskPixels;
      const int64_t task_last = std::min(pixels, task_first + kTaskPixels);
      for (int64_t first = task_first; first < task_last; first += kTilePixels) {
        const int64_t count = std::min(kTilePixels, task_last - first);
        const bool* k = keep + b * keep_batch + first * keep_pixel;
        uint8_t* t = tile_keep.data();
        if (keep_channel == 1) {
          for (int64_t p = 0; p < count; ++p)
            for (int64_t c = 0; c < channels; ++c) t[p * channels + c] = k[p * keep_pixel + c];
        } else {  // e.g. drawn channel-major: read along pixels
          for (int64_t c = 0; c < channels; ++c)
            for (int64_t p = 0; p < count; ++p)
              t[p * channels + c] = k[c * keep_channel + p * keep_pixel];
        }
        tile(task, b, first, count, static_cast<const uint8_t*>(t));
      }
    }
  }
};

template <typename scalar_t>
void masked_dot_kernel(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& weight,
                       at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const MaskedDotGeometry g(x, keep);
  const int64_t channels = g.channels;
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  std::vector<opmath_t> w(weight.const_data_ptr<scalar_t>(),
                          weight.const_data_ptr<scalar_t>() + channels);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  at::parallel_for(0, g.tasks(), 1, [&](int64_t begin, int64_t end) {
    g.for_each_tile(keep.const_data_ptr<bool>(), begin, end,
                    [&](int64_t, int64_t b, int64_t first, int64_t count, const uint8_t* t) {
      for (int64_t p = 0; p < count; ++p) {
        const scalar_t* xp = x_data + b * g.x_batch + (first + p) * g.x_pixel;
        const uint8_t* kp = t + p * channels;
        opmath_t lanes[kLanes] = {};
        int64_t c = 0;
        for (; c + kLanes <= channels; c += kLanes) {
          for (int64_t j = 0; j < kLanes; ++j)
            lanes[j] += opmath_t(xp[c + j]) * (w[c + j] * opmath_t(kp[c + j]));
        }
        for (int64_t j = 0; c < channels; ++c, ++j)
          lanes[j] += opmath_t(xp[c]) * (w[c] * opmath_t(kp[c]));
        opmath_t sum = 0;
        for (int64_t j = 0; j < kLanes; ++j) sum += lanes[j];
        out_data[b * g.pixels + first + p] = scalar_t(sum);
      }
    });
  });
}

template <typename scalar_t>
void masked_dot_backward_kernel(const at::Tensor& grad, const at::Tensor& x,
                                const at::Tensor& keep, const at::Tensor& weight,
                                at::Tensor* grad_x, at::Tensor* grad_weight) {
  using opmath_t = at::opmath_type<scalar_t>;
  const MaskedDotGeometry g(x, keep);
  const int64_t channels = g.channels;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  std::vector<opmath_t> w(weight.const_data_ptr<scalar_t>(),
                          weight.const_data_ptr<scalar_t>() + channels);
  scalar_t* grad_x_data = grad_x ? grad_x->data_ptr<scalar_t>() : nullptr;  // contiguous
  // per task, its pixels' sum for the weight's gradient (double: summed over many pixels)
  std::vector<double> partial(grad_weight ? g.tasks() * channels : 0, 0.0);
  at::parallel_for(0, g.tasks(), 1, [&](int64_t begin, int64_t end) {
    g.for_each_tile(keep.const_data_ptr<bool>(), begin, end,
                    [&](int64_t task, int64_t b, int64_t first, int64_t count,
                        const uint8_t* t) {
      double* sums = grad_weight ? partial.data() + task * channels : nullptr;
      for (int64_t p = 0; p < count; ++p) {
        const int64_t pixel = b * g.pixels + first + p;
        const opmath_t grad_p = opmath_t(grad_data[pixel]);
        const uint8_t* kp = t + p * channels;
        if (grad_x_data) {
          scalar_t* gx = grad_x_data + pixel * channels;
          for (int64_t c = 0; c < channels; ++c)
            gx[c] = scalar_t(grad_p * w[c] * opmath_t(kp[c]));
        }
        if (sums) {
          const scalar_t* xp = x_data + b * g.x_batch + (first + p) * g.x_pixel;
          for (int64_t c = 0; c < channels; ++c)
            sums[c] += double(grad_p * opmath_t(xp[c]) * opmath_t(kp[c]));
        }
      }
    });
  });
  if (grad_weight) {
    std::vector<double> total(channels, 0.0);
    for (int64_t task = 0; task < g.tasks(); ++task) {
      for (int64_t c = 0; c < channels; ++c) total[c] += partial[task * channels + c];
    }
    scalar_t* gw = grad_weight->data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c) gw[c] = scalar_t(total[c]);
  }
}

}  // namespace

void bernoulli_fill_cpu(bool* out, int64_t numel, double p) {
  // u = bits / 2^53 < p exactly when the integer bits < ceil(p * 2^53) (both scalings exact)
  constexpr double kTwo53 = double(uint64_t(1) << 53);
  constexpr uint64_t kMask53 = (uint64_t(1) << 53) - 1;
  const uint64_t threshold = uint64_t(std::ceil(p * kTwo53));
  constexpr int64_t kChunk = 4096;  // elements per pass: two words each, kept in cache
  std::vector<uint32_t> words(2 * kChunk);
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  auto* cpu_generator = at::check_generator<at::CPUGeneratorImpl>(generator);
  // See torch's note [Acquire lock when using random generators]
  std::lock_guard<std::mutex> lock(cpu_generator->mutex_);
  at::mt19937 engine = cpu_generator->engine();
  at::mt19937_data_pod data = engine.data();
  MersenneStream stream(data);
  for (int64_t first = 0; first < numel; first += kChunk) {
    const int64_t n = std::min(kChunk, numel - first);
    stream.fill(words.data(), 2 * n);
    const uint32_t* w = words.data();
    bool* o = out + first;
    for (int64_t i = 0; i < n; ++i) {  // high word first, as CPUGeneratorImpl::random64
      o[i] = (((uint64_t(w[2 * i]) << 32) | w[2 * i + 1]) & kMask53) < threshold;
    }
  }
  stream.store(data);
  engine.set_data(data);
  cpu_generator->set_engine(engine);
}

void masked_dot_cpu(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& weight,
                    at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dot_cpu",
                                  [&] { masked_dot_kernel<scalar_t>(x, keep, weight, out); });
}

void masked_dot_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                             const at::Tensor& keep, const at::Tensor& weight,
                             at::Tensor* grad_x, at::Tensor* grad_weight) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dot_backward_cpu", [&] {
        masked_dot_backward_kernel<scalar_t>(grad, x, keep, weight, grad_x, grad_weight);
      });
}

}  // namespace featup_mmseg
