#include "core/objective.h"

#include <torch/nn/functional/loss.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/util.h"

namespace ttq {
namespace {

bool is_index(const std::string& s) {
  return !s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string::npos;
}

std::string describe(const std::vector<torch::Tensor>& tensors) {
  std::string out;
  for (const auto& t : tensors) out += (out.empty() ? "" : ", ") + bracketed_shape(t.sizes().vec());
  return out;
}

// What a model returns, in Python's words.
std::string kind_of(const c10::IValue& v) {
  if (v.isTensor()) return "tensor";
  if (v.isTuple()) return "tuple";
  if (v.isList()) return "list";
  if (v.isGenericDict()) return "dict";
  return v.tagKind();
}

void check_outputs_finite(bool finite, const char* whose) {
  if (!finite)
    throw input_error(fmt::format("{} outputs are not finite (NaN or Inf): check the inputs (--mean/--std, the "
                                  "data) and the model's weights", whose));
}

}  // namespace

bool all_finite(const std::vector<torch::Tensor>& outputs) {
  for (const auto& t : outputs)
    if (!torch::isfinite(t).all().item<bool>()) return false;
  return true;
}

void compare_outputs(const std::vector<torch::Tensor>& student, const std::vector<torch::Tensor>& target, Metrics& m) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < student.size(); ++i) {
    const auto s = student[i].detach().to(torch::kFloat64), t = target[i].to(torch::kFloat64);
    m.sq_err += (s - t).pow(2).sum().item<double>();
    m.t_sum += t.sum().item<double>();
    m.t_sq += t.pow(2).sum().item<double>();
    m.t_count += static_cast<double>(t.numel());
  }
  // Top-1 agreement where the one compared output holds class scores (the last dimension).
  if (student.size() == 1 && student[0].dim() >= 2 && student[0].size(-1) >= 2) {
    m.agree += student[0].argmax(-1).eq(target[0].argmax(-1)).sum().item<double>();
    m.positions += static_cast<double>(student[0].numel() / student[0].size(-1));
  }
}

ObjectiveOptions resolve(ObjectiveOptions o, bool labeled) {
  if (!(o.temperature > 0)) throw usage_error("--distill-temperature must be positive");
  if (o.alpha > 1) throw usage_error("--distill-alpha must be in [0, 1]");
  if (!o.distilling()) {
    o.alpha = 0;
    return o;
  }
  if (o.loss == DistillLoss::Auto) o.loss = labeled ? DistillLoss::Kl : DistillLoss::Mse;
  if (o.alpha < 0) o.alpha = labeled ? 0.5 : 1.0;
  if (!labeled && o.alpha != 1) throw usage_error("--distill-alpha below 1 weights cross-entropy on labels; the data has none");
  return o;
}

std::vector<double> Metrics::sums() const {
  return {loss, ce, distill, top1, top5, static_cast<double>(samples), static_cast<double>(labeled),
          agree, positions, sq_err, t_sum, t_sq, t_count, nonfinite};
}

// Shorter vectors (checkpoints written before a sum was added) read the missing sums as 0.
Metrics Metrics::from_sums(const std::vector<double>& v, int64_t outputs) {
  std::vector<double> s(14, 0.0);
  std::copy_n(v.begin(), std::min(v.size(), s.size()), s.begin());
  Metrics m;
  m.loss = s[0], m.ce = s[1], m.distill = s[2], m.top1 = s[3], m.top5 = s[4];
  m.samples = std::llround(s[5]), m.labeled = std::llround(s[6]);
  m.agree = s[7], m.positions = s[8], m.sq_err = s[9], m.t_sum = s[10], m.t_sq = s[11], m.t_count = s[12];
  m.nonfinite = s[13];
  m.outputs = outputs;
  return m;
}

Metrics& Metrics::operator+=(const Metrics& o) {
  const auto a = sums(), b = o.sums();
  std::vector<double> s(a.size());
  for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
  *this = from_sums(s, std::max(outputs, o.outputs));
  return *this;
}

Metrics averaged(Metrics m) {
  if (m.samples) m.loss /= m.samples, m.ce /= m.samples, m.distill /= m.samples;
  if (m.labeled) m.top1 /= m.labeled, m.top5 /= m.labeled;
  if (m.positions > 0) m.agreement = m.agree / m.positions;
  if (m.t_count > 0) {
    const double spread = m.t_sq - m.t_sum * m.t_sum / m.t_count;
    m.rel_mse = m.sq_err / std::max(spread, 1e-30);
  }
  return m;
}

