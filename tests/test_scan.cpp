// The input scanner and file helpers, on the files of tools/make_bad_inputs.py (fixture
// bad_inputs, with its expected.json) and on temporary trees.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "pipeline/files.h"
#include "pipeline/scan.h"

namespace fs = std::filesystem;
using lookalike::pipeline::base64;
using lookalike::pipeline::is_valid_utf8;
using lookalike::pipeline::read_file;
using lookalike::pipeline::read_manifest;
using lookalike::pipeline::scan_inputs;
using lookalike::pipeline::ScanOptions;
using lookalike::pipeline::ScanProblem;
using lookalike::pipeline::ScanResult;
using lookalike::pipeline::utf8_display;

namespace {

const fs::path kBad = fs::path(LOOKALIKE_FIXTURES) / "bad_inputs";

nlohmann::json expected_outcomes() {
  std::ifstream in(kBad / "expected.json");
  EXPECT_TRUE(in) << "missing " << kBad / "expected.json";
  return nlohmann::json::parse(in);
}

// expected.json names files by display path plus, for non-UTF-8 names, base64 of the bytes;
// both sides are compared as base64 of the raw relative path.
std::string entry_key(const nlohmann::json& e) {
  return e.contains("path_bytes") ? e["path_bytes"].get<std::string>()
                                  : base64(e["path"].get<std::string>());
}
std::string path_key(const fs::path& p) {
  const std::string root = kBad.string() + "/";
  const std::string s = p.string();
  return base64(s.rfind(root, 0) == 0 ? s.substr(root.size()) : s);
}

std::string joined(const ScanProblem& p) { return p.where + ": " + p.reason; }

// A scratch folder (mode 0755, so that an unprivileged child can walk it), removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lookalike_scan_XXXXXX").string();
    path = mkdtemp(pattern.data());
    fs::permissions(path, fs::perms(0755));
  }
  ~TempDir() {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(path, ec)) {
      if (e.is_directory(ec)) fs::permissions(e.path(), fs::perms::owner_all, ec);
    }
    fs::remove_all(path, ec);
  }
  fs::path file(const std::string& rel, const std::string& content = "x") const {
    fs::path p = path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
};

std::vector<std::string> names(const ScanResult& r, const fs::path& root) {
  std::vector<std::string> out;
  for (const auto& f : r.files) out.push_back(f.path.lexically_relative(root).string());
  return out;
}

// What read_manifest throws for `csv`, or "(loaded)".
std::string manifest_error(const fs::path& csv) {
  try {
    read_manifest(csv);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(loaded)";
}

}  // namespace

TEST(ScanTest, FolderWalkListsReportsAndIgnoresAsExpected) {
  const auto expected = expected_outcomes();
  const ScanResult r = scan_inputs({kBad / "decode", kBad / "names"});
  std::set<std::string> listed;
  for (const auto& f : r.files) listed.insert(path_key(f.path));
  std::map<std::string, std::string> problems;
  for (const auto& p : r.problems) problems[path_key(p.where)] = p.reason;

  std::size_t want_listed = 0, want_problems = 0;
  for (const auto& e : expected["decode"]) {
    const std::string key = entry_key(e), scan = e["scan"];
    if (scan == "listed") {
      ++want_listed;
      EXPECT_TRUE(listed.count(key)) << e["path"] << " not listed";
    } else if (scan == "problem") {
      ++want_problems;
      ASSERT_TRUE(problems.count(key)) << e["path"] << " not reported";
      EXPECT_NE(problems[key].find(e["scan_message"].get<std::string>()), std::string::npos)
          << e["path"] << ": " << problems[key];
    } else {
      EXPECT_FALSE(listed.count(key) || problems.count(key)) << e["path"] << " not ignored";
    }
  }
  EXPECT_EQ(r.files.size(), want_listed);
  EXPECT_EQ(r.problems.size(), want_problems);
  EXPECT_TRUE(std::is_sorted(r.files.begin(), r.files.end(),
                             [](const auto& a, const auto& b) { return a.path < b.path; }));
}

