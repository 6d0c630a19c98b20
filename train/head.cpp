#include "train/head.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace lookalike::train::detail {
namespace fs = std::filesystem;

namespace {

// torch.nn.Linear's default initialisation (uniform in +-1/sqrt(fan_in)), drawn from the global
// generator that train_model seeds.
std::pair<torch::Tensor, torch::Tensor> linear(int in, int out) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  auto w = (torch::rand({out, in}) * 2 - 1) * bound;
  auto b = (torch::rand({out}) * 2 - 1) * bound;
  return {w.requires_grad_(true), b.requires_grad_(true)};
}

// Euclidean distances between unit rows; the clamp keeps sqrt's gradient finite at 0.
torch::Tensor pairwise_distances(const torch::Tensor& e) {
  return (2 - 2 * e.mm(e.t())).clamp_min(1e-12).sqrt();
}

}  // namespace

Head init_head(const std::string& kind, int in, int hidden, int out) {
  Head h{kind, {}};
  if (kind == "mlp") {
    auto [w0, b0] = linear(in, hidden);
    auto [w1, b1] = linear(hidden, out);
    h.params = {w0, b0, w1, b1};
  } else {
    auto [w0, b0] = linear(in, out);
    h.params = {w0, b0};
  }
  return h;
}

// The same arithmetic as the archive's TorchScript (save_archive), so training and inference
// agree to the last bit on the same thread count.
torch::Tensor l2_normalize(const torch::Tensor& x) {
  return x / torch::sqrt(torch::sum(x * x, {1}, true)).clamp_min(1e-12);
}

torch::Tensor apply_head(const Head& head, const torch::Tensor& base_embeddings) {
  auto y = torch::addmm(head.params[1], l2_normalize(base_embeddings), head.params[0].t());
  if (head.kind == "mlp") y = torch::addmm(head.params[3], torch::relu(y), head.params[2].t());
  return l2_normalize(y);
}

torch::Tensor batch_hard_loss(const torch::Tensor& e, const torch::Tensor& labels, double margin,
                              double* active) {
  const auto d = pairwise_distances(e);
  const auto same = labels.unsqueeze(0) == labels.unsqueeze(1);
  const auto eye = torch::eye(e.size(0), torch::kBool);
  const auto hardest_pos = (d * (same & ~eye).to(torch::kFloat32)).amax(1);
  const auto hardest_neg = d.masked_fill(same, std::numeric_limits<float>::infinity()).amin(1);
  const auto l = torch::relu(hardest_pos - hardest_neg + margin);
  *active = (l > 0).to(torch::kFloat64).mean().item<double>();
  return l.mean();
}

// FaceNet's semi-hard negative for each (anchor, positive): the closest negative farther than
// the positive; when there is none, the farthest negative (as TensorFlow Addons'
// triplet_semihard_loss does). Loss averaged over all positive pairs.
torch::Tensor semi_hard_loss(const torch::Tensor& e, const torch::Tensor& labels, double margin,
                             double* active) {
  const float inf = std::numeric_limits<float>::infinity();
  const auto d = pairwise_distances(e);
  const auto same = labels.unsqueeze(0) == labels.unsqueeze(1);
  const auto pos = same & ~torch::eye(e.size(0), torch::kBool);
  const auto d_ap = d.unsqueeze(2);  // [a, p, 1]
  const auto d_an = d.unsqueeze(1);  // [a, 1, n]
  const auto neg = (~same).unsqueeze(1);
  const auto outside = neg & (d_an > d_ap);
  const auto closest_outside = d_an.masked_fill(~outside, inf).amin(2);  // [a, p]
  const auto farthest = d.masked_fill(same, -inf).amax(1, true).expand_as(d);
  const auto chosen = torch::where(outside.any(2), closest_outside, farthest);
  const auto l = torch::relu(d - chosen + margin).masked_select(pos);
  *active = (l > 0).to(torch::kFloat64).mean().item<double>();
  return l.mean();
}

