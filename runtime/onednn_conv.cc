// 2-D convolution (NHWC activations, HWIO kernel, optionally grouped: depthwise) on the CPU
// through oneDNN, as
// three XLA FFI handlers: the forward, the input gradient and the kernel gradient, plus a
// fourth for inference, the forward with a bias and an activation (none, ReLU or ReLU6) as
// post-ops (models.layers.conv_bn_act folds an eval-mode BatchNorm into kernel and bias).
// Built and loaded by runtime/onednn.py, used by models.layers.Conv on CPU (see
// docs/cpu-formulations.md).
//
// Attributes (int64 arrays of two): strides, pad_lo, pad_hi (explicit padding, >= 0) and
// dilation (1 = none); groups (int64: the input channels split into that many groups, the
// kernel (kh, kw, C / groups, O), output channel g * O / groups + m in group g, as
// lax.conv_general_dilated's feature_group_count). Activations stay NHWC in XLA's buffers (oneDNN's "nhwc" tag, no
// copies); the kernel is reordered from HWIO to the layout the chosen implementation wants on
// every call (the kernels are small), and the kernel gradient back to HWIO.
//
// A primitive is made once per shape and kind and kept in a map under a mutex. XLA runs
// independent thunks at once (a step's input and kernel gradients, say), so every primitive
// takes a user-managed scratchpad, allocated per call: with the library's shared one, two
// concurrent executions overwrote each other's partial sums (wrong kernel gradients).

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;

enum Kind { kForward = 0, kInputGrad = 1, kKernelGrad = 2, kBiasAct = 3, kBiasSumAct = 6 };
// kBiasAct + act is the forward with a bias and this activation after it; kBiasSumAct + act
// the same with the output buffer's prior contents (a residual shortcut) added before it.
enum Act { kNoAct = 0, kRelu = 1, kRelu6 = 2 };

struct Geometry {
  dims src, weights, dst, strides, pad_lo, pad_hi, dilation;  // oneDNN's logical orders
  tag weights_tag;  // XLA's HWIO buffer: hwio, or hwigo for groups (g major within O)
  auto key(int kind) const {
    return std::make_tuple(kind, src, weights, dst, strides, pad_lo, pad_hi, dilation);
  }
};

struct Prim {
  dnnl::primitive prim;
  dnnl::memory::desc weights;  // the layout the primitive reads or writes its kernel in
  dnnl::memory::desc scratchpad;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN 3 builds a primitive descriptor from the engine and the problem; oneDNN 2 from an
// operation descriptor first. Both are supported: the pip wheel is 3.x, Debian's 2.6.
dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  auto src = dnnl::memory::desc(g.src, f32, tag::nhwc);
  auto any = dnnl::memory::desc(g.weights, f32, tag::any);
  auto dst = dnnl::memory::desc(g.dst, f32, tag::nhwc);
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any, dst, g.strides, g.dilation, g.pad_lo, g.pad_hi, UserScratchpad());
#else
  auto d = dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                           dnnl::algorithm::convolution_direct, src, any, dst,
                                           g.strides, g.dilation, g.pad_lo, g.pad_hi);
  return dnnl::convolution_forward::primitive_desc(d, UserScratchpad(), Engine());
#endif
}

// The forward for inference: y = act(conv(x, kernel) + bias [+ y]), the sum and act post-ops.
dnnl::convolution_forward::primitive_desc BiasActDesc(const Geometry& g, int act, bool sum) {
  auto src = dnnl::memory::desc(g.src, f32, tag::nhwc);
  auto any = dnnl::memory::desc(g.weights, f32, tag::any);
  auto bias = dnnl::memory::desc({g.dst[1]}, f32, tag::a);
  auto dst = dnnl::memory::desc(g.dst, f32, tag::nhwc);
  auto attr = UserScratchpad();
  dnnl::post_ops ops;
  if (sum) ops.append_sum(1.f);
  if (act != kNoAct) {
    auto alg = act == kRelu ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_clip;
    float hi = act == kRelu ? 0.f : 6.f;  // relu: alpha (negative slope) 0; clip: [0, 6]
#if DNNL_VERSION_MAJOR >= 3
    ops.append_eltwise(alg, 0.f, hi);
#else
    ops.append_eltwise(1.f, alg, 0.f, hi);
#endif
  }
  if (sum || act != kNoAct) attr.set_post_ops(ops);
  constexpr auto inference = dnnl::prop_kind::forward_inference;
  constexpr auto direct = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_forward::primitive_desc(Engine(), inference, direct, src, any, bias,
                                                   dst, g.strides, g.dilation, g.pad_lo,
                                                   g.pad_hi, attr);
#else
  auto d = dnnl::convolution_forward::desc(inference, direct, src, any, bias, dst, g.strides,
                                           g.dilation, g.pad_lo, g.pad_hi);
  return dnnl::convolution_forward::primitive_desc(d, attr, Engine());
#endif
}