TEST(ScanTest, NamesThatAreNotUtf8AreListedAsTheirBytes) {
  const ScanResult r = scan_inputs({kBad / "names"});
  std::set<std::string> got;
  for (const auto& f : r.files) got.insert(f.path.filename().string());
  EXPECT_TRUE(got.count("invalid \xFF\xFE utf8.jpg"));
  EXPECT_TRUE(got.count("latin1 caf\xE9.jpg"));
  EXPECT_TRUE(got.count("new\nline.jpg"));
  EXPECT_FALSE(is_valid_utf8("latin1 caf\xE9.jpg"));
  EXPECT_EQ(utf8_display("latin1 caf\xE9.jpg"), "latin1 caf\uFFFD.jpg");
  EXPECT_EQ(base64("invalid \xFF\xFE utf8.jpg"), "aW52YWxpZCD//iB1dGY4LmpwZw==");
}

TEST(ScanTest, ManifestsLoadAsExpected) {
  const auto expected = expected_outcomes();
  ASSERT_GE(expected["manifests"].size(), 6u);
  for (const auto& m : expected["manifests"]) {
    const fs::path csv = kBad / m["path"].get<std::string>();
    SCOPED_TRACE(csv.string());
    if (m["outcome"] == "error") {
      try {
        read_manifest(csv);
        ADD_FAILURE() << "loaded";
      } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(m["message"].get<std::string>()), std::string::npos)
            << e.what();
      }
      continue;
    }
    const ScanResult r = read_manifest(csv);
    ASSERT_EQ(r.files.size(), m["files"].size());
    for (std::size_t i = 0; i < r.files.size(); ++i) {
      const auto& want = m["files"][i];
      EXPECT_EQ(r.files[i].path, kBad / want["path"].get<std::string>());
      if (want.contains("metadata")) {
        EXPECT_EQ(r.files[i].metadata, want["metadata"]);
      }
      r.files[i].metadata.dump();  // what the indexer does: must not throw (type_error.316)
    }
    ASSERT_EQ(r.problems.size(), m["problems"].size());
    for (std::size_t i = 0; i < r.problems.size(); ++i) {
      EXPECT_NE(joined(r.problems[i]).find(m["problems"][i].get<std::string>()), std::string::npos)
          << joined(r.problems[i]);
    }
  }
}

TEST(ScanTest, ManifestEdgeCases) {
  // A 1 MB field: its row is left out with the cause (store::kMaxMetadataBytes), alone.
  const ScanResult big = read_manifest(kBad / "manifests/big_field.csv");
  EXPECT_TRUE(big.files.empty());
  ASSERT_EQ(big.problems.size(), 1u);
  EXPECT_NE(joined(big.problems[0]).find("bytes as JSON, at most 65536"), std::string::npos)
      << joined(big.problems[0]);
  // Quoted newlines do not start rows: the second record is row 3, on line 4.
  TempDir t;
  t.file("a.jpg");
  const fs::path csv = t.file("m.csv", "file,note\n\"a.jpg\",\"two\nlines\"\nb.jpg,x\n");
  const ScanResult r = read_manifest(csv);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].where, csv.string() + " row 3 (line 4)");
  // A header cell that is not UTF-8 refuses the whole manifest.
  const fs::path bad_header = t.file("h.csv", "file,caf\xE9\na.jpg,x\n");
  EXPECT_THROW(read_manifest(bad_header), std::runtime_error);
  // Through scan_inputs the problem names the manifest once, not twice.
  const ScanResult s = scan_inputs({kBad / "manifests/no_file_column.csv"});
  ASSERT_EQ(s.problems.size(), 1u);
  EXPECT_EQ(s.problems[0].reason.rfind("no file column", 0), 0u) << s.problems[0].reason;
  // A row naming a FIFO is refused as such.
  ASSERT_EQ(mkfifo((t.path / "f.jpg").c_str(), 0600), 0);
  const ScanResult f = read_manifest(t.file("f.csv", "file\nf.jpg\n"));
  ASSERT_EQ(f.problems.size(), 1u);
  EXPECT_NE(f.problems[0].reason.find("not a regular file (a FIFO)"), std::string::npos);
}

