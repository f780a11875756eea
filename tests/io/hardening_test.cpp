// The reader and writer against crafted files and hostile directories (issue 15): exclusive
// temporaries, concurrent writers of one path, duplicate keys, shapes whose products overflow,
// directories as input, escaped strings in messages.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "common/check.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;

class IoHardening : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mixpa_ioh_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir_)) r.push_back(e.path().filename().string());
    std::sort(r.begin(), r.end());
    return r;
  }
  fs::path dir_;
};

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::byte> image(const std::string& header, std::size_t data_bytes = 0) {
  std::vector<std::byte> v(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) v[i] = static_cast<std::byte>((header.size() >> (8 * i)) & 0xff);
  std::memcpy(v.data() + 8, header.data(), header.size());
  return v;
}

std::string parse_error(const std::string& header, std::size_t data_bytes = 0) {
  const auto v = image(header, data_bytes);
  try {
    const SafetensorsFile f = parse_safetensors(v.data(), v.size(), "crafted");
    const Case c = case_from_file(f, "crafted");
    (void)c.inputs();
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

// --- 3: exclusive temporaries ---------------------------------------------------------------

TEST_F(IoHardening, LinkAtTheOldTemporaryNameIsNotWrittenThrough) {
  std::ofstream(path("victim")) << "precious";
  fs::create_symlink(path("victim"), path("f.safetensors.tmp." + std::to_string(::getpid())));
  write_file_atomically(path("f.safetensors"), "new content");
  EXPECT_EQ(slurp(path("victim")), "precious");
  EXPECT_EQ(slurp(path("f.safetensors")), "new content");
  SafetensorsFile f;
  f.tensors.push_back(StoredTensor{"t", DType::kF32, {1}, std::vector<std::byte>(4)});
  write_safetensors(path("g.safetensors"), f);
  fs::create_symlink(path("victim"), path("g.safetensors.tmp." + std::to_string(::getpid())));
  write_safetensors(path("g.safetensors"), f);
  EXPECT_EQ(slurp(path("victim")), "precious");
  EXPECT_EQ(read_safetensors(path("g.safetensors")).tensors.size(), 1u);
}

TEST_F(IoHardening, TemporaryNamesAreUniqueAndLeftNowhere) {
  {
    AtomicFileWriter a(path("x")), b(path("x"));
    a.write("a", 1);
    b.write("b", 1);
    EXPECT_EQ(entries().size(), 2u);  // two distinct temporaries
    b.commit();
  }  // a is dropped uncommitted: its temporary goes
  EXPECT_EQ(entries(), std::vector<std::string>{"x"});
  EXPECT_EQ(slurp(path("x")), "b");
}

TEST_F(IoHardening, FailuresNameThePathAndLeaveNothing) {
  fs::create_directories(dir_ / "d");
  EXPECT_THROW(write_file_atomically(path("missing/x"), "a"), Error);
  try {
    write_file_atomically(path("d"), "a");
    ADD_FAILURE() << "wrote over a directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(check_output_path(path("missing/x"), "--output"), Error);
  check_output_path(path("fine"), "--output");
  EXPECT_EQ(entries(), std::vector<std::string>{"d"});
}

// --- 4: concurrent writers of one path -----------------------------------------------------

TEST_F(IoHardening, ConcurrentWritersOfOnePathLeaveOneCompleteFile) {
  constexpr int kThreads = 8, kRounds = 20;
  std::vector<SafetensorsFile> files(kThreads);
  std::vector<std::string> images(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    StoredTensor s{"t", DType::kI32, {64 * 1024}, std::vector<std::byte>(256 * 1024, static_cast<std::byte>(t + 1))};
    files[t].metadata["writer"] = std::to_string(t);
    files[t].tensors.push_back(std::move(s));
    write_safetensors(path("ref" + std::to_string(t)), files[t]);
    images[t] = slurp(path("ref" + std::to_string(t)));
    fs::remove(path("ref" + std::to_string(t)));
  }
  std::atomic<int> errors{0};
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        try {
          write_safetensors(path("shared.safetensors"), files[t]);
        } catch (const Error&) {
          ++errors;
        }
      });
    for (auto& th : threads) th.join();
    const std::string got = slurp(path("shared.safetensors"));
    EXPECT_NE(std::find(images.begin(), images.end(), got), images.end()) << "round " << round << ": a mixed file";
  }
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(entries(), std::vector<std::string>{"shared.safetensors"});
}

// --- 5: shape products that overflow, on zero-element tensors -----------------------------

std::string case_header(const std::string& query_shape, const std::string& cache_shape,
                        const std::string& table_shape = "[1,1]", const std::string& lens_shape = "[1]") {
  auto entry = [](const char* name, const char* dtype, const std::string& shape, int begin, int end) {
    return "\"" + std::string(name) + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(begin) + "," + std::to_string(end) + "]}";
  };
  return "{" + entry("query", "BF16", query_shape, 0, 0) + "," + entry("key_cache", "BF16", cache_shape, 0, 0) + "," +
         entry("value_cache", "BF16", cache_shape, 0, 0) + "," + entry("block_table", "I32", table_shape, 0, 0) + "," +
         entry("context_lens", "I32", lens_shape, 0, 0) + "}";
}

