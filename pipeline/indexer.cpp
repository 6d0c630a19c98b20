#include "pipeline/indexer.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "dedup/phash.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "pipeline/batch_runner.h"
#include "pipeline/files.h"

namespace lookalike::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

enum class Change { Failed, Unchanged, Refresh, Added, Updated };

// What a worker learned about one file; read by the consumer after the queue hands it over.
struct JobState {
  Change change = Change::Failed;
  store::ImageRecord record;
  std::vector<float> reused;  // the embedding of identical content, read at prepare time
  std::string error;
  bool committed = false;
  bool metadata_changed = false;  // Refresh: the metadata differs from the stored one
  // NoEmbed without `reused`: the job of this run that embeds the same bytes (RunTwins); the
  // consumer copies that job's vector and pixel size once it has them.
  std::optional<std::size_t> twin_of;
};

// The first job of this run to embed each content hash. The catalog (Known::by_hash) knows only
// what was stored before the run, so identical files new in one run would each be embedded;
// a later one becomes a twin of the first instead. Shared by the decode workers.
class RunTwins {
 public:
  // The job that embeds `hash` in this run: `job` itself when it is the first to ask.
  std::size_t claim(const std::string& hash, std::size_t job) {
    std::lock_guard lock(mu_);
    return first_.emplace(hash, job).first->second;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::size_t> first_;
};

struct Known {
  std::unordered_map<std::string, const store::ImageRecord*> by_path;
  std::unordered_map<std::string, const store::ImageRecord*> by_hash;  // for the pixel size
  std::unordered_set<std::int64_t> corrupt;
};

Known index_records(const std::vector<store::ImageRecord>& records,
                    std::unordered_set<std::int64_t> corrupt) {
  Known known;
  for (const auto& r : records) {
    known.by_path.emplace(r.path, &r);
    known.by_hash.emplace(r.content_hash, &r);
  }
  known.corrupt = std::move(corrupt);
  return known;
}

bool same_record(const store::ImageRecord& a, const store::ImageRecord& b) {
  return a.mtime_ns == b.mtime_ns && a.bytes == b.bytes &&
         nlohmann::json::parse(a.metadata) == nlohmann::json::parse(b.metadata);
}

// The perceptual hash `duplicates` compares (dedup/phash.h), for images whose pixels are not at
// hand (an embedding reused by content hash): a DCT-downscaled decode of the bytes already in
// memory. Unset when that decode fails: the image is still indexed, and `duplicates` reports it.
std::optional<store::StoredPictureHash> picture_hash_of(const std::vector<std::uint8_t>& bytes,
                                                        const std::string& path,
                                                        const image::DecodeOptions& decode) {
  try {
    const auto h = dedup::picture_hash_bytes(bytes, path, decode);
    return store::StoredPictureHash{h.full, h.center95, h.center90};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The same from the pixels the model input was made from (the whole upright frame), so that an
// embedded image is decoded once, not a second time for its hash (docs/duplicates.md, *Cost*).
// Unset for a decode under 32 x 32 pixels, as picture_hash_bytes would refuse it.
std::optional<store::StoredPictureHash> picture_hash_of(const image::RgbImage& rgb) {
  try {
    const auto h = dedup::picture_hash(rgb);
    return store::StoredPictureHash{h.full, h.center95, h.center90};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Runs on a decode worker: hash the file, compare with the catalog, decode only if needed.
Prepared prepare_file(const SourceFile& src, std::size_t job, const Known& known, RunTwins& twins,
                      const store::Collection& collection, const IndexOptions& options,
                      const image::PreprocessSpec& spec, JobState& state, float* input) {
  store::ImageRecord& rec = state.record;
  rec.path = src.path.string();
  rec.metadata = src.metadata.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  try {
    // Type, size and pixel count are checked from the header before the rest is read.
    auto bytes = image::read_image_file(src.path, options.decode);
    rec.bytes = static_cast<std::int64_t>(bytes.size());
    rec.mtime_ns = mtime_ns(src.path);
    rec.content_hash = content_hash(bytes);
    rec.updated_at_ms = now_ms();
    auto old = known.by_path.find(rec.path);
    const bool known_path = old != known.by_path.end();
    if (known_path) {
      rec.id = old->second->id;
      rec.added_at_ms = old->second->added_at_ms;
      // A folder brings no metadata: what a manifest stored earlier stays.
      if (src.metadata.empty()) rec.metadata = old->second->metadata;
    }
    const bool corrupt = known_path && known.corrupt.count(rec.id) > 0;
    if (known_path && !corrupt && old->second->content_hash == rec.content_hash) {
      rec.width = old->second->width;
      rec.height = old->second->height;
      if (same_record(*old->second, rec)) {
        state.change = Change::Unchanged;
        return Prepared::Drop;
      }
      if (auto v = collection.embedding_by_hash(rec.content_hash)) {
        state.change = Change::Refresh;
        state.metadata_changed =
            nlohmann::json::parse(old->second->metadata) != nlohmann::json::parse(rec.metadata);
        // Same bytes: the stored hash stays (write_batch keeps it); rows from before schema 4
        // get one now, since the bytes are at hand.
        if (!old->second->picture_hash) {
          rec.picture_hash = picture_hash_of(bytes, rec.path, options.decode);
        }
        state.reused = std::move(*v);
        return Prepared::NoEmbed;
      }
    }
    state.change = known_path ? Change::Updated : Change::Added;
    if (rec.added_at_ms == 0) rec.added_at_ms = rec.updated_at_ms;
    if (auto same = known.by_hash.find(rec.content_hash); same != known.by_hash.end()) {
      // Same bytes, same pixel size; the vector is read by hash now, not from that record.
      if (auto twin = collection.embedding_by_hash(rec.content_hash)) {
        rec.width = same->second->width;
        rec.height = same->second->height;
        rec.picture_hash = same->second->picture_hash;
        if (!rec.picture_hash) rec.picture_hash = picture_hash_of(bytes, rec.path, options.decode);
        state.reused = std::move(*twin);
        return Prepared::NoEmbed;
      }
    }
    if (const std::size_t first = twins.claim(rec.content_hash, job); first != job) {
      state.twin_of = first;  // same bytes as a file of this run: its vector, once embedded
      return Prepared::NoEmbed;
    }
    // The whole frame (no rows_for): the hash needs the rows outside the model's centre crop.
    // Skipping their IDCT saved 0.08 ms of a 0.50 ms decode (400 x 533), but the second decode
    // for the hash cost 0.34 ms, against 0.23 for hashing these pixels (docs/duplicates.md,
    // *Cost at index time*).
    auto decoded = image::decode_buffer(bytes, rec.path, options.decode);
    rec.width = decoded.source_width;
    rec.height = decoded.source_height;
    image::preprocess(decoded.rgb, decoded.source_width, decoded.source_height, spec, input,
                      rec.path);
    rec.picture_hash = picture_hash_of(decoded.rgb);
    return Prepared::Embed;
  } catch (const image::DecodeError& e) {
    state.error = e.reason();
  } catch (const std::bad_alloc&) {
    state.error = "out of memory while decoding or preprocessing";
  } catch (const std::exception& e) {
    state.error = e.what();
  }
  state.change = Change::Failed;
  // The stored entry is kept (a half-written copy must not lose its image), but searches still
  // find it with the vector of what the file held before: say so, or it looks indexed anew.
  if (auto old = known.by_path.find(rec.path); old != known.by_path.end()) {
    state.error += fmt::format(
        "; its earlier entry (id {}) stays searchable with the vector of its earlier content",
        old->second->id);
  }
  return Prepared::Drop;
}

// The lexically normal absolute form of `p` as the catalog stores paths, without a trailing
// separator ("photos/" and "photos/." are the folder "photos").
std::string catalog_form(const std::filesystem::path& p) {
  if (p.empty()) return {};  // fs::absolute("") throws; an empty path names nothing
  std::string s = normalize_path(p).string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

// The failure a scan problem becomes; an empty `where` when it is none.
Failure failure_of(const ScanProblem& p, const Known& known, const IndexOptions& options) {
  // An indexed symlink whose target was deleted, or an indexed path that is a FIFO or socket
  // now, is gone like a deleted file: find_vanished reports it and --prune removes it, instead
  // of a failure on every run.
  if ((p.dangling_symlink || p.not_regular) && !options.inputs.empty() &&
      known.by_path.count(catalog_form(p.where)) > 0) {
    return {};
  }
  if (p.listed.empty()) return {p.where, p.reason};
  Failure f{p.where, p.reason, catalog_form(p.listed)};
  if (auto old = known.by_path.find(f.kept_path); old != known.by_path.end()) {
    f.reason += fmt::format(
        "; its indexed entry (id {}) is kept, never pruned, while a manifest row lists it",
        old->second->id);
  }
  return f;
}

// Calls `visit` with `path`, then with each folder above it ("/a/b/c.jpg", "/a/b", "/a", "/"),
// until it returns true; returns whether one did.
template <typename Visit>
bool up_from(const std::string& path, Visit&& visit) {
  std::string p = path;
  while (true) {
    if (visit(p)) return true;
    const auto slash = p.rfind('/');
    if (slash == std::string::npos || p == "/") return false;
    p.resize(slash == 0 ? 1 : slash);
  }
}

// How many of `records` lie under the folder `root` (catalog form).
std::int64_t images_under(const std::vector<store::ImageRecord>& records, const std::string& root) {
  std::int64_t images = 0;
  for (const auto& r : records) {
    if (up_from(r.path, [&](const std::string& p) { return p == root; })) ++images;
  }
  return images;
}

// An input folder whose walk found no image file while the collection holds images under it
// looks like an unmounted drive's mount point: those images are kept unchecked (find_vanished
// skips what lies under a failed input), never reported vanished nor pruned.
void keep_empty_folders(const std::vector<store::ImageRecord>& records,
                        const std::vector<std::filesystem::path>& empty_folders,
                        std::vector<Failure>& failures) {
  std::unordered_set<std::string> seen;  // a folder given twice is named once
  for (const auto& folder : empty_folders) {
    const std::string root = catalog_form(folder);
    if (!seen.insert(root).second) continue;
    const std::int64_t images = images_under(records, root);
    if (images == 0) continue;
    failures.push_back(
        {folder.string(),
         fmt::format("holds no image files now; its {} indexed images are kept (an unmounted "
                     "drive?). Remove them with `lookalike remove {}`",
                     images, folder.string())});
  }
}

// A manifest none of whose rows could be read, some naming missing files, is what a manifest
// on an unmounted drive looks like, as an empty folder is: it fails, so that find_vanished
// skips its whole scope (its folder) and nothing there is pruned.
void keep_unread_manifests(const std::vector<store::ImageRecord>& records,
                           const std::vector<UnreadManifest>& manifests,
                           std::vector<Failure>& failures) {
  std::unordered_set<std::string> seen;  // a manifest given twice is named once
  for (const auto& m : manifests) {
    if (!seen.insert(catalog_form(m.manifest)).second) continue;
    const std::string root = normalize_path(m.manifest).parent_path().string();
    const std::int64_t images = images_under(records, root);
    if (images == 0) continue;
    failures.push_back({m.manifest.string(),
                        fmt::format("none of its {} rows could be read; the {} indexed images "
                                    "under {} are kept (an unmounted drive?). Fix the paths, or "
                                    "remove images with `lookalike remove PATH...`",
                                    m.rows, images, root)});
  }
}

}  // namespace

VanishedCheck find_vanished(const std::vector<store::ImageRecord>& records,
                            const std::vector<std::filesystem::path>& inputs,
                            const std::vector<Failure>& failures) {
  namespace fs = std::filesystem;
  // Every path a failure names, and the inputs that failed themselves (named exactly as given).
  std::unordered_set<std::string> failed_as_given;
  std::unordered_map<std::string, std::size_t> failed;  // catalog form -> index in `skipped`
  std::unordered_set<std::string> kept;                 // files failed manifest rows still list
  VanishedCheck out;
  auto note_failed = [&](const std::string& key, const std::string& where) {
    if (failed.emplace(key, out.skipped.size()).second) out.skipped.push_back({where, 0});
  };
  for (const auto& f : failures) {
    if (!f.kept_path.empty()) kept.insert(f.kept_path);
    if (f.where.empty() || f.where == kEmptyPathName) continue;
    failed_as_given.insert(f.where);
    note_failed(catalog_form(f.where), f.where);
  }
  std::unordered_set<std::string> scope, failed_inputs;
  for (const auto& input : inputs) {
    if (input.empty()) continue;  // failed in the scan (kEmptyPathName); nothing is under it
    std::error_code ec;
    const bool manifest = is_manifest_path(input);
    const bool folder = fs::is_directory(input, ec);
    fs::path root = input;
    if (!folder && manifest) root = normalize_path(input).parent_path();
    const auto key = catalog_form(root);
    scope.insert(key);
    if (failed_as_given.count(input.string()) > 0) {
      note_failed(key, input.string());  // nothing under it is looked at
      failed_inputs.insert(key);
    }
  }
  for (const auto& r : records) {
    // Not under this run's inputs: not looked at.
    if (!up_from(r.path, [&](const std::string& p) { return scope.count(p) > 0; })) continue;
    std::string failed_at;
    if (up_from(r.path, [&](const std::string& p) {
          if (failed.count(p) == 0) return false;
          failed_at = p;
          return true;
        })) {
      // A file that failed itself (unreadable, not an image) is listed already; a failed input
      // or folder is listed with the images it keeps.
      if (failed_at != r.path || failed_inputs.count(failed_at) > 0) {
        ++out.skipped[failed.at(failed_at)].images;
      }
      continue;
    }
    struct stat st;
    const int err = ::stat(r.path.c_str(), &st) == 0 ? 0 : errno;
    // A regular file no more (now a folder, a FIFO): no image stands behind the stored vector.
    const bool gone = err == ENOENT || err == ENOTDIR || (err == 0 && !S_ISREG(st.st_mode));
    if (err == 0 && !gone) continue;
    if (gone) {
      // A manifest row still lists it: the row's failure says it is kept.
      if (kept.count(r.path) > 0) continue;
      out.ids.push_back(r.id);
      out.paths.push_back(r.path);
    } else {
      out.unreadable.push_back(
          {r.path, fmt::format("cannot tell whether it still exists ({}); its entry is kept",
                               std::strerror(err))});
    }
  }
  std::erase_if(out.skipped, [](const Unchecked& u) { return u.images == 0; });
  return out;
}

IndexSummary index_files(store::Collection& collection, model::EmbeddingModel& model,
                         const ScanResult& scan, const IndexOptions& options) {
  const auto start = Clock::now();
  IndexSummary summary;
  summary.scanned = static_cast<std::int64_t>(scan.files.size());
  summary.decode_threads = options.decode_threads;
  summary.model_threads = model.threads();
  summary.passes = options.passes;
  const auto records = collection.list();
  const Known known = index_records(records, collection.corrupt_ids());
  for (const auto& p : scan.problems) summary.failures.push_back(failure_of(p, known, options));
  std::erase_if(summary.failures, [](const Failure& f) { return f.where.empty(); });
  std::int64_t unknown = 0;  // files new to the collection: each adds a vector
  for (const auto& f : scan.files) unknown += known.by_path.count(catalog_form(f.path)) == 0;
  collection.reserve_index(unknown);
  const auto spec = model.preprocess_spec();
  std::vector<JobState> states(scan.files.size());

  Progress progress;
  progress.total = summary.scanned;
  std::atomic<std::int64_t> examined{0};

  // Stage timings (IndexSummary): nanoseconds, the workers' summed atomically.
  std::atomic<std::int64_t> prepare_ns{0}, embed_ns{0};
  std::int64_t commit_ns = 0;  // the calling thread's only
  auto ns_since = [](Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count();
  };
  // The steady window opens when the first batch of each pass in flight is committed: those
  // passes started together, so with k passes the first k commits come close together and a
  // window from the first would count images embedded before it.
  std::optional<Clock::time_point> first_commit, steady_from, last_commit;
  std::int64_t embedded_at_steady_from = 0;
  int embedded_batches = 0;

  RunTwins twins;
  // Consumer thread only: the jobs committed so far, and the twins whose first job is not yet
  // (it may still be decoding, or land in a later batch): first job -> its twins.
  std::unordered_set<std::size_t> consumed;
  std::unordered_map<std::size_t, std::vector<std::size_t>> waiting;

  auto prepare = [&](std::size_t job, float* input) {
    const auto t0 = Clock::now();
    Prepared p = prepare_file(scan.files[job], job, known, twins, collection, options, spec,
                              states[job], input);
    prepare_ns += ns_since(t0);
    ++examined;
    return p;
  };
  const int pass_threads = threads_per_pass(model.threads(), options.passes);
  auto embed = [&](const float* inputs, int n) {
    const auto t0 = Clock::now();
    auto out = options.embed ? options.embed(inputs, n) : model.embed(inputs, n, pass_threads);
    embed_ns += ns_since(t0);
    return out;
  };
  auto consume = [&](const std::vector<std::size_t>& jobs, const std::vector<Prepared>& kinds,
                     const std::vector<float>& embeddings) {
    const int dim = model.dim();
    std::vector<store::Put> puts;
    std::vector<JobState*> put_states;
    std::unordered_map<std::size_t, const float*> rows;  // jobs embedded in this batch
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      if (kinds[i] == Prepared::Embed) rows[jobs[i]] = embeddings.data() + i * dim;
    }
    // A twin takes the pixel size and hashes of its first job, whose prepare is done (it is in
    // this batch or committed), and that job's vector.
    auto put_twin = [&](std::size_t twin, std::vector<float> vector) {
      JobState& s = states[twin];
      const store::ImageRecord& first = states[*s.twin_of].record;
      s.record.width = first.width;
      s.record.height = first.height;
      s.record.picture_hash = first.picture_hash;
      puts.push_back({s.record, std::move(vector)});
      put_states.push_back(&s);
      ++summary.reused;
    };
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      JobState& s = states[jobs[i]];
      if (s.twin_of) {
        const std::size_t first = *s.twin_of;
        if (auto row = rows.find(first); row != rows.end()) {
          put_twin(jobs[i], {row->second, row->second + dim});
        } else if (consumed.count(first) > 0) {
          // Committed in an earlier batch: read back by hash (this thread writes the catalog).
          auto v = collection.embedding_by_hash(s.record.content_hash);
          if (!v) {
            s.change = Change::Failed;  // not expected: it was committed in this run
            s.error = fmt::format(
                "the embedding of the same content, stored for {} in this run, "
                "cannot be read back",
                states[first].record.path);
            continue;
          }
          put_twin(jobs[i], std::move(*v));
        } else {
          waiting[first].push_back(jobs[i]);
        }
        continue;
      }
      store::Put put{s.record, {}};
      if (kinds[i] == Prepared::Embed) {
        const float* row = embeddings.data() + i * dim;
        put.embedding.assign(row, row + dim);
        ++summary.embedded;
      } else {
        put.embedding = std::move(s.reused);
        if (s.change != Change::Refresh) ++summary.reused;
      }
      puts.push_back(std::move(put));
      put_states.push_back(&s);
    }
    // Twins that came before their first job: committed with it (in batch order, so that ids
    // follow the order the files were prepared in).
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      auto w = waiting.find(jobs[i]);
      if (w == waiting.end() || kinds[i] != Prepared::Embed) continue;
      const float* row = embeddings.data() + i * dim;
      for (std::size_t twin : w->second) put_twin(twin, {row, row + dim});
      waiting.erase(w);
    }
    const auto t0 = Clock::now();
    collection.apply(puts, {});
    commit_ns += ns_since(t0);
    ++summary.committed_batches;
    if (summary.embedded > 0) {
      last_commit = Clock::now();
      if (!first_commit) first_commit = last_commit;
      if (++embedded_batches == std::max(1, options.passes)) {
        steady_from = last_commit;
        embedded_at_steady_from = summary.embedded;
      }
    }
    for (JobState* s : put_states) s->committed = true;
    for (std::size_t job : jobs) consumed.insert(job);
    progress.done = examined.load();
    progress.embedded = summary.embedded;
    if (options.on_progress) {
      progress.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
      progress.files_per_s = progress.done / std::max(progress.elapsed_s, 1e-9);
      progress.eta_s = (progress.total - progress.done) / std::max(progress.files_per_s, 1e-9);
      options.on_progress(progress);
    }
  };

  RunOptions run{options.decode_threads, options.batch_size, options.cancel, embed, options.passes};
  try {
    run_batched(scan.files.size(), model, run, prepare, consume);
  } catch (const std::exception& e) {
    if (summary.committed_batches == 0) throw;
    summary.fatal_error = e.what();
  }
  summary.interrupted = options.cancel != nullptr && options.cancel->load();
  // Twins still waiting: their first job failed (the same bytes fail the same way), or the run
  // stopped before it was committed (then they count as nothing, as it does).
  for (const auto& [first, twin_jobs] : waiting) {
    if (states[first].change != Change::Failed || states[first].error.empty()) continue;
    for (std::size_t twin : twin_jobs) {
      states[twin].change = Change::Failed;
      states[twin].error = fmt::format("same content as {}, which failed: {}",
                                       states[first].record.path, states[first].error);
      if (states[twin].record.id != 0) {
        states[twin].error += fmt::format(
            "; its earlier entry (id {}) stays searchable with the vector of its earlier content",
            states[twin].record.id);
      }
    }
  }

  // Tally after the run: a job whose batch was never committed (Ctrl-C) counts as nothing.
  for (std::size_t i = 0; i < states.size(); ++i) {
    const JobState& s = states[i];
    if (s.change == Change::Failed && !s.error.empty()) {
      summary.failures.push_back({scan.files[i].path.string(), s.error});
    } else if (s.change == Change::Unchanged || (s.change == Change::Refresh && s.committed)) {
      ++summary.unchanged;  // a refresh rewrites mtime or metadata, not the embedding
      if (s.change == Change::Refresh && s.metadata_changed) ++summary.metadata_updated;
    } else if (s.committed && s.change == Change::Added) {
      ++summary.added;
    } else if (s.committed && s.change == Change::Updated) {
      ++summary.updated;
    }
  }
  if (!summary.interrupted && summary.fatal_error.empty() && !options.inputs.empty()) {
    try {
      keep_empty_folders(records, scan.empty_folders, summary.failures);
      keep_unread_manifests(records, scan.unread_manifests, summary.failures);
      auto gone = find_vanished(records, options.inputs, summary.failures);
      for (auto& f : gone.unreadable) summary.failures.push_back(std::move(f));
      summary.unchecked = std::move(gone.skipped);
      summary.vanished = std::move(gone.paths);
      if (options.prune && !gone.ids.empty()) {
        collection.apply({}, gone.ids);
        summary.removed = static_cast<std::int64_t>(gone.ids.size());
      }
    } catch (const std::exception& e) {
      if (summary.committed_batches == 0) throw;  // nothing stored yet: an error as before
      // After the commits: the summary is still printed, with the cause (exit 4).
      summary.fatal_error = fmt::format("checking for vanished files: {}", e.what());
    }
  }
  try {
    collection.save_index();
  } catch (const std::exception& e) {
    // The catalog holds every committed batch; a missing cache is rebuilt on the next open.
    summary.cache_warning = e.what();
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  summary.images_per_s = summary.embedded / std::max(summary.seconds, 1e-9);
  summary.prepare_seconds = prepare_ns.load() * 1e-9;
  summary.embed_seconds = embed_ns * 1e-9;
  summary.commit_seconds = commit_ns * 1e-9;
  if (first_commit)
    summary.first_batch_seconds = std::chrono::duration<double>(*first_commit - start).count();
  if (steady_from) {
    const double steady_s = std::chrono::duration<double>(*last_commit - *steady_from).count();
    const auto steady_images = summary.embedded - embedded_at_steady_from;
    if (steady_images > 0 && steady_s > 0) summary.steady_images_per_s = steady_images / steady_s;
  }
  return summary;
}

}  // namespace lookalike::pipeline