std::vector<MetricValue> measured_metrics(const Metrics& m, bool terms) {
  std::vector<MetricValue> out{{"loss", m.loss, false, true}};
  if (m.has_labels()) out.push_back({"top1", m.top1, true, true}), out.push_back({"top5", m.top5, true, false});
  if (terms && m.distill != 0) {
    if (m.has_labels()) out.push_back({"ce", m.ce, false, true});
    out.push_back({"distill", m.distill, false, true});
  }
  if (m.agreement) out.push_back({"agreement", *m.agreement, true, false});
  if (m.rel_mse) out.push_back({"rel_mse", *m.rel_mse, false, false});
  if (m.nonfinite > 0) out.push_back({"nonfinite", m.nonfinite / (m.nonfinite + m.samples), true, true});
  return out;
}

const char* validation_metric(const Metrics& m) {
  return m.has_labels() ? "top1" : m.agreement ? "agreement" : m.rel_mse ? "rel_mse" : "loss";
}

double validation_score(const Metrics& m) {
  if (m.nonfinite > 0) return -std::numeric_limits<double>::infinity();
  if (m.has_labels()) return m.top1;
  if (m.agreement) return *m.agreement;
  return m.rel_mse ? -*m.rel_mse : -m.loss;
}

bool is_fraction(const std::string& metric) {
  Metrics every;  // a split that measured every row
  every.labeled = 1, every.distill = 1, every.agreement = 0, every.rel_mse = 0;
  for (const auto& row : measured_metrics(every, true))
    for (const char* prefix : {"", "train_", "val_"})
      if (metric == prefix + std::string(row.name)) return row.fraction;
  return false;
}

std::string describe_score(const char* metric, double score) {
  if (std::isinf(score)) return "val outputs not finite";
  return fmt::format("val {} {}", std::string(metric) == "top1" ? "top-1" : metric,
                     is_fraction(metric) ? fmt::format("{:.2f}%", 100 * score) : fmt::format("{:.4g}", -score));
}

namespace {

// Under --precision bf16 the last matrix product returns bfloat16: losses and metrics are float32,
// as autocast's own float32 list computes them.
torch::Tensor as_float32(const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16 ? t.to(torch::kFloat) : t; }

}  // namespace

std::vector<torch::Tensor> output_tensors(const c10::IValue& output, const std::string& select) {
  std::vector<std::pair<std::string, c10::IValue>> items;  // (key or index, value)
  if (output.isTuple() || output.isList()) {
    const auto elements = output.isTuple() ? output.toTupleRef().elements().vec() : output.toListRef().vec();
    for (size_t i = 0; i < elements.size(); ++i) items.emplace_back(std::to_string(i), elements[i]);
  } else if (output.isGenericDict()) {
    for (const auto& kv : output.toGenericDict())
      if (kv.key().isString()) items.emplace_back(kv.key().toStringRef(), kv.value());
  } else {
    items.emplace_back("0", output);
  }
  const auto floating = [](const c10::IValue& v) { return v.isTensor() && v.toTensor().is_floating_point(); };
  std::vector<torch::Tensor> out;
  if (!select.empty()) {
    for (const auto& [key, value] : items) {
      if (key != select) continue;
      if (!floating(value))
        throw input_error(fmt::format("--model-output {}: the model's output there is a {}, not a floating tensor", select,
                                      value.isTensor() ? "tensor of integers" : kind_of(value)));
      return {as_float32(value.toTensor())};
    }
    throw input_error(fmt::format("--model-output {}: the model's output ({}) has no {} {}", select, kind_of(output),
                                  is_index(select) ? "element" : "key", select));
  }
  for (const auto& item : items)
    if (floating(item.second)) out.push_back(as_float32(item.second.toTensor()));
  if (out.empty())
    throw input_error(fmt::format("the model returns a {} without floating tensors: ttq trains and compares "
                                  "floating outputs (tensors, tuples or dicts of them)", kind_of(output)));
  return out;
}

torch::Tensor classifier_scores(const std::vector<torch::Tensor>& outputs) {
  if (outputs.size() != 1)
    throw input_error(fmt::format("the model returns {} floating tensors ({}): name the one with class scores "
                                  "with --model-output KEY|INDEX", outputs.size(), describe(outputs)));
  const torch::Tensor& t = outputs.front();
  if (t.dim() != 2)
    throw input_error(fmt::format("the model's output has shape {}; labels need class scores of shape "
                                  "[batch, classes] (without labels, use --distill)", bracketed_shape(t.sizes().vec())));
  return t;
}

void check_labels(const torch::Tensor& labels, int64_t classes) {
  if (labels.numel() == 0) return;
  const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  if (lo < 0) throw input_error(fmt::format("label {} is negative: labels are class indices 0..{}", lo, classes - 1));
  if (hi >= classes)
    throw input_error(fmt::format("label {} is out of range for the model's {} outputs", hi, classes));
}

c10::IValue run_model(torch::jit::Module& module, const std::vector<torch::Tensor>& inputs) {
  try {
    return module.forward(std::vector<c10::IValue>(inputs.begin(), inputs.end()));
  } catch (const std::exception& e) {  // c10::Error, or the TorchScript interpreter's JITException
    throw input_error(fmt::format("the model rejects inputs of shape {}: {}", describe(inputs), short_message(e.what())));
  }
}

