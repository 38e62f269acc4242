// The float path's ternary convolution on oneDNN directly, its weight decoded from the 2-bit codes
// straight into the blocked layout oneDNN's kernel reads. aten::conv2d hands oneDNN a plain weight,
// which oneDNN reorders on every call: at batch 1 that reorder is about 40% of a 512-channel 3x3
// layer (0.35 of 0.88 ms under ONEDNN_VERBOSE), several times what decoding the codes costs.
// Built where LibTorch links the system's oneDNN (Debian's libdnnl; TTQ_ONEDNN in CMakeLists.txt),
// so that both use one library; elsewhere, and for what this way does not take (groups, a layout
// the decoder cannot write), the caller runs aten::conv2d on the decoded weight.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/ops/ops_internal.h"

#if TTQ_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#endif

namespace ttq::ops {

#if !TTQ_ONEDNN
at::Tensor conv2d_onednn(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                         const c10::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef) {
  return {};
}
#else
namespace {

using dnnl::memory;

dnnl::engine& cpu() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A blocked layout as oneDNN describes it (dnnl_blocking_desc_t): each dimension's outer index
// (its index over its blocks' size) times its stride, plus the inner blocks' digits, the last
// innermost. `usable` is false for anything else (a format the decoder cannot write).
struct Blocking {
  bool usable = false;
  memory::dims dims, padded, strides, blks, idxs;
};

Blocking blocking_of(const memory::desc& md) {
  Blocking b;
#if DNNL_VERSION_MAJOR >= 3
  if (md.get_format_kind() != memory::format_kind::blocked || md.get_ndims() != 4) return b;
  b = {true, md.get_dims(), md.get_padded_dims(), md.get_strides(), md.get_inner_blks(), md.get_inner_idxs()};
#else
  const dnnl_memory_desc_t& d = md.data;
  if (d.format_kind != dnnl_blocked || d.ndims != 4 || d.offset0 != 0 || d.extra.flags != 0) return b;
  const auto& k = d.format_desc.blocking;
  b = {true, {d.dims, d.dims + 4}, {d.padded_dims, d.padded_dims + 4}, {k.strides, k.strides + 4},
       {k.inner_blks, k.inner_blks + k.inner_nblks}, {k.inner_idxs, k.inner_idxs + k.inner_nblks}};
#endif
  return b;
}

// Where index x of dimension d lies, for x < count: the part of the offset that x alone decides.
std::vector<int64_t> offsets_along(const Blocking& b, int d, int64_t count) {
  int64_t block = 1;
  for (size_t j = 0; j < b.blks.size(); ++j)
    if (b.idxs[j] == d) block *= b.blks[j];
  std::vector<int64_t> at(static_cast<size_t>(count));
  for (int64_t x = 0; x < count; ++x) {
    int64_t offset = x / block * b.strides[d], inner = 1, digit = 1;
    for (size_t j = b.blks.size(); j-- > 0;) {
      if (b.idxs[j] == d) {
        offset += x / digit % b.blks[j] * inner;
        digit *= b.blks[j];
      }
      inner *= b.blks[j];
    }
    at[static_cast<size_t>(x)] = offset;
  }
  return at;
}

// A layer's convolution as oneDNN runs it for one input size, layout and thread count: the
// primitive, the reorders of a plain (NCHW) input and output to and from the blocked ones it
// chose, and where each weight goes in its blocked weight (row_at[o] + k_at[j], j = (i, h, w)).
struct Plan {
  bool usable = false;
  dnnl::convolution_forward conv;
  memory::desc src, dst, user_src, user_dst, weights, scratchpad;
  dnnl::reorder to_src, from_dst;
  std::vector<int64_t> row_at, k_at;
  bool padded = false;  // the blocked weight has room past the layer's channels, zero
};

struct Layer {
  memory::dims src, weights, dst, stride, dilation, padding;
  bool channels_last, bias;
};

dnnl::convolution_forward::primitive_desc convolution(const Layer& l, const memory::desc& src, const memory::desc& dst) {
  using dt = memory::data_type;
  const memory::desc weights(l.weights, dt::f32, memory::format_tag::any);
  const memory::desc bias = l.bias ? memory::desc({l.weights[0]}, dt::f32, memory::format_tag::x) : memory::desc();
  // forward_training, as ATen asks: for NCHW it picks kernels on 16-channel blocks, whose reorders
  // from and to NCHW are cheap, where forward_inference picks NHWC (half as fast to reorder).
  const auto prop = dnnl::prop_kind::forward_training;
  const auto direct = dnnl::algorithm::convolution_direct;
  // The scratchpad the caller gives (a buffer each thread keeps), as ATen's calls do: the library's
  // own may be allocated on every call.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR >= 3
  return {cpu(), prop, direct, src, weights, bias, dst, l.stride, l.dilation, l.padding, l.padding, attr};
#else
  return {{prop, direct, src, weights, bias, dst, l.stride, l.dilation, l.padding, l.padding}, attr, cpu()};
#endif
}

std::shared_ptr<const Plan> make_plan(const Layer& l) {
  using dt = memory::data_type;
  auto plan = std::make_shared<Plan>();
  const auto tag = l.channels_last ? memory::format_tag::nhwc : memory::format_tag::nchw;
  plan->user_src = memory::desc(l.src, dt::f32, tag);
  plan->user_dst = memory::desc(l.dst, dt::f32, tag);
  // Channels-last as it is (oneDNN's kernels read NHWC); NCHW in the layout oneDNN picks, as ATen
  // does: its kernels for plain NCHW are its slow ones.
  const auto any = memory::format_tag::any;
  const auto pd = l.channels_last ? convolution(l, plan->user_src, plan->user_dst)
                                  : convolution(l, memory::desc(l.src, dt::f32, any), memory::desc(l.dst, dt::f32, any));
  plan->weights = pd.weights_desc();
  const Blocking b = blocking_of(plan->weights);
  if (!b.usable) return plan;
  const int64_t rows = l.weights[0], cin = l.weights[1], kh = l.weights[2], kw = l.weights[3];
  plan->row_at = offsets_along(b, 0, rows);
  const auto at_i = offsets_along(b, 1, cin), at_h = offsets_along(b, 2, kh), at_w = offsets_along(b, 3, kw);
  plan->k_at.resize(static_cast<size_t>(cin * kh * kw));
  for (int64_t i = 0, j = 0; i < cin; ++i)
    for (int64_t h = 0; h < kh; ++h)
      for (int64_t w = 0; w < kw; ++w, ++j) plan->k_at[static_cast<size_t>(j)] = at_i[i] + at_h[h] + at_w[w];
  plan->padded = b.padded != b.dims;
  plan->conv = dnnl::convolution_forward(pd);
  plan->scratchpad = pd.scratchpad_desc();
  plan->src = pd.src_desc();
  plan->dst = pd.dst_desc();
  if (plan->src != plan->user_src) plan->to_src = dnnl::reorder({cpu(), plan->user_src, cpu(), plan->src});
  if (plan->dst != plan->user_dst) plan->from_dst = dnnl::reorder({cpu(), plan->dst, cpu(), plan->user_dst});
  plan->usable = true;
  return plan;
}

// The plan for this layer, made on its first call (oneDNN compiles its kernels then) and kept; a
// model fed ever new input sizes has them all made again past kMaxPlans. The thread count is part
// of the key: oneDNN sizes a primitive's work for the threads it is made for.
constexpr size_t kMaxPlans = 1024;

std::shared_ptr<const Plan> plan_for(const Layer& l) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::shared_ptr<const Plan>> plans;
  std::vector<int64_t> key{l.channels_last, l.bias, at::get_num_threads()};
  for (const auto* dims : {&l.src, &l.weights, &l.stride, &l.dilation, &l.padding})
    key.insert(key.end(), dims->begin(), dims->end());
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = plans.find(key); found != plans.end()) return found->second;
  if (plans.size() >= kMaxPlans) plans.clear();  // the callers running one still hold it
  std::shared_ptr<const Plan> plan;
  try {
    plan = make_plan(l);
  } catch (const dnnl::error&) {
    plan = std::make_shared<const Plan>();  // not usable: aten::conv2d takes the layer
  }
  return plans[key] = plan;
}

