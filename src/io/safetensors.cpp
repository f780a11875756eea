// safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {str: str}}, then the data. Every field of the header is
// checked against the file size before any allocation, so a corrupt file costs at most its
// own size in memory and ends in a one-line mixpa::Error. A key that appears twice in one
// object is an error (JSON parsers disagree on which copy wins), and every string taken from
// the file is escaped before it goes into a message.
#include "io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "mixpa/error.h"

namespace mixpa {
namespace {

using nlohmann::json;

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit is 100 MB

[[noreturn]] void fail(const std::string& origin, const std::string& what) { throw Error(origin + ": " + what); }

std::optional<DType> parse_dtype(const std::string& s) {
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kF64, DType::kI32, DType::kI64, DType::kF8E4M3,
                 DType::kF8E5M2})
    if (dtype_name(t) == s) return t;
  return std::nullopt;
}

StoredTensor parse_entry(const std::string& origin, const std::string& name, const json& e, const std::byte* data,
                         std::uint64_t data_size) {
  const std::string where = "tensor '" + printable(name) + "'";
  if (!e.is_object()) fail(origin, where + ": header entry is not an object");
  if (!e.contains("dtype") || !e["dtype"].is_string()) fail(origin, where + ": missing string field 'dtype'");
  if (!e.contains("shape") || !e["shape"].is_array()) fail(origin, where + ": missing array field 'shape'");
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
    fail(origin, where + ": 'data_offsets' must be [begin, end]");
  StoredTensor t;
  t.name = name;
  const auto dtype = parse_dtype(e["dtype"].get<std::string>());
  if (!dtype)
    fail(origin, where + ": dtype '" + printable(e["dtype"].get<std::string>()) + "' is not one of BF16, F16, F32, F64, I32, I64, F8_E4M3, F8_E5M2");
  t.dtype = *dtype;
  if (e["shape"].size() > 8) fail(origin, where + ": rank " + std::to_string(e["shape"].size()) + " is above 8");
  unsigned __int128 elems = 1;
  for (const json& d : e["shape"]) {
    if (!d.is_number_unsigned()) fail(origin, where + ": shape entries must be non-negative integers");
    const std::uint64_t v = d.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      fail(origin, where + ": shape entry is too large");
    t.shape.push_back(static_cast<std::int64_t>(v));
    elems *= v;
    if (elems > data_size) elems = static_cast<unsigned __int128>(data_size) + 1;  // saturate: cannot fit anyway
  }
  const json& off = e["data_offsets"];
  if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    fail(origin, where + ": data_offsets must be non-negative integers");
  const std::uint64_t begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
  if (begin > end || end > data_size)
    fail(origin, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") outside the data section of " + std::to_string(data_size) + " bytes (file truncated?)");
  const unsigned __int128 need = elems * dtype_size(t.dtype);
  if (need != end - begin)
    fail(origin, where + ": shape and dtype need " + std::to_string(static_cast<std::uint64_t>(need)) +
                     " bytes but data_offsets span " + std::to_string(end - begin));
  t.bytes.assign(data + begin, data + end);
  return t;
}

// A parser callback that records the first key seen twice in one JSON object (nlohmann's
// DOM keeps the last copy silently). Object and array starts push a frame, their ends pop it;
// keys go into the innermost frame, which is an object's.
struct DuplicateKeys {
  struct Frame {
    bool is_object = false;
    std::string name;  // the key this object or array is the value of ("" at the top)
    std::set<std::string> keys;
  };
  std::vector<Frame> frames;
  std::string last_key, found;

  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        frames.push_back(Frame{event == E::object_start, frames.empty() ? "" : last_key, {}});
        break;
      case E::object_end:
      case E::array_end:
        if (!frames.empty()) frames.pop_back();
        break;
      case E::key:
        last_key = parsed.get<std::string>();
        if (!frames.empty() && frames.back().is_object && !frames.back().keys.insert(last_key).second && found.empty())
          found = describe(last_key);
        break;
      case E::value: break;
    }
    return true;
  }

  std::string describe(const std::string& key) const {
    const std::string k = "'" + printable(key) + "'";
    if (frames.size() == 1) return "tensor " + k + " appears twice in the header";
    const std::string& parent = frames.back().name;
    if (frames.size() == 2 && parent == "__metadata__") return "__metadata__ key " + k + " appears twice";
    if (frames.size() == 2) return "tensor '" + printable(parent) + "': field " + k + " appears twice";
    return "header: key " + k + " appears twice in one object";
  }
};

}  // namespace

std::string printable(std::string_view s, std::size_t max_chars) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (r.size() >= max_chars) {
      r += "... (" + std::to_string(s.size()) + " bytes)";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      r += buf;
    } else {
      r += static_cast<char>(c);
    }
  }
  return r;
}

const StoredTensor* SafetensorsFile::find(const std::string& name) const {
  for (const StoredTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsFile parse_safetensors(const std::byte* data, std::size_t size, const std::string& origin) {
  if (size < 8) fail(origin, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<std::uint8_t>(data[i]);
  if (header_len > kMaxHeaderBytes) fail(origin, "header length " + std::to_string(header_len) + " exceeds 100 MB");
  if (header_len > size - 8)
    fail(origin, "header length " + std::to_string(header_len) + " runs past the end of the " +
                     std::to_string(size) + "-byte file (truncated?)");
  const char* header = reinterpret_cast<const char*>(data + 8);
  DuplicateKeys duplicates;
  json j = json::parse(header, header + header_len, std::ref(duplicates), /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(origin, "header is not valid JSON");
  if (!duplicates.found.empty()) fail(origin, duplicates.found);
  if (!j.is_object()) fail(origin, "header is not a JSON object");

  SafetensorsFile file;
  const std::byte* body = data + 8 + header_len;
  const std::uint64_t body_size = size - 8 - header_len;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(origin, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) fail(origin, "__metadata__['" + printable(m.key()) + "'] is not a string");
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    file.tensors.push_back(parse_entry(origin, it.key(), it.value(), body, body_size));
    const json& off = it.value()["data_offsets"];
    ranges.emplace_back(off[0].get<std::uint64_t>(), off[1].get<std::uint64_t>());
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail(origin, "tensors' data_offsets overlap");
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  if (path.find('\0') != std::string::npos) fail(printable(path, 4096), "file name contains a NUL byte");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    fail(path, std::string("cannot open for reading: ") + std::strerror(e));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) != 0) fail(path, "cannot determine the file size");
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory, expected a safetensors file");
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file, expected a safetensors file");
  std::vector<std::byte> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      fail(path, std::string("read failed: ") + std::strerror(e));
    }
    if (n == 0) fail(path, "file shrank while it was read");
    got += static_cast<std::size_t>(n);
  }
  return parse_safetensors(bytes.data(), bytes.size(), path);
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  json header = json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::uint64_t offset = 0;
  for (const StoredTensor& t : file.tensors) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section is 8-byte aligned
  AtomicFileWriter out(path);
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const StoredTensor& t : file.tensors) out.write(t.bytes.data(), t.bytes.size());
  out.commit();
}

}  // namespace mixpa