// Bad quoting names the manifest, the row and line, and the cause in words (not libcsv's "error
// parsing data while strict checking enabled").
TEST(ScanTest, MalformedCsvNamesRowLineAndCause) {
  TempDir t;
  t.file("a.jpg");
  t.file("b.jpg");
  for (const auto& [name, text, where, cause] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           // The quote opened in row 3 runs to the end of the file.
           {"open.csv", "file,note\na.jpg,x\nb.jpg,\"never closed\nc.jpg,y\n", "row 3 (line 3)",
            "unterminated quoted field"},
           {"inner.csv", "file,note\na.jpg,x\r\nb.jpg,say \"hi\"\r\n", "row 3 (line 3)",
            "a double quote inside an unquoted field"},
           // Row 2 spans lines 2-3; the stray text follows the closing quote on line 3.
           {"after.csv", "file,note\na.jpg,\"two\nlines\"x\nb.jpg,y\n", "row 2 (line 3)",
            "text after the closing quote of the field that opens on line 2"},
           {"spaced.csv", "file,note\na.jpg,\"a\" \"b\"\n", "row 2 (line 2)",
            "text after the closing quote"},
       }) {
    const fs::path csv = t.file(name, text);
    const std::string what = manifest_error(csv);
    EXPECT_EQ(what.rfind(csv.string() + ": malformed CSV in " + where + ": ", 0), 0u) << what;
    EXPECT_NE(what.find(cause), std::string::npos) << what;
    EXPECT_EQ(what.find("strict checking"), std::string::npos) << what;
  }
  // Still fine: "" inside quotes, spaces around a quoted field, a quoted field at the end.
  const ScanResult ok =
      read_manifest(t.file("ok.csv", "file,note\na.jpg, \"say \"\"hi\"\"\" \nb.jpg,\"x\""));
  EXPECT_EQ(ok.files.size(), 2u);
  EXPECT_TRUE(ok.problems.empty());
}

// A second file column would be stored as metadata under the file column's name: refused.
TEST(ScanTest, DuplicateFileColumnIsRefusedNamingIt) {
  TempDir t;
  t.file("a.jpg");
  t.file("b.jpg");
  const fs::path csv = t.file("dup.csv", "file,category,File\na.jpg,shoes,b.jpg\n");
  try {
    read_manifest(csv);
    ADD_FAILURE() << "loaded";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(csv.string() + ": columns 1 and 3 are both named 'File'"),
              std::string::npos)
        << what;
  }
  ScanOptions by_name;
  by_name.file_column = "path";
  const fs::path two_paths = t.file("paths.csv", "path,file,path\na.jpg,x,b.jpg\n");
  EXPECT_THROW(read_manifest(two_paths, by_name), std::runtime_error);
  // Another column that merely could be a file column stays metadata.
  const ScanResult r = read_manifest(t.file("other.csv", "file,path\na.jpg,somewhere\n"));
  ASSERT_EQ(r.files.size(), 1u);
  EXPECT_EQ(r.files[0].metadata, (nlohmann::json{{"path", "somewhere"}}));
}