// A buffer for a blocked tensor of a call (oneDNN's input, output or scratchpad), from LibTorch's
// allocator, as aten::conv2d's are.
memory call_buffer(const memory::desc& desc, std::vector<at::Tensor>& held) {
  held.push_back(at::empty({static_cast<int64_t>(desc.get_size()) + 1}, at::kByte));
  return memory(desc, cpu(), held.back().data_ptr());
}

// The layer's geometry as oneDNN takes it, or nothing where aten::conv2d should take the call (and
// say what is wrong with it, if anything).
c10::optional<Layer> layer_of(const at::Tensor& input, c10::IntArrayRef shape, bool bias, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  if (input.dim() != 4 || input.size(0) == 0 || input.size(1) != shape[1] || stride.size() != 2 ||
      padding.size() != 2 || dilation.size() != 2)
    return c10::nullopt;
  int64_t out[2];
  for (int d = 0; d < 2; ++d) {
    if (stride[d] <= 0 || dilation[d] <= 0 || padding[d] < 0) return c10::nullopt;
    out[d] = (input.size(2 + d) + 2 * padding[d] - dilation[d] * (shape[2 + d] - 1) - 1) / stride[d] + 1;
    if (out[d] <= 0) return c10::nullopt;
  }
  const int64_t batch = input.size(0);
  return Layer{{batch, shape[1], input.size(2), input.size(3)},
               {shape[0], shape[1], shape[2], shape[3]},
               {batch, shape[0], out[0], out[1]},
               {stride[0], stride[1]},
               {dilation[0] - 1, dilation[1] - 1},
               {padding[0], padding[1]},
               input.suggest_memory_format() == at::MemoryFormat::ChannelsLast,
               bias};
}