// The two backward primitives take the same arguments in either API.
template <typename Backward>
typename Backward::primitive_desc BackwardDesc(
    const Geometry& g, const dnnl::convolution_forward::primitive_desc& fwd) {
  auto src = dnnl::memory::desc(g.src, f32, tag::nhwc);
  auto any = dnnl::memory::desc(g.weights, f32, tag::any);
  auto dst = dnnl::memory::desc(g.dst, f32, tag::nhwc);
  constexpr auto direct = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
  return typename Backward::primitive_desc(Engine(), direct, src, any, dst, g.strides,
                                           g.dilation, g.pad_lo, g.pad_hi, fwd,
                                           UserScratchpad());
#else
  typename Backward::desc d(direct, src, any, dst, g.strides, g.dilation, g.pad_lo, g.pad_hi);
  return typename Backward::primitive_desc(d, UserScratchpad(), Engine(), fwd);
#endif
}

Prim Make(int kind, const Geometry& g) {
  if (kind >= kBiasAct) {
    bool sum = kind >= kBiasSumAct;
    auto pd = BiasActDesc(g, kind - (sum ? kBiasSumAct : kBiasAct), sum);
    return {dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc()};
  }
  auto fwd = ForwardDesc(g);
  if (kind == kForward) {
    return {dnnl::convolution_forward(fwd), fwd.weights_desc(), fwd.scratchpad_desc()};
  }
  if (kind == kInputGrad) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data>(g, fwd);
    return {dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()};
  }
  auto pd = BackwardDesc<dnnl::convolution_backward_weights>(g, fwd);
  return {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
          pd.scratchpad_desc()};
}

std::shared_ptr<const Prim> Get(int kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<decltype(g.key(0)), std::shared_ptr<const Prim>> cache;
  auto key = g.key(kind);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto made = std::make_shared<const Prim>(Make(kind, g));
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, made).first->second;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// x: (n, h, w, c) NHWC, kernel: (kh, kw, c, o) HWIO, y: (n, oh, ow, o) NHWC.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                        ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                        ffi::Span<const int64_t> dilation, int64_t groups, Geometry* g) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4 || strides.size() != 2 ||
      pad_lo.size() != 2 || pad_hi.size() != 2 || dilation.size() != 2) {
    return ffi::Error::InvalidArgument("onednn conv: expected 4-d operands, 2-d attributes");
  }
  if (groups < 1 || k[2] * groups != x[3] || k[3] != y[3] || k[3] % groups || x[0] != y[0]) {
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  }
  for (int i = 0; i < 2; ++i) {
    if (strides[i] < 1 || dilation[i] < 1 || pad_lo[i] < 0 || pad_hi[i] < 0) {
      return ffi::Error::InvalidArgument("onednn conv: strides/dilation >= 1, pads >= 0");
    }
  }
  g->src = {x[0], x[3], x[1], x[2]};
  if (groups == 1) {
    g->weights = {k[3], k[2], k[0], k[1]};
    g->weights_tag = tag::hwio;
  } else {
    g->weights = {groups, k[3] / groups, k[2], k[0], k[1]};
    g->weights_tag = tag::hwigo;
  }
  g->dst = {y[0], y[3], y[1], y[2]};
  g->strides = {strides[0], strides[1]};
  g->pad_lo = {pad_lo[0], pad_lo[1]};
  g->pad_hi = {pad_hi[0], pad_hi[1]};
  g->dilation = {dilation[0] - 1, dilation[1] - 1};  // oneDNN counts the gaps
  return ffi::Error::Success();
}