TEST_F(IoHardening, ZeroElementTensorsWithHugeDimensionsAreRejectedWithoutOverflow) {
  const std::string p40 = "1099511627776", p62 = "4611686018427387904", i31 = "2147483647";
  const std::string cache = "[0,16,1,64]";
  for (const auto& [q, k, bt, cl] : std::vector<std::array<std::string, 4>>{
           {"[0," + p40 + "," + p40 + "]", cache, "[0,1]", "[0]"},
           {"[" + p62 + ",4,0]", cache, "[0,1]", "[0]"},
           {"[0,4,64]", "[0," + i31 + "," + i31 + "," + i31 + "]", "[0,1]", "[0]"},
           {"[0,4,64]", "[" + i31 + "," + i31 + "," + i31 + ",0]", "[0,1]", "[0]"},
           {"[0,4,64]", cache, "[0," + p62 + "]", "[0]"},
           {"[0,4,64]", cache, "[" + p62 + ",0]", "[0]"},
           {"[0,4,64]", cache, "[0,1]", "[" + p62 + "]"},
       }) {
    const std::string msg = parse_error(case_header(q, k, bt, cl));
    EXPECT_NE(msg, "(accepted)") << q << " " << k << " " << bt << " " << cl;
    EXPECT_EQ(msg.rfind("crafted: ", 0), 0u) << msg;
  }
}

TEST(TensorViewOverflow, ElementCountsAreCheckedNotWrapped) {
  TensorView v;
  v.rank = 3;
  v.shape = {std::int64_t{1} << 62, 4, 0, 0};
  EXPECT_EQ(v.numel(), 0);
  v.shape = {std::int64_t{1} << 62, 4, 1, 0};
  EXPECT_THROW(v.numel(), Error);
  v.shape = {0, std::int64_t{1} << 40, std::int64_t{1} << 40, 0};
  v.strides = {0, std::int64_t{1} << 40, 1, 0};
  EXPECT_EQ(v.numel(), 0);
  EXPECT_FALSE(v.is_contiguous());
  EXPECT_THROW(TensorView::contiguous(nullptr, DType::kBF16, {0, std::int64_t{1} << 40, std::int64_t{1} << 40}), Error);
}

// --- 6: a directory as input -----------------------------------------------------------------

TEST_F(IoHardening, DirectoryAsInputIsNamed) {
  fs::create_directories(dir_ / "d");
  try {
    read_safetensors(path("d"));
    ADD_FAILURE() << "read a directory";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path("d") + ": is a directory, expected a safetensors file");
  }
  EXPECT_THROW(load_case(path("d")), Error);
  EXPECT_THROW(read_safetensors("/dev/null"), Error);
}

// --- 8: duplicate keys ----------------------------------------------------------------------

TEST(ParseHardening, DuplicateKeysAreRejected) {
  const std::string t = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
  const std::string u = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}";
  auto error_of = [](const std::string& header, std::size_t data) -> std::string {
    const auto v = image(header, data);
    try {
      parse_safetensors(v.data(), v.size(), "f");
    } catch (const Error& e) {
      return e.what();
    }
    return "(accepted)";
  };
  EXPECT_EQ(error_of("{\"a\":" + t + ",\"a\":" + u + "}", 8), "f: tensor 'a' appears twice in the header");
  EXPECT_EQ(error_of("{\"__metadata__\":{\"scale\":\"1\",\"scale\":\"2\"},\"a\":" + t + "}", 4),
            "f: __metadata__ key 'scale' appears twice");
  EXPECT_EQ(error_of("{\"__metadata__\":{},\"__metadata__\":{},\"a\":" + t + "}", 4),
            "f: tensor '__metadata__' appears twice in the header");
  EXPECT_EQ(error_of("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
            "f: tensor 'a': field 'dtype' appears twice");
  // the same key in different objects is fine
  EXPECT_EQ(error_of("{\"__metadata__\":{\"a\":\"x\"},\"a\":" + t + "}", 4), "(accepted)");
}

// --- 9: strings from the file are escaped ---------------------------------------------------

TEST(ParseHardening, StringsInMessagesAreEscaped) {
  EXPECT_EQ(printable(std::string("BF\0\n16", 6)), "BF\\x00\\x0a16");
  EXPECT_EQ(printable("it's\\"), "it\\x27s\\x5c");
  EXPECT_EQ(printable(std::string(100, 'x'), 8), "xxxxxxxx... (100 bytes)");
  const std::string header = "{\"a\\u0000\\r\":{\"dtype\":\"X\\u0000Y\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  const auto v = image(header, 4);
  try {
    parse_safetensors(v.data(), v.size(), "f");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "f: tensor 'a\\x00\\x0d': dtype 'X\\x00Y' is not one of BF16, F16, F32, F64, I32, I64, F8_E4M3, F8_E5M2");
  }
}

}  // namespace
}  // namespace mixpa