// The layer's weight in the plan's blocked layout, in this thread's scratch for decoded weights
// (ops.cpp's), decoded by all threads.
float* blocked_weight(const Plan& plan, const at::Tensor& codes, const at::Tensor& scales, int64_t rows, int64_t k,
                      KernelPath path) {
  float* weights = weight_scratch(static_cast<int64_t>(plan.weights.get_size() / sizeof(float))).data_ptr<float>();
  if (plan.padded) std::memset(weights, 0, plan.weights.get_size());
  const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
  const float wp = scale(scales, 0), wn = scale(scales, 1);
  at::parallel_for(0, (rows + 31) / 32, 1, [&](int64_t a, int64_t b) {
    ternary_decode_scattered(path, planes, (k + 31) / 32, k, wp, wn, a * 32, std::min(rows, b * 32),
                             plan.row_at.data(), plan.k_at.data(), weights);
  });
  return weights;
}

}  // namespace

at::Tensor conv2d_onednn(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                         c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const bool with_bias = bias && bias->defined();
  // Without AVX2 the decode runs a value at a time: slower than a plain decode and oneDNN's reorder.
  const KernelPath path = selected_path();
  if (path == KernelPath::Portable || (with_bias && bias->scalar_type() != at::kFloat)) return {};
  const auto layer = layer_of(input, shape, with_bias, stride, padding, dilation);
  if (!layer) return {};
  const auto found = plan_for(*layer);
  const Plan& plan = *found;
  if (!plan.usable) return {};
  float* weights = blocked_weight(plan, codes, scales, shape[0], shape[1] * shape[2] * shape[3], path);

  const auto format = layer->channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto x = input.contiguous(format);
  auto y = at::empty(layer->dst, at::TensorOptions(at::kFloat).memory_format(format));
  const auto b = with_bias ? bias->contiguous() : at::Tensor();
  std::vector<at::Tensor> held;
  dnnl::stream stream(cpu());
  memory user_src(plan.user_src, cpu(), x.data_ptr<float>()), user_dst(plan.user_dst, cpu(), y.data_ptr<float>());
  memory src = plan.src == plan.user_src ? user_src : call_buffer(plan.src, held);
  memory dst = plan.dst == plan.user_dst ? user_dst : call_buffer(plan.dst, held);
  if (plan.src != plan.user_src) plan.to_src.execute(stream, user_src, src);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                       {DNNL_ARG_WEIGHTS, memory(plan.weights, cpu(), weights)},
                                       {DNNL_ARG_DST, dst},
                                       {DNNL_ARG_SCRATCHPAD, call_buffer(plan.scratchpad, held)}};
  if (with_bias)
    args.emplace(DNNL_ARG_BIAS, memory({{shape[0]}, memory::data_type::f32, memory::format_tag::x}, cpu(), b.data_ptr<float>()));
  plan.conv.execute(stream, args);
  if (plan.dst != plan.user_dst) plan.from_dst.execute(stream, dst, user_dst);
  stream.wait();
  return y;
}
#endif

}  // namespace ttq::ops