// Every oneDNN call runs on this one thread. XLA calls a handler from whichever of its pool
// threads runs the thunk, and OpenMP gives each calling thread a team of its own: with two
// pool threads on two cores, one team's worker still spun while the other team ran, and
// ResNet-20's inference step took 14.1 ms against 11.9 with passive OpenMP waiting.
class Runner {
 public:
  static Runner& Get() {
    static Runner* runner = new Runner;  // never destroyed: its thread outlives exit
    return *runner;
  }

  void Run(const std::function<void()>& fn) {
    std::packaged_task<void()> task(fn);
    auto done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(&task);
    }
    cv_.notify_one();
    done.get();  // rethrows what fn threw
  }

 private:
  Runner() { std::thread([this] { Loop(); }).detach(); }

  void Loop() {
    for (;;) {
      std::packaged_task<void()>* task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        task = queue_.front();
        queue_.pop_front();
      }
      (*task)();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>*> queue_;
};

// BENCH_ONEDNN_THREAD=0 runs each call on XLA's calling thread instead (for A/B timings).
bool OneThread() {
  static const bool one = [] {
    const char* v = std::getenv("BENCH_ONEDNN_THREAD");
    return v == nullptr || std::string(v) != "0";
  }();
  return one;
}

template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    if (OneThread()) {
      Runner::Get().Run(body);
    } else {
      body();
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// Runs a forward or input-gradient primitive: its kernel is read in `p.weights`' layout.
void RunWithKernel(const Prim& p, const Geometry& g, float* kernel, int in_arg, float* in,
                   const dims& in_dims, int out_arg, float* out, const dims& out_dims,
                   float* bias = nullptr) {
  auto& eng = Engine();
  auto& s = Stream();
  dnnl::memory hwio(dnnl::memory::desc(g.weights, f32, g.weights_tag), eng, kernel);
  dnnl::memory w = hwio;
  if (p.weights != hwio.get_desc()) {
    w = dnnl::memory(p.weights, eng);
    dnnl::reorder(hwio, w).execute(s, hwio, w);
  }
  dnnl::memory a(dnnl::memory::desc(in_dims, f32, tag::nhwc), eng, in);
  dnnl::memory b(dnnl::memory::desc(out_dims, f32, tag::nhwc), eng, out);
  dnnl::memory scratch(p.scratchpad, eng);
  std::unordered_map<int, dnnl::memory> args{
      {in_arg, a}, {DNNL_ARG_WEIGHTS, w}, {out_arg, b}, {DNNL_ARG_SCRATCHPAD, scratch}};
  if (bias != nullptr) {
    args.insert({DNNL_ARG_BIAS, dnnl::memory(dnnl::memory::desc({out_dims[1]}, f32, tag::a),
                                             eng, bias)});
  }
  p.prim.execute(s, args);
  s.wait();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                   ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), strides,
                          pad_lo, pad_hi, dilation, groups, &g);
  if (!err.success()) return err;
  return Guarded([&] {
    auto p = Get(kForward, g);
    RunWithKernel(*p, g, kernel.typed_data(), DNNL_ARG_SRC, x.typed_data(), g.src,
                  DNNL_ARG_DST, y->typed_data(), g.dst);
  });
}

// y = act(conv(x) + bias + residual): XLA aliases y to the residual's buffer
// (input_output_aliases), and oneDNN's sum post-op adds what is there.
ffi::Error BiasSumActForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                             ffi::Buffer<ffi::F32> bias, const ffi::Buffer<ffi::F32>* residual,
                             ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                             ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                             ffi::Span<const int64_t> dilation, int64_t groups, int64_t act) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), strides,
                          pad_lo, pad_hi, dilation, groups, &g);
  if (!err.success()) return err;
  if (act < kNoAct || act > kRelu6) {
    return ffi::Error::InvalidArgument("onednn conv: act is 0 (none), 1 (relu) or 2 (relu6)");
  }
  if (bias.dimensions().size() != 1 || bias.dimensions()[0] != g.dst[1]) {
    return ffi::Error::InvalidArgument("onednn conv: bias must have one value per output");
  }
  if (residual != nullptr) {
    auto r = residual->dimensions();
    auto o = y->dimensions();
    if (r.size() != o.size() || !std::equal(r.begin(), r.end(), o.begin())) {
      return ffi::Error::InvalidArgument("onednn conv: the residual must have the output's shape");
    }
    if (residual->typed_data() != y->typed_data()) {  // not aliased: copy it in first
      std::memcpy(y->typed_data(), residual->typed_data(), y->size_bytes());
    }
  }
  int kind = (residual != nullptr ? kBiasSumAct : kBiasAct) + static_cast<int>(act);
  return Guarded([&] {
    auto p = Get(kind, g);
    RunWithKernel(*p, g, kernel.typed_data(), DNNL_ARG_SRC, x.typed_data(), g.src,
                  DNNL_ARG_DST, y->typed_data(), g.dst, bias.typed_data());
  });
}

