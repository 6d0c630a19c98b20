// Inference precision of an embedding model: which archive runs (FP32, or a reduced-precision
// archive the exporter prepared), whether this CPU runs it natively, and whether its vectors are
// interchangeable with FP32 ones. Design, rule and measurements: docs/precision.md.
//
// A model card's "precisions" object (model/model_card.h) lists the reduced-precision archives:
//   "precisions": {
//     "bf16": {
//       "archive": "resnet50.bf16.pt",          // next to the card
//       "recipe": "whole model in bfloat16, channels-last",
//       "input": "channels_last",               // optional: takes HWC input without a reorder
//       "requires": ["avx512_bf16|amx_bf16"],   // CPU flags (/proc/cpuinfo), any of a|b
//       "fidelity": {                           // written by `lookalike models calibrate`
//         "min_cosine": 0.99985, "mean_cosine": 0.99995, "images": 372,
//         "recall_at_1_delta": 0.0, "map_delta": 0.0003, "meets_bar": true,
//         "archive_digest": "1f0c...",          // archive_digest() of the archive measured
//         ...},                                 // ("failure": why it could not be measured)
//       "images_per_s": 81.2                    // model-only, measured by calibrate
//     }
//     "fp32": {"images_per_s": 35.0}            // the FP32 archive's speed, same run
//   },
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace lookalike::model {

enum class Precision { FP32, BF16, INT8 };

// "fp32" | "bf16" | "int8"; parse_precision also takes "auto" (returns false in *is_auto).
std::string to_string(Precision p);
// Throws ModelError for anything else, naming `source` (e.g. "--precision").
Precision parse_precision(const std::string& text, const std::string& source, bool* is_auto);

// The fidelity bar a reduced-precision path must meet to be chosen by "auto" and to share the
// FP32 model id (issue 12; docs/precision.md): cosine similarity to the FP32 embedding of the same
// photo >= 0.999 on every calibration photo, and, where the photos have labels, leave-one-out
// Recall@1 and mAP within 0.005 of FP32.
inline constexpr double kMinCosineBar = 0.999;
inline constexpr double kMaxMetricDelta = 0.005;
// A fidelity record over fewer photos never meets the bar: its minimum cosine is taken over too
// few photos to stand for a collection's worst case, and one leave-one-out query moves Recall@1
// by 2% or more, four times the bar's tolerance (docs/precision.md, "Fidelity and auto").
inline constexpr std::int64_t kMinCalibrationImages = 50;

// CPU feature flags as /proc/cpuinfo spells them (avx512_bf16, amx_bf16, avx512_vnni, amx_int8,
// ...), minus those named in $LOOKALIKE_CPU_MASK (comma-separated, or "all"; entries are trimmed
// of white space and lower-cased, as /proc/cpuinfo spells flags): the mask lets a test or a user
// simulate an older CPU. Read once per process.
const std::set<std::string>& cpu_flags();
// Every entry of `needed` ("a|b" = either flag) is in `flags`.
bool cpu_supports(const std::vector<std::string>& needed, const std::set<std::string>& flags);

struct PrecisionChoice {
  Precision precision = Precision::FP32;
  std::string archive;          // file name next to the card; empty = the FP32 archive
  bool interchangeable = true;  // recorded fidelity meets the bar: same model id as FP32
  std::string reason;           // why, in words (shown by info, index and --json)
};

// What to run for `requested` ("auto", "fp32", "bf16", "int8") given a card's "precisions"
// object and the CPU's flags.
//  - fp32: always.
//  - an explicit reduced precision: its archive if the card lists one, else ModelError naming
//    the card and the exporter option that prepares it. Runs even where the CPU lacks the
//    feature (oneDNN then emulates it, slowly) or the fidelity is unmeasured, void or below the
//    bar: then interchangeable = false and the model id carries the precision.
//  - auto: among FP32 and the listed precisions whose CPU features are present, whose
//    recorded fidelity meets the bar and (when `card_dir` is given) whose archive file is in
//    `card_dir` with the digest the record names (void_fidelity_reason), the one with the
//    highest recorded images_per_s; FP32 when none qualifies
//    (reason says why each was passed over). A missing companion archive must not break every
//    command while the FP32 archive is there; an explicit request still fails at load, naming it.
// `card_name` names the card in errors.
PrecisionChoice choose_precision(const std::string& requested, const nlohmann::json& precisions,
                                 const std::set<std::string>& flags, const std::string& card_name,
                                 const std::filesystem::path& card_dir = {});

// Content identity of an archive file: the first 16 hex digits of the XXH3-128 of its bytes. The
// FP32 archive's is the model id's (NAME@DIGEST); calibrate records a reduced-precision archive's
// in its fidelity record ("archive_digest"). Throws ModelError naming the file when unreadable.
std::string archive_digest(const std::filesystem::path& file);

// Why the fidelity record of `entry` (a "precisions" entry) does not describe the archive now in
// `card_dir`: it records an "archive_digest" and the file's digest differs (the archive was
// replaced or damaged after calibration), or the file cannot be read. Empty when the record
// stands: no record, no digest recorded (cards calibrated before digests were recorded), no
// `card_dir`, or no such file (a missing archive is reported as missing instead). A void record
// is treated as no record: not calibrated.
std::string void_fidelity_reason(const nlohmann::json& entry,
                                 const std::filesystem::path& card_dir);

// The precision's fidelity record meets the bar: min cosine >= kMinCosineBar, Recall@1 and mAP
// deltas (when recorded) within kMaxMetricDelta, at least kMinCalibrationImages photos (when
// "images" is recorded; hand-written records may omit it), not recorded as "meets_bar": false, and
// without a "failure" (calibrate could not measure it: non-finite output).
bool meets_bar(const nlohmann::json& fidelity);

// The reduced-precision archives `precisions` names that are not files in `card_dir`
// ("bf16: mobilenet_v2.bf16.pt"), for `models` to flag.
std::vector<std::string> missing_archives(const nlohmann::json& precisions,
                                          const std::filesystem::path& card_dir);

}  // namespace lookalike::model