Objective::Objective(ObjectiveOptions options, std::optional<torch::jit::Module> teacher)
    : options_(std::move(options)), teacher_(std::move(teacher)) {
  if (teacher_) teacher_->eval();
}

torch::Tensor Objective::distillation(const std::vector<torch::Tensor>& student,
                                      const std::vector<torch::Tensor>& teacher) const {
  if (student.size() != teacher.size())
    throw input_error(fmt::format("the teacher returns {} floating tensors ({}), the model {} ({})", teacher.size(),
                                  describe(teacher), student.size(), describe(student)));
  torch::Tensor total = torch::zeros({}, student.front().options());
  for (size_t i = 0; i < student.size(); ++i) {
    const auto& s = student[i];
    const auto t = teacher[i].to(s.scalar_type());
    if (s.sizes() != t.sizes())
      throw input_error(fmt::format("the teacher's output has shape {}, the model's {}: distillation needs the same "
                                    "outputs (--model-output picks one)", bracketed_shape(t.sizes().vec()),
                                    bracketed_shape(s.sizes().vec())));
    if (options_.loss == DistillLoss::Kl) {
      const double temp = options_.temperature;
      const int64_t classes = s.size(-1);
      const auto log_ps = torch::log_softmax(s.reshape({-1, classes}) / temp, 1);
      const auto log_pt = torch::log_softmax(t.reshape({-1, classes}) / temp, 1);
      total = total + (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * (temp * temp);
    } else {
      total = total + (s - t).pow(2).mean();
    }
  }
  return total / static_cast<double>(student.size());
}

torch::Tensor Objective::operator()(const c10::IValue& output, const std::vector<torch::Tensor>& inputs,
                                    const torch::Tensor& labels, Metrics& m, bool compare) const {
  const auto student = output_tensors(output, options_.output);
  const auto n = static_cast<double>(inputs.front().size(0));
  torch::Tensor ce, kd;
  if (labels.defined()) {
    const auto scores = classifier_scores(student);
    check_labels(labels, scores.size(1));
    ce = torch::nn::functional::cross_entropy(scores, labels);
    torch::NoGradGuard no_grad;
    const auto topk = std::get<1>(scores.topk(std::min<int64_t>(5, scores.size(1)), 1));
    const auto hits = topk.eq(labels.unsqueeze(1));
    m.top1 += hits.select(1, 0).sum().item<double>();
    m.top5 += hits.any(1).sum().item<double>();
    m.ce += ce.item<double>() * n;
    m.labeled += labels.size(0);
    m.outputs = scores.size(1);
  }
  if (teacher_) {
    std::vector<torch::Tensor> target;
    {
      torch::NoGradGuard no_grad;
      target = output_tensors(run_model(*teacher_, inputs), options_.output);
    }
    check_outputs_finite(all_finite(target), "the teacher's");
    kd = distillation(student, target);
    torch::NoGradGuard no_grad;
    m.distill += kd.item<double>() * n;
    if (compare) compare_outputs(student, target, m);
  }
  torch::Tensor loss;
  if (ce.defined() && kd.defined())
    loss = ce * (1 - options_.alpha) + kd * options_.alpha;
  else
    loss = ce.defined() ? ce : kd;
  if (!loss.defined()) throw usage_error("the data has no labels: compare with a teacher (--distill or --teacher FILE)");
  m.loss += loss.item<double>() * n;
  m.samples += inputs.front().size(0);
  return loss;
}

Metrics evaluate_sums(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                      const Objective& objective, int64_t batch_size, int shard, int shards) {
  torch::NoGradGuard no_grad;
  const bool was_training = module.is_training();
  module.train(false);
  Metrics m;
  for (int64_t start = shard * batch_size; start < data.size(); start += shards * batch_size) {
    const auto idx = torch::arange(start, std::min(start + batch_size, data.size()), torch::kInt64);
    const auto inputs = prepare_inputs(data, idx, pre);
    const auto labels = data.labeled() ? data.labels.index_select(0, idx) : torch::Tensor();
    const c10::IValue output = run_model(module, inputs);
    if (all_finite(output_tensors(output, objective.options().output)))
      objective(output, inputs, labels, m);
    else
      m.nonfinite += static_cast<double>(idx.size(0));
  }
  module.train(was_training);
  return m;
}

Metrics evaluate_module(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                        const Objective& objective, int64_t batch_size) {
  const Metrics m = evaluate_sums(module, data, pre, objective, batch_size);
  require_finite_outputs(m);
  return averaged(m);
}

void require_finite_outputs(const Metrics& m) { check_outputs_finite(m.nonfinite == 0, "the model's"); }

}  // namespace ttq