TEST(ScanTest, SymlinkedFoldersAreNotFollowedAndFoldersNamedLikeImagesNotListed) {
  TempDir t;
  t.file("sub/x.jpg");
  t.file("y.jpg/inner.png");
  t.file(".hidden/h.jpg");
  t.file(".h.jpg");
  fs::create_directory_symlink("..", t.path / "sub/up");  // a loop back to the root
  fs::create_directory_symlink(t.path / "sub", t.path / "z.jpg");
  fs::create_symlink(t.path / "sub/x.jpg", t.path / "link.jpg");
  ScanResult r = scan_inputs({t.path});
  EXPECT_EQ(names(r, t.path),
            (std::vector<std::string>{"link.jpg", "sub/x.jpg", "y.jpg/inner.png"}));
  EXPECT_TRUE(r.problems.empty()) << joined(r.problems.at(0));
  ScanOptions hidden;
  hidden.include_hidden = true;
  r = scan_inputs({t.path}, hidden);
  EXPECT_EQ(r.files.size(), 5u);
}

TEST(ScanTest, BadSymlinksAreReportedAndTheWalkGoesOn) {
  TempDir t;
  t.file("a.jpg");
  fs::create_symlink(t.path / "gone.jpg", t.path / "broken.jpg");
  fs::create_symlink(t.path / "loop2.jpg", t.path / "loop1.jpg");
  fs::create_symlink(t.path / "loop1.jpg", t.path / "loop2.jpg");
  fs::create_symlink(t.path / "gone", t.path / "notes");  // no image name: not a candidate
  const ScanResult r = scan_inputs({t.path});
  EXPECT_EQ(names(r, t.path), std::vector<std::string>{"a.jpg"});
  ASSERT_EQ(r.problems.size(), 3u);
  EXPECT_EQ(joined(r.problems[0]), (t.path / "broken.jpg").string() +
                                       ": broken symlink (its target " +
                                       (t.path / "gone.jpg").string() + " does not exist)");
  EXPECT_EQ(joined(r.problems[1]),
            (t.path / "loop1.jpg").string() + ": symlink loop (too many levels of symbolic links)");
  EXPECT_EQ(r.problems[2].where, (t.path / "loop2.jpg").string());
  // Only the broken one is gone for sure (an indexed one is then vanished, not a failure).
  EXPECT_TRUE(r.problems[0].dangling_symlink);
  EXPECT_FALSE(r.problems[1].dangling_symlink);
  EXPECT_FALSE(r.problems[2].dangling_symlink);
  // Given directly as inputs, too.
  const ScanResult direct = scan_inputs({t.path / "broken.jpg", t.path / "loop1.jpg"});
  ASSERT_EQ(direct.problems.size(), 2u);
  EXPECT_NE(direct.problems[0].reason.find("broken symlink"), std::string::npos);
  EXPECT_NE(direct.problems[1].reason.find("symlink loop"), std::string::npos);
}

// An empty argument is a failed input named as such, not an exception (fs::absolute("")
// throws), and the inputs after it are still scanned.
TEST(ScanTest, EmptyInputIsAProblemNamedAsSuch) {
  TempDir t;
  t.file("a.jpg");
  ScanResult r;
  ASSERT_NO_THROW(r = scan_inputs({fs::path(), t.path}));
  EXPECT_EQ(names(r, t.path), std::vector<std::string>{"a.jpg"});
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(joined(r.problems[0]), "(empty path): an empty argument names no file or folder");
  EXPECT_THROW(lookalike::pipeline::normalize_path(""), std::invalid_argument);
}

// ".csv" in any case is a manifest, for the scan and for the indexer's vanished check alike.
TEST(ScanTest, ManifestExtensionIsCaseInsensitive) {
  using lookalike::pipeline::is_manifest_path;
  for (const char* name : {"a.csv", "a.CSV", "a.Csv", "dir/a.cSv"}) {
    EXPECT_TRUE(is_manifest_path(name)) << name;
  }
  for (const char* name : {"a.csv.jpg", "csv", "a.tsv", "a.csvx"}) {
    EXPECT_FALSE(is_manifest_path(name)) << name;
  }
  TempDir t;
  t.file("a.jpg");
  const ScanResult r = scan_inputs({t.file("list.Csv", "file,tag\na.jpg,x\n")});
  ASSERT_EQ(r.files.size(), 1u);
  EXPECT_EQ(r.files[0].metadata, (nlohmann::json{{"tag", "x"}}));
}

