// `lookalike models calibrate`: measures each reduced-precision archive of a model against its
// FP32 archive on the user's own photos, through the same decode, preprocessing and LibTorch
// path as indexing, and records the result in the model card ("precisions", model/precision.h),
// where `--precision auto` reads it. docs/precision.md.
//
// Fidelity: for every photo, the cosine similarity of the reduced-precision embedding to the FP32
// embedding of the same photo (min and mean). When the photos are labelled (a folder per class,
// eval/labels.h), also leave-one-out Recall@1 and mAP at each precision (exact ranking by cosine
// similarity, every photo a query against the others) and their difference from FP32. Speed:
// model-only images/s (forward passes on preprocessed batches, decoding excluded), measured in
// the same run for FP32 and each precision, so auto can pick the fastest.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "model/precision.h"

namespace lookalike::eval {

struct CalibrateOptions {
  std::filesystem::path model;          // the FP32 archive (model::resolve_model)
  std::filesystem::path images;         // labelled folder or CSV (eval/labels.h), else any folder
  std::vector<std::string> precisions;  // empty = every one the card lists
  std::int64_t limit = 0;               // at most this many photos (evenly spread); 0 = all
  int threads = 0;                      // LibTorch threads; 0 = all cores
  int batch_size = 32;                  // images per forward pass
  int decode_threads = 1;
};

struct PrecisionResult {
  model::Precision precision = model::Precision::FP32;
  std::string archive;
  std::string archive_digest;  // model::archive_digest of the archive measured
  // Why it could not be measured, naming the archive or photo: its output was NaN or infinite
  // (model::NonFiniteOutput, or a non-finite cosine). Then meets_bar is false, min_cosine and
  // mean_cosine are NaN here and left out of the card, and images_per_s is 0.
  std::string failure;
  double min_cosine = 0, mean_cosine = 0;
  std::string worst_file;          // the photo with min_cosine
  double images_per_s = 0;         // model only, over full batches (after a full warm-up one)
  std::optional<Metrics> metrics;  // leave-one-out, when labelled
  double recall_at_1_delta = 0, map_delta = 0;  // this minus FP32 (0 when unlabelled)
  bool meets_bar = false;                       // model::meets_bar of the record
};

struct CalibrationReport {
  std::filesystem::path card;
  std::int64_t images = 0;  // photos embedded at every precision
  std::int64_t failed = 0;  // photos that could not be decoded (left out)
  bool labelled = false;
  double fp32_images_per_s = 0;
  std::optional<Metrics> fp32_metrics;
  std::vector<PrecisionResult> precisions;
  // Limits of this record, in words (unlabelled photos: Recall@1 and mAP not measured; fewer than
  // model::kMinCalibrationImages photos: nothing meets the bar). calibrate() also logs them as
  // warnings, and record_calibration writes them into each fidelity record ("note").
  std::vector<std::string> notes;
};

// Throws model::ModelError (model, card or archive problems, a precision the card does not
// list), LabelError / std::runtime_error naming the image folder when it holds no usable photo.
CalibrationReport calibrate(const CalibrateOptions& options);

// Writes the report into the card's "precisions" object (fidelity and images_per_s of each
// measured precision, images_per_s of fp32), atomically (temporary file, then rename). Each
// fidelity record names the digest of the archive it measured ("archive_digest"), so that a
// replaced archive voids it (model::void_fidelity_reason); a failed precision is recorded with
// its "failure" and "meets_bar": false. Non-finite numbers are never written. Throws
// model::ModelError naming the card when it cannot be written.
void record_calibration(const CalibrationReport& report);

}  // namespace lookalike::eval
