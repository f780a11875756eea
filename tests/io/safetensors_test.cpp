// safetensors: round trips for every dtype and metadata, and every kind of corruption
// raising mixpa::Error (never a crash or an unbounded allocation).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "common/check.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("mixpa_io_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::vector<std::byte> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

std::vector<std::byte> with_header(const std::string& json, std::size_t data_bytes) {
  std::vector<std::byte> v(8 + json.size() + data_bytes);
  for (int i = 0; i < 8; ++i) v[i] = static_cast<std::byte>((json.size() >> (8 * i)) & 0xff);
  std::memcpy(v.data() + 8, json.data(), json.size());
  return v;
}

SafetensorsFile sample() {
  SafetensorsFile f;
  f.metadata["scale"] = "0.125";
  f.metadata["note"] = "hello";
  int i = 0;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kF64, DType::kI32, DType::kI64, DType::kF8E4M3,
                  DType::kF8E5M2}) {
    StoredTensor s{std::string("t") + std::string(dtype_name(t)), t, {2, 3}, {}};
    s.bytes.resize(6 * dtype_size(t));
    for (auto& b : s.bytes) b = static_cast<std::byte>(i++ * 37);
    f.tensors.push_back(s);
  }
  f.tensors.push_back(StoredTensor{"empty", DType::kF32, {0, 4}, {}});
  return f;
}

TEST(Safetensors, RoundTripEveryDtypeAndMetadata) {
  const std::string path = temp_path("rt.safetensors");
  const SafetensorsFile f = sample();
  write_safetensors(path, f);
  const SafetensorsFile g = read_safetensors(path);
  EXPECT_EQ(g.metadata, f.metadata);
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (const StoredTensor& t : f.tensors) {
    const StoredTensor* u = g.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(u->dtype, t.dtype);
    EXPECT_EQ(u->shape, t.shape);
    EXPECT_EQ(u->bytes, t.bytes);
  }
  // No temporary file is left beside the target.
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    EXPECT_EQ(e.path().string().find(path + ".tmp"), std::string::npos);
  std::remove(path.c_str());
}

TEST(Safetensors, EveryTruncationIsAnError) {
  const std::string path = temp_path("trunc.safetensors");
  write_safetensors(path, sample());
  const std::vector<std::byte> bytes = read_all(path);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    EXPECT_THROW(parse_safetensors(bytes.data(), n, "cut"), Error) << "truncated at " << n;
  EXPECT_NO_THROW(parse_safetensors(bytes.data(), bytes.size(), "whole"));
  std::remove(path.c_str());
}

TEST(Safetensors, ByteFlipsNeverCrash) {
  const std::string path = temp_path("flip.safetensors");
  write_safetensors(path, sample());
  const std::vector<std::byte> bytes = read_all(path);
  for (std::size_t i = 0; i < bytes.size(); ++i)
    for (std::uint8_t x : {0x01, 0x80, 0xff}) {
      std::vector<std::byte> b = bytes;
      b[i] ^= static_cast<std::byte>(x);
      try {
        parse_safetensors(b.data(), b.size(), "flip");
      } catch (const Error&) {
      }
    }
  std::remove(path.c_str());
}

void expect_error(const std::string& json, std::size_t data, const char* fragment) {
  const auto v = with_header(json, data);
  try {
    parse_safetensors(v.data(), v.size(), "f");
    ADD_FAILURE() << "accepted: " << json;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Safetensors, CorruptHeaders) {
  expect_error("{not json", 0, "not valid JSON");
  expect_error("[1,2]", 0, "not a JSON object");
  expect_error(R"({"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})", 1, "dtype 'Q8'");
  expect_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4, "need 8 bytes");
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4, "outside the data section");
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8, "outside the data section");
  expect_error(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "non-negative");
  expect_error(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", 4, "need");
  expect_error(R"({"a":{"dtype":"F32","shape":[1]}})", 4, "data_offsets");
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
               4, "overlap");
  expect_error(R"({"__metadata__":{"scale":1.0}})", 0, "not a string");
}

TEST(Safetensors, HugeHeaderLengthIsRejectedWithoutAllocating) {
  std::vector<std::byte> v(16, std::byte{0});
  for (int i = 0; i < 8; ++i) v[i] = std::byte{0xff};
  EXPECT_THROW(parse_safetensors(v.data(), v.size(), "huge"), Error);
  v[7] = std::byte{0};
  v[6] = std::byte{0};
  v[5] = std::byte{0};
  v[4] = std::byte{0};
  v[3] = std::byte{0};  // ~16 MB claimed in a 16-byte file
  EXPECT_THROW(parse_safetensors(v.data(), v.size(), "long"), Error);
}

TEST(Safetensors, MissingFileIsAnError) {
  EXPECT_THROW(read_safetensors("/nonexistent/dir/x.safetensors"), Error);
  EXPECT_THROW(write_safetensors("/nonexistent/dir/x.safetensors", sample()), Error);
}

TEST(CaseFile, RoundTripGivesTheSameBytesAndOutput) {
  const Case c = generate_case(testing::small_spec("file", 3, 20, 4, 64, 16, {0, 17, 40}, 0.3), 5);
  const std::string path = temp_path("case.safetensors");
  save_case(path, c);
  const Case d = load_case(path);
  EXPECT_EQ(d.scale, 0.3);
  EXPECT_TRUE(d.has_scale);
  EXPECT_EQ(d.context_lens, c.context_lens);
  EXPECT_EQ(d.block_table, c.block_table);
  EXPECT_EQ(0, std::memcmp(d.key_cache.data(), c.key_cache.data(), c.key_cache.size() * 2));
  EXPECT_EQ(testing::run_case(d, "reference"), testing::run_case(c, "reference"));
  std::remove(path.c_str());
}

TEST(CaseFile, MissingAndMistypedTensorsAreNamed) {
  const Case c = generate_case(testing::small_spec("file", 2, 16, 1, 64, 16, {5, 7}), 5);
  const std::string path = temp_path("bad.safetensors");
  save_case(path, c);
  SafetensorsFile f = read_safetensors(path);
  SafetensorsFile no_query = f;
  std::erase_if(no_query.tensors, [](const StoredTensor& t) { return t.name == "query"; });
  write_safetensors(path, no_query);
  try { load_case(path); ADD_FAILURE(); } catch (const Error& e) { EXPECT_NE(std::string(e.what()).find("query: missing"), std::string::npos); }
  SafetensorsFile f32 = f;
  for (auto& t : f32.tensors)
    if (t.name == "block_table") t.dtype = DType::kF32;
  write_safetensors(path, f32);
  try { load_case(path); ADD_FAILURE(); } catch (const Error& e) { EXPECT_NE(std::string(e.what()).find("block_table: dtype is F32, expected I32 or I64"), std::string::npos); }
  SafetensorsFile bad_scale = f;
  bad_scale.metadata["scale"] = "abc";
  write_safetensors(path, bad_scale);
  EXPECT_THROW(load_case(path), Error);
  bad_scale.metadata.erase("scale");
  write_safetensors(path, bad_scale);
  EXPECT_FALSE(load_case(path).has_scale);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace mixpa