ffi::Error BiasActForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                          ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                          ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation,
                          int64_t groups, int64_t act) {
  return BiasSumActForward(x, kernel, bias, nullptr, y, strides, pad_lo, pad_hi, dilation,
                           groups, act);
}

ffi::Error BiasSumActHandler(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> residual,
                             ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                             ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                             ffi::Span<const int64_t> dilation, int64_t groups, int64_t act) {
  return BiasSumActForward(x, kernel, bias, &residual, y, strides, pad_lo, pad_hi, dilation,
                           groups, act);
}

ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                     ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                     ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  auto err = MakeGeometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), strides,
                          pad_lo, pad_hi, dilation, groups, &g);
  if (!err.success()) return err;
  return Guarded([&] {
    auto p = Get(kInputGrad, g);
    RunWithKernel(*p, g, kernel.typed_data(), DNNL_ARG_DIFF_DST, dy.typed_data(), g.dst,
                  DNNL_ARG_DIFF_SRC, dx->typed_data(), g.src);
  });
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                      ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(), strides, pad_lo,
                          pad_hi, dilation, groups, &g);
  if (!err.success()) return err;
  return Guarded([&] {
    auto p = Get(kKernelGrad, g);
    auto& eng = Engine();
    auto& s = Stream();
    dnnl::memory src(dnnl::memory::desc(g.src, f32, tag::nhwc), eng, x.typed_data());
    dnnl::memory diff_dst(dnnl::memory::desc(g.dst, f32, tag::nhwc), eng, dy.typed_data());
    dnnl::memory hwio(dnnl::memory::desc(g.weights, f32, g.weights_tag), eng, dk->typed_data());
    dnnl::memory dw = hwio;
    bool reorder = p->weights != hwio.get_desc();
    if (reorder) dw = dnnl::memory(p->weights, eng);
    dnnl::memory scratch(p->scratchpad, eng);
    p->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                        {DNNL_ARG_DIFF_WEIGHTS, dw}, {DNNL_ARG_SCRATCHPAD, scratch}});
    if (reorder) dnnl::reorder(dw, hwio).execute(s, dw, hwio);
    s.wait();
  });
}

}  // namespace

#define BENCH_CONV_ATTRS                                     \
  .Attr<ffi::Span<const int64_t>>("strides")                \
      .Attr<ffi::Span<const int64_t>>("pad_lo")             \
      .Attr<ffi::Span<const int64_t>>("pad_hi")             \
      .Attr<ffi::Span<const int64_t>>("dilation")           \
      .Attr<int64_t>("groups")

#define BENCH_CONV_BINDING                                   \
  ffi::Ffi::Bind()                                          \
      .Arg<ffi::Buffer<ffi::F32>>()                         \
      .Arg<ffi::Buffer<ffi::F32>>()                         \
      .Ret<ffi::Buffer<ffi::F32>>() BENCH_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchOnednnConvForward, Forward, BENCH_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchOnednnConvInputGrad, InputGrad, BENCH_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchOnednnConvKernelGrad, KernelGrad, BENCH_CONV_BINDING);

// The inference forward's two handlers: (x, kernel, bias) and (x, kernel, bias, residual).
XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchOnednnConvBiasAct, BiasActForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() BENCH_CONV_ATTRS
                                  .Attr<int64_t>("act"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchOnednnConvBiasSumAct, BiasSumActHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() BENCH_CONV_ATTRS
                                  .Attr<int64_t>("act"));

extern "C" const char* BenchOnednnVersion() {
  static std::string v = [] {
    auto* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch);
  }();
  return v.c_str();
}