// Two metadata columns of one name would keep one value of each row: refused, naming them. A
// column with no name is ignored while every row leaves it empty (a trailing comma), refused
// once a row has a value in it (that would be stored under the key "").
TEST(ScanTest, MetadataColumnNamesMustBeUniqueAndPresent) {
  TempDir t;
  t.file("a.jpg");
  const fs::path dup = t.file("dup.csv", "file,tag,tag,\na.jpg,x,y,\n");
  EXPECT_EQ(manifest_error(dup).rfind(dup.string() + ": columns 2 and 3 are both named 'tag'", 0),
            0u)
      << manifest_error(dup);
  const fs::path unnamed = t.file("unnamed.csv", "file,tag,,\na.jpg,x,,\n\na.jpg,x,,z\n");
  EXPECT_EQ(
      manifest_error(unnamed).rfind(unnamed.string() + ": column 4 has no name, yet row 3 (line "
                                                       "4) has a value in it",
                                    0),
      0u)
      << manifest_error(unnamed);
  // Differently cased names are different keys: both kept.
  const ScanResult cased = read_manifest(t.file("cased.csv", "file,Tag,tag\na.jpg,x,y\n"));
  ASSERT_EQ(cased.files.size(), 1u);
  EXPECT_EQ(cased.files[0].metadata, (nlohmann::json{{"Tag", "x"}, {"tag", "y"}}));
  // Trailing commas everywhere (as spreadsheets export): the empty column is ignored.
  const ScanResult trailing = read_manifest(t.file("trailing.csv", "file,tag,\na.jpg,x,\n"));
  ASSERT_EQ(trailing.files.size(), 1u);
  EXPECT_TRUE(trailing.problems.empty());
  EXPECT_EQ(trailing.files[0].metadata, (nlohmann::json{{"tag", "x"}}));
  // Through scan_inputs: one problem naming the manifest, nothing listed.
  const ScanResult s = scan_inputs({dup});
  EXPECT_TRUE(s.files.empty());
  ASSERT_EQ(s.problems.size(), 1u);
  EXPECT_EQ(s.problems[0].where, dup.string());
}

// A row's problem names the line it starts on as well when blank lines or quoted newlines come
// before it (the row number counts CSV records).
TEST(ScanTest, RowProblemsNameTheLine) {
  TempDir t;
  t.file("a.jpg");
  const fs::path csv = t.file("b.csv",
                              "file,note\n"             // line 1, row 1
                              "\n"                      // line 2: blank, no row
                              "a.jpg,\"two\nlines\"\n"  // lines 3-4, row 2
                              "  \r\n"                  // line 5: blank (spaces)
                              "missing.jpg,x\r\n"       // line 6, row 3
                              "a.jpg,\"x\",extra\r"     // line 7 (lone CR), row 4
                              "\"missing2.jpg\",y");    // line 8, row 5, no newline at the end
  const ScanResult r = read_manifest(csv);
  ASSERT_EQ(r.files.size(), 1u);
  ASSERT_EQ(r.problems.size(), 3u);
  EXPECT_EQ(joined(r.problems[0]), csv.string() + " row 3 (line 6): " +
                                       (t.path / "missing.jpg").string() + ": file not found");
  EXPECT_EQ(r.problems[1].where, csv.string() + " row 4 (line 7)");
  EXPECT_EQ(r.problems[2].where, csv.string() + " row 5 (line 8)");
  // Where rows and lines agree, the row alone, as before.
  const ScanResult plain = read_manifest(t.file("p.csv", "file\na.jpg\nmissing.jpg\n"));
  ASSERT_EQ(plain.problems.size(), 1u);
  EXPECT_EQ(plain.problems[0].where, t.path.string() + "/p.csv row 3");
}

