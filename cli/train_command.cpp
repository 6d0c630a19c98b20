// `lookalike train` and `lookalike reembed`: argument parsing and printing over train/train.h.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/output.h"
#include "engine/engine.h"
#include "image/decode.h"
#include "model/model_card.h"
#include "train/temp_files.h"
#include "train/train.h"

namespace lookalike::cli {

namespace {

using nlohmann::json;

struct TrainArgs {
  train::TrainOptions o;
  std::string base;
};

struct ReembedArgs {
  std::filesystem::path out;
  std::filesystem::path cache_dir;
};

json epoch_record(const train::EpochReport& r) {
  return {{"type", "train_epoch"},
          {"phase", r.phase},
          {"epoch", r.epoch},
          {"epochs", r.epochs},
          {"loss", r.loss},
          {"active_triplets", r.active},
          {"val_recall_at_1", r.val_recall_at_1 < 0 ? json(nullptr) : json(r.val_recall_at_1)},
          {"best", r.best},
          {"seconds", r.seconds},
          {"triplets_per_s", r.triplets_per_s},
          {"eta_seconds", r.eta_seconds}};
}

void print_epoch(const train::EpochReport& r) {
  const std::string val = r.val_recall_at_1 < 0 ? "-" : fmt::format("{:.3f}", r.val_recall_at_1);
  std::cerr << fmt::format(
      "{}epoch {:>3}/{}  loss {:.4f}  active {:>3.0f}%  val Recall@1 {}{}  {:.2f} s  "
      "{:.0f} triplets/s  ETA {}\n",
      r.phase == "full" ? "full " : "", r.epoch, r.epochs, r.loss, 100 * r.active, val,
      r.best ? " *" : "", r.seconds, r.triplets_per_s, format_seconds(r.eta_seconds));
}

// What the labelled set left out before training, by cause (eval's "skipped" counts).
json skipped_json(const train::TrainResult& r) {
  return {{"entries", r.skipped},
          {"unlabelled", r.unlabelled},
          {"empty_label", r.empty_labels},
          {"unreadable", r.unreadable}};
}

// ": 2 not read, 1 with an empty label, ..." after "N left out", or "" when nothing was.
std::string left_out_note(const train::TrainResult& r) {
  std::vector<std::string> parts;
  auto add = [&](std::int64_t n, const char* what, const char* many = nullptr) {
    if (n > 0)
      parts.push_back(many != nullptr ? plural(n, what, many) : fmt::format("{} {}", n, what));
  };
  add(static_cast<std::int64_t>(r.failed.size()), "could not be read or decoded");
  add(r.unreadable, "unreadable entry", "unreadable entries");
  add(r.empty_labels, "with an empty label");
  add(r.unlabelled, "directly in the folder (no label)");
  return parts.empty() ? "" : fmt::format(": {}", fmt::join(parts, ", "));
}

// Listing every entry of a large set would bury the progress; --json has them all (as eval).
constexpr std::size_t kMaxWarnings = 20;

void warn_left_out(const std::vector<std::string>& entries) {
  for (std::size_t i = 0; i < entries.size() && i < kMaxWarnings; ++i)
    spdlog::warn("left out: {}", entries[i]);
  if (entries.size() > kMaxWarnings)
    spdlog::warn("... and {} more left out (--json lists them all)", entries.size() - kMaxWarnings);
}

// SIGINT / SIGTERM end the run at once, as they did before, but first remove the temporary
// archive, card and backbone it is writing beside --out (train/temp_files.h); a signal during
// the final renames ends the process once both are done.
extern "C" void on_train_signal(int signal) {
  if (!train::remove_temp_files_for_signal(signal)) return;
  static const char kMessage[] = "\nlookalike train: interrupted; its temporary files removed\n";
  [[maybe_unused]] auto written = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  ::_exit(kInterrupted);
}

void install_train_signal_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_train_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

int report_error(const std::exception& e, int code) {
  spdlog::error("{}", e.what());  // "lookalike: error: ...", as every error
  return code;
}

int run_train(const GlobalOptions& g, TrainArgs& a) {
  auto& o = a.o;
  o.base = a.base.empty() ? (g.model.empty() ? "mobilenet_v2" : g.model) : a.base;
  apply_run_settings(g, o);
  const bool json_out = g.json;
  train::TrainCallbacks cb;
  cb.on_embed = [&](const train::EmbedProgress& p) {
    if (json_out)
      print_record(
          {{"type", "train_progress"}, {"stage", "embed"}, {"done", p.done}, {"total", p.total}});
    else if (!g.quiet)
      std::cerr << fmt::format("base embeddings: {} of {}\n", p.done, p.total);
  };
  cb.on_epoch = [&](const train::EpochReport& r) {
    if (json_out)
      print_record(epoch_record(r));
    else if (!g.quiet)
      print_epoch(r);
  };
  // As soon as the labels are read, so that a long run over the wrong input can be stopped.
  cb.on_skipped = warn_left_out;
  // Before training, so that an error for too few images left does not hide why they failed.
  cb.on_failed = warn_left_out;
  install_train_signal_handler();
  image::init_decoder();
  train::TrainResult r;
  try {
    r = train::train_model(o, cb);
  } catch (const train::TrainError& e) {
    return report_error(e, e.usage() ? kUsage : kError);
  } catch (const model::ModelError& e) {
    return report_error(e, kError);
  } catch (const engine::EngineError& e) {
    return report_error(e, kError);
  }
  const auto& v = r.training["validation"];
  if (json_out) {
    json out = {{"type", "train"},
                {"images", r.images},
                {"cached", r.cached},
                {"decoded", r.decoded},
                {"failed", r.failed},
                {"skipped", skipped_json(r)},
                {"best_epoch", r.best_epoch},
                {"seconds", r.seconds},
                {"training", r.training}};
    set_path(out, "archive", r.archive.string());
    set_path(out, "card", r.card.string());
    print_record(out);
  } else {
    const json ft = r.training.value("fine_tune", json());
    const std::string best =
        ft.is_object() && ft.value("best_epoch", 0) > 0
            ? fmt::format("kept fine-tuning epoch {} of {}", ft.value("best_epoch", 0),
                          ft.value("epochs", 0))
            : fmt::format("kept head epoch {} of {}{}", r.best_epoch,
                          r.training.value("epochs_run", 0),
                          ft.is_object() ? " (no fine-tuning epoch beat it)" : "");
    std::cout << fmt::format(
        "wrote {} and {}\n{} ({} from the cache, {} decoded, {} left out{}); {}, validation "
        "Recall@1 {}; {}\n",
        r.archive.string(), r.card.string(), plural(r.images, "image"),
        plural(r.cached, "base embedding"), r.decoded, r.failed.size() + r.skipped.size(),
        left_out_note(r), best,
        v["recall_at_1"].is_null() ? "-" : fmt::format("{:.3f}", v["recall_at_1"].get<double>()),
        format_seconds(r.seconds));
  }
  return r.failed.empty() && r.skipped.empty() ? kOk : kPartial;
}

int run_reembed(const GlobalOptions& g, const ReembedArgs& a) {
  train::ReembedOptions o;
  o.collection = g.collection;
  o.out = a.out;
  o.model = g.model;
  o.cache_dir = a.cache_dir;
  o.precision = g.precision;
  apply_run_settings(g, o);
  image::init_decoder();
  train::ReembedResult r;
  try {
    r = train::reembed_collection(o);
  } catch (const train::TrainError& e) {
    return report_error(e, e.usage() ? kUsage : kError);
  } catch (const model::ModelError& e) {
    return report_error(e, kError);
  } catch (const engine::EngineError& e) {
    return report_error(e, kError);
  }
  for (const auto& f : r.failed) spdlog::warn("left out: {}", f);
  if (g.json) {
    json out = {{"type", "reembed"},
                {"images", r.images},
                {"from_cache", r.from_cache},
                {"decoded", r.decoded},
                {"failed", r.failed},
                {"model_id", r.model_id},
                {"head_only", r.head_only},
                {"precision", r.precision},
                {"precision_reason", r.precision_reason}};
    set_path(out, "out", a.out.string());
    print_record(out);
  } else {
    // The cache line only where it can apply: a trained head over a cached base.
    const auto cached =
        r.head_only ? fmt::format("{} from cached base embeddings (head only), ", r.from_cache)
                    : std::string();
    std::cout << fmt::format(
        "wrote {} with {} at {} ({}): {}, {}{} decoded{}, {} left out\n", a.out.string(),
        r.model_id, r.precision, r.precision_reason, plural(r.images, "image"), cached, r.decoded,
        r.head_only && r.decoded ? " (not in the cache)" : "", r.failed.size());
  }
  return r.failed.empty() ? kOk : kPartial;
}

void add_train_options(CLI::App& cmd, TrainArgs& a) {
  auto& o = a.o;
  cmd.add_option("--labels", o.labels, "Labelled images: a folder per class, or a CSV manifest")
      ->required();
  cmd.add_option("--label-column", o.label_column, "CSV: the label column (default label)");
  cmd.add_option("--file-column", o.file_column, "CSV: the image path column");
  cmd.add_option("--base", a.base,
                 "Base model, name or .pt path (default: the global --model, else mobilenet_v2)");
  cmd.add_option("--out", o.out, "The trained model's archive, PATH.pt (card: PATH.json)")
      ->required();
  cmd.add_flag("--force", o.force,
               "Replace an existing PATH.pt / PATH.json (collections built with it will no "
               "longer match)");
  cmd.add_option("--epochs", o.epochs, "Epochs at most (default 30)");
  cmd.add_option("--dim", o.dim, "Output dimension (default 256)");
  cmd.add_option("--head", o.head, "linear (default) or mlp");
  cmd.add_option("--hidden", o.hidden, "mlp: hidden width (default 1024)");
  cmd.add_option("--margin", o.margin,
                 "Triplet margin, Euclidean on unit vectors, in (0, 4] (default 0.2)");
  cmd.add_option("--mining", o.mining, "batch-hard (default) or semi-hard");
  cmd.add_option("--labels-per-batch", o.labels_per_batch, "P (default 16)");
  cmd.add_option("--images-per-label", o.images_per_label, "K (default 8)");
  cmd.add_option("--lr", o.learning_rate, "Adam learning rate (default 0.003)");
  cmd.add_option("--seed", o.seed, "Random seed (default 0)");
  cmd.add_option("--val-fraction", o.val_fraction,
                 "Share of the labelled images held out for validation (default 0.1; 0 = none)");
  cmd.add_option("--val-split", o.val_split,
                 "stratified (default: per label) or by-label (whole labels held out)");
  cmd.add_option("--patience", o.patience,
                 "Stop after this many epochs without a better validation Recall@1 (default 10)");
  cmd.add_option("--cache", o.cache_dir,
                 "Base-embedding cache folder (default $XDG_CACHE_HOME/lookalike)");
  cmd.add_flag("--full", o.full,
               "Then fine-tune the base's last stage with the head on augmented images "
               "(mobilenet_v2, resnet50)");
  cmd.add_option("--full-epochs", o.full_epochs, "--full: epochs of fine-tuning (default 4)");
  cmd.add_option("--full-lr", o.full_learning_rate,
                 "--full: Adam learning rate of the stage; the head gets 10x (default 0.00002)");
}

}  // namespace

Subcommand add_train_command(CLI::App& app, const GlobalOptions& g) {
  auto args = std::make_shared<TrainArgs>();
  Subcommand s;
  s.app = app.add_subcommand("train",
                             "Train a model on labelled images: a projection head on a base "
                             "model, triplet loss (docs/train.md)");
  add_train_options(*s.app, *args);
  s.run = [&g, args] { return run_train(g, *args); };
  return s;
}

Subcommand add_reembed_command(CLI::App& app, const GlobalOptions& g) {
  auto args = std::make_shared<ReembedArgs>();
  Subcommand s;
  s.app = app.add_subcommand("reembed",
                             "Write a copy of the collection embedded by --model (default: the "
                             "collection's) at --precision; a trained head runs on cached base "
                             "embeddings, decoding only what is missing");
  s.app->add_option("--out", args->out, "The new collection folder (must not exist)")->required();
  s.app->add_option("--cache", args->cache_dir,
                    "Base-embedding cache folder (default $XDG_CACHE_HOME/lookalike)");
  s.run = [&g, args] { return run_reembed(g, *args); };
  return s;
}

}  // namespace lookalike::cli