double triplet_step(torch::optim::Optimizer& optimizer, const torch::Tensor& e,
                    const torch::Tensor& labels, const std::string& mining, double margin,
                    double* active) {
  auto loss = mining == "semi-hard" ? semi_hard_loss(e, labels, margin, active)
                                    : batch_hard_loss(e, labels, margin, active);
  optimizer.zero_grad();
  loss.backward();
  optimizer.step();
  return loss.item<double>();
}

double leave_one_out_recall_at_1(const torch::Tensor& all, const std::vector<std::int64_t>& labels,
                                 std::int64_t n_labels, const std::vector<std::int64_t>& val) {
  if (val.empty()) return -1;
  torch::NoGradGuard no_grad;
  const auto q_idx = torch::tensor(val, torch::kInt64);
  auto sims = all.index_select(0, q_idx).mm(all.t());
  sims.index_put_({torch::arange(q_idx.size(0)), q_idx}, -std::numeric_limits<float>::infinity());
  const auto best = sims.argmax(1);
  std::vector<std::int64_t> count(n_labels, 0);
  for (auto l : labels) ++count[l];
  std::int64_t hits = 0, queries = 0;
  const auto* b = best.data_ptr<std::int64_t>();
  for (std::size_t k = 0; k < val.size(); ++k) {
    const auto label = labels[val[k]];
    if (count[label] < 2) continue;
    ++queries;
    hits += labels[b[k]] == label;
  }
  return queries ? static_cast<double>(hits) / queries : -1;
}

std::vector<std::vector<std::int64_t>> batch_pool(const std::vector<std::int64_t>& labels,
                                                  const std::vector<std::int64_t>& train) {
  std::map<std::int64_t, std::vector<std::int64_t>> members;
  for (auto i : train) members[labels[i]].push_back(i);
  std::vector<std::vector<std::int64_t>> pool;
  for (auto& [label, m] : members)
    if (m.size() >= 2) pool.push_back(m);
  return pool;
}

std::vector<std::int64_t> sample_batch(const std::vector<std::vector<std::int64_t>>& pool, int p,
                                       int k, std::mt19937_64& rng) {
  std::vector<std::size_t> order(pool.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::int64_t> batch;
  for (int i = 0; i < p && i < static_cast<int>(order.size()); ++i) {
    auto members = pool[order[i]];
    std::shuffle(members.begin(), members.end(), rng);
    for (int j = 0; j < k; ++j) batch.push_back(members[j % members.size()]);
  }
  return batch;
}

void save_archive(const fs::path& base, const std::string& base_method, const Head& head,
                  const fs::path& out) {
  torch::jit::Module m("LookalikeTrained");
  m.register_module("base", torch::jit::load(base.string(), torch::kCPU));
  for (std::size_t i = 0; i < head.params.size(); ++i) {
    const std::string name = (i % 2 ? "b" : "w") + std::to_string(i / 2);
    m.register_parameter(name, head.params[i].detach().clone(), false);
  }
  const std::string norm = " / torch.clamp_min(torch.sqrt(torch.sum({0} * {0}, [1], True)), 1e-12)";
  auto normalize = [&](const std::string& v) {
    std::string s = norm;
    for (std::size_t p; (p = s.find("{0}")) != std::string::npos;) s.replace(p, 3, v);
    return v + s;
  };
  std::string src = "def head(self, x: Tensor) -> Tensor:\n";
  src += "    x = " + normalize("x") + "\n";
  src += "    y = torch.addmm(self.b0, x, self.w0.t())\n";
  if (head.kind == "mlp") src += "    y = torch.addmm(self.b1, torch.relu(y), self.w1.t())\n";
  src += "    return " + normalize("y") + "\n";
  src += "def forward(self, images: Tensor) -> Tensor:\n";
  src += "    return self.head(self.base." + base_method + "(images))\n";
  m.define(src);
  m.eval();
  // Straight to `out`: the caller's own temporary name, registered for removal on interrupt
  // (train/temp_files.h); a second temporary name here would escape that.
  m.save(out.string());
}

}  // namespace lookalike::train::detail