// A NUL byte in the file cell: the system would read the name up to it (another file than the
// one stored, so a later folder index would add a second entry). The row is left out.
TEST(ScanTest, FileCellWithNulByteIsRefused) {
  TempDir t;
  t.file("x.jpg");
  t.file("y.jpg");
  const fs::path csv = t.file("n.csv", std::string("file,tag\nx.jpg") + '\0' + "junk,a\ny.jpg,b\n");
  const ScanResult r = read_manifest(csv);
  ASSERT_EQ(r.files.size(), 1u);
  EXPECT_EQ(r.files[0].path, t.path / "y.jpg");
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].where, csv.string() + " row 2");
  EXPECT_NE(r.problems[0].reason.find("contains a NUL byte"), std::string::npos)
      << r.problems[0].reason;
}

// A folder input whose walk finds no image file (an unmounted drive's mount point) is listed,
// so that the indexer keeps what the collection holds under it.
TEST(ScanTest, FolderInputsWithNoImageFileAreListed) {
  TempDir t;
  t.file("full/a.jpg");
  t.file("other/notes.txt");
  fs::create_directories(t.path / "empty/sub");
  t.file("hidden/.b.jpg");
  const ScanResult r = scan_inputs({t.path / "full", t.path / "empty", t.path / "other",
                                    t.path / "hidden", t.path / "full/a.jpg"});
  EXPECT_EQ(r.empty_folders,
            (std::vector<fs::path>{t.path / "empty", t.path / "other", t.path / "hidden"}));
  ScanOptions hidden;
  hidden.include_hidden = true;
  EXPECT_TRUE(scan_inputs({t.path / "hidden"}, hidden).empty_folders.empty());
}

// Root reads any folder whatever its mode, so the unreadable folder is walked by a child that
// has dropped to the unprivileged "nobody" (uid/gid 65534).
TEST(ScanTest, UnreadableSubfolderIsReportedAndTheWalkGoesOn) {
  TempDir t;
  t.file("a/1.jpg");
  t.file("locked/2.jpg");
  t.file("z/3.jpg");
  fs::permissions(t.path / "locked", fs::perms::none);
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(out[0]);
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(77);
    const ScanResult r = scan_inputs({t.path});
    std::string report;
    for (const auto& n : names(r, t.path)) report += "file " + n + "\n";
    for (const auto& p : r.problems) report += "problem " + joined(p) + "\n";
    if (write(out[1], report.data(), report.size()) < 0) _exit(2);
    _exit(0);
  }
  close(out[1]);
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) report.append(buf, std::size_t(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot drop privileges";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(report, "file a/1.jpg\nfile z/3.jpg\nproblem " + (t.path / "locked").string() +
                        ": cannot read folder: Permission denied\n");
}

TEST(FilesTest, ReadFileRefusesWhatIsNotARegularFileBeforeOpeningIt) {
  TempDir t;
  const fs::path ok = t.file("ok.bin", std::string(100, 'a'));
  EXPECT_EQ(read_file(ok).size(), 100u);
  auto message = [](const fs::path& p,
                    std::int64_t limit = lookalike::pipeline::kDefaultMaxReadBytes) {
    try {
      read_file(p, limit);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(ok, 99), ok.string() + ": file is 100 bytes, over the limit of 99");
  EXPECT_EQ(message(t.path), t.path.string() + ": not a regular file (a directory)");
  EXPECT_EQ(message(t.path / "none"), (t.path / "none").string() + ": No such file or directory");
  fs::create_symlink(t.path / "gone", t.path / "broken");
  EXPECT_NE(message(t.path / "broken").find(": broken symlink (its target "), std::string::npos);
  fs::create_symlink(t.path / "loop", t.path / "loop");
  EXPECT_NE(message(t.path / "loop").find(": symlink loop"), std::string::npos);
  // The 3 GiB sparse file is refused from its size, not read.
  EXPECT_NE(message(kBad / "decode/sparse_3gb.jpg").find("file is 3221225472 bytes"),
            std::string::npos);
  // A FIFO must fail at once: opening it for reading would wait for a writer.
  const fs::path fifo = t.path / "fifo.jpg";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EXIT(
      {
        alarm(5);
        const std::string m = message(fifo);
        std::_Exit(m == fifo.string() + ": not a regular file (a FIFO)" ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(FilesTest, Utf8Validation) {
  for (const char* ok : {"", "abc", "\xC3\xA9", "\xE7\x94\xBB", "\xF0\x9F\x98\x80",
                         "\xF4\x8F\xBF\xBF", "\xEF\xBF\xBD", "\xED\x9F\xBF"}) {
    EXPECT_TRUE(is_valid_utf8(ok)) << ok;
  }
  for (const char* bad : {"\x80", "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xED\xA0\x80",
                          "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xFF", "\xE7\x94", "abc\xE9"}) {
    EXPECT_FALSE(is_valid_utf8(bad)) << bad;
  }
  EXPECT_TRUE(is_valid_utf8(std::string("a\0b", 3)));  // NUL is a valid code point
}

// The counts of U+FFFD are Python's bytes.decode("utf-8", "replace").
TEST(FilesTest, Utf8DisplayReplacesEachMaximalSubpart) {
  const std::string r = "\uFFFD";
  EXPECT_EQ(utf8_display("\xFF"), r);
  EXPECT_EQ(utf8_display("a\xE7\x94"
                         "b"),
            "a" + r + "b");
  EXPECT_EQ(utf8_display("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(utf8_display("\xF0\x9F\x98"), r);
  EXPECT_EQ(utf8_display("\xC0\xAF"), r + r);
  EXPECT_EQ(utf8_display("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(utf8_display("\xE0\x80\x80"), r + r + r);
  EXPECT_EQ(utf8_display("\xF0\x9F\x98\x80x\x80"), "\xF0\x9F\x98\x80x" + r);
  const std::string fine = "ünïcødé 画像.jpg";
  EXPECT_EQ(utf8_display(fine), fine);
  EXPECT_TRUE(is_valid_utf8(utf8_display("caf\xE9 \xFF\xFE")));
}

TEST(FilesTest, Base64FollowsRfc4648) {
  // RFC 4648 section 10 test vectors.
  const std::vector<std::pair<std::string, std::string>> vectors = {{"", ""},
                                                                    {"f", "Zg=="},
                                                                    {"fo", "Zm8="},
                                                                    {"foo", "Zm9v"},
                                                                    {"foob", "Zm9vYg=="},
                                                                    {"fooba", "Zm9vYmE="},
                                                                    {"foobar", "Zm9vYmFy"}};
  for (const auto& [in, out] : vectors) EXPECT_EQ(base64(in), out) << in;
  EXPECT_EQ(base64("\xFF\xFE"), "//4=");
  EXPECT_EQ(base64(std::string("\0\0\0", 3)), "AAAA");
}

// One escaper for every XML or HTML text lookalike writes (map SVG, eval plots, /docs).
TEST(Files, MarkupTextEscapesMarkupAndDropsWhatXmlForbids) {
  using lookalike::pipeline::markup_text;
  EXPECT_EQ(markup_text("<a href=\"x\">T-shirts & 'tops'</a>"),
            "&lt;a href=&quot;x&quot;&gt;T-shirts &amp; &apos;tops&apos;&lt;/a&gt;");
  EXPECT_EQ(markup_text("bell\x07 tab\tline\nend"), "bell tab\tline\nend");
  EXPECT_EQ(markup_text("caf\xE9 <"), "caf\uFFFD &lt;");
  EXPECT_EQ(markup_text(""), "");
}
