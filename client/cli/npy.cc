// scatterbrain/client/cli/npy.cc — see npy.h.
#include "client/cli/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace scatterbrain {
namespace {

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.cc assumes a little-endian host"
#endif

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

absl::Status Bad(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", what));
}

enum class DType { kF4, kF2 };

struct Header {
  DType dtype = DType::kF4;
  std::vector<int64_t> shape;
  int64_t elements = 0;
  int64_t data_bytes = 0;
  size_t data_offset = 0;  // bytes from the start of the file
};

// Minimal parser for the Python dict literal in a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class DictParser {
 public:
  explicit DictParser(absl::string_view s) : s_(s) {}

  void SkipSpace() {
    while (pos_ < s_.size() &&
           std::isspace(static_cast<unsigned char>(s_[pos_]))) {
      ++pos_;
    }
  }
  bool Eat(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < s_.size() && s_[pos_] == c;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ >= s_.size();
  }
  bool String(std::string* out) {
    SkipSpace();
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) {
      return false;
    }
    const char quote = s_[pos_++];
    out->clear();
    while (pos_ < s_.size() && s_[pos_] != quote) {
      if (s_[pos_] == '\\')
        return false;  // escapes never occur in valid headers
      out->push_back(s_[pos_++]);
    }
    if (pos_ >= s_.size()) return false;
    ++pos_;
    return true;
  }
  bool Word(std::string* out) {
    SkipSpace();
    out->clear();
    while (pos_ < s_.size() &&
           std::isalpha(static_cast<unsigned char>(s_[pos_]))) {
      out->push_back(s_[pos_++]);
    }
    return !out->empty();
  }
  // Non-negative decimal integer, at most 18 digits (no overflow).
  bool Int(int64_t* out) {
    SkipSpace();
    size_t start = pos_;
    int64_t v = 0;
    while (pos_ < s_.size() &&
           std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      if (pos_ - start >= 18) return false;
      v = v * 10 + (s_[pos_] - '0');
      ++pos_;
    }
    if (pos_ == start) return false;
    // Python 2 era writers appended 'L' to longs.
    if (pos_ < s_.size() && s_[pos_] == 'L') ++pos_;
    *out = v;
    return true;
  }
  // A tuple of non-negative ints: (), (3,), (2, 3), (2, 3,).
  bool Tuple(std::vector<int64_t>* out) {
    out->clear();
    if (!Eat('(')) return false;
    if (Eat(')')) return true;
    while (true) {
      int64_t v;
      if (!Int(&v)) return false;
      out->push_back(v);
      if (Eat(')')) return true;
      if (!Eat(',')) return false;
      if (Eat(')')) return true;
    }
  }
  // Skips a value we do not interpret (only for unknown keys).
  bool SkipValue() {
    SkipSpace();
    if (pos_ >= s_.size()) return false;
    char c = s_[pos_];
    if (c == '\'' || c == '"') {
      std::string tmp;
      return String(&tmp);
    }
    int depth = 0;
    while (pos_ < s_.size()) {
      c = s_[pos_];
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return true;
        --depth;
      }
      if (c == ',' && depth == 0) return true;
      ++pos_;
    }
    return false;
  }

 private:
  absl::string_view s_;
  size_t pos_ = 0;
};

// Parses the fixed preamble: magic, version, header length. On success
// sets *header_len and *preamble_len (10 for v1, 12 for v2/v3).
absl::Status ParsePreamble(absl::string_view bytes, absl::string_view name,
                           uint32_t* header_len, size_t* preamble_len) {
  if (bytes.size() < kMagicLen ||
      std::memcmp(bytes.data(), kMagic, kMagicLen) != 0) {
    return Bad(name, "bad magic: not a NumPy .npy file");
  }
  if (bytes.size() < 10) {
    return Bad(name, "truncated header");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  if (major == 1) {
    *preamble_len = 10;
    *header_len = static_cast<uint32_t>(static_cast<unsigned char>(bytes[8])) |
                  static_cast<uint32_t>(static_cast<unsigned char>(bytes[9]))
                      << 8;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(name, "truncated header");
    *preamble_len = 12;
    uint32_t len = 0;
    for (int i = 3; i >= 0; --i) {
      len = (len << 8) | static_cast<unsigned char>(bytes[8 + i]);
    }
    *header_len = len;
  } else {
    return Bad(name, absl::StrFormat("unsupported .npy format version %d.%d",
                                     major, minor));
  }
  if (*header_len > kNpyMaxHeaderBytes) {
    return Bad(name, absl::StrFormat("header too long (%u bytes, limit %u)",
                                     *header_len, kNpyMaxHeaderBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<Header> ParseHeaderDict(absl::string_view text,
                                       absl::string_view name,
                                       int required_rank) {
  DictParser p(text);
  bool have_descr = false, have_order = false, have_shape = false;
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
  if (!p.Eat('{')) return Bad(name, "malformed header: expected a dict");
  while (!p.Eat('}')) {
    std::string key;
    if (!p.String(&key) || !p.Eat(':')) {
      return Bad(name, "malformed header: expected 'key': value");
    }
    if (key == "descr") {
      if (!p.String(&descr)) {
        // A list here is a structured dtype.
        return Bad(name,
                   "unsupported dtype: structured arrays are not "
                   "supported (want '<f4' or '<f2')");
      }
      have_descr = true;
    } else if (key == "fortran_order") {
      std::string w;
      if (!p.Word(&w) || (w != "True" && w != "False")) {
        return Bad(name, "malformed header: fortran_order is not True/False");
      }
      fortran = (w == "True");
      have_order = true;
    } else if (key == "shape") {
      if (!p.Tuple(&shape)) {
        return Bad(name,
                   "malformed header: shape is not a tuple of "
                   "non-negative integers");
      }
      have_shape = true;
    } else {
      if (!p.SkipValue()) return Bad(name, "malformed header");
    }
    if (!p.Eat(',')) {
      if (!p.Eat('}'))
        return Bad(name, "malformed header: expected ',' or '}'");
      break;
    }
  }
  if (!p.AtEnd()) return Bad(name, "malformed header: text after the dict");
  if (!have_descr || !have_order || !have_shape) {
    return Bad(name,
               "malformed header: needs 'descr', 'fortran_order' and "
               "'shape'");
  }

  Header h;
  int64_t item = 0;
  if (descr == "<f4") {
    h.dtype = DType::kF4;
    item = 4;
  } else if (descr == "<f2") {
    h.dtype = DType::kF2;
    item = 2;
  } else {
    return Bad(name, absl::StrCat("unsupported dtype '", descr,
                                  "' (want '<f4' or '<f2')"));
  }
  if (fortran) {
    return Bad(name, "fortran_order arrays are not supported (want C order)");
  }
  if (required_rank >= 0 && static_cast<int>(shape.size()) != required_rank) {
    return Bad(
        name,
        absl::StrFormat("wrong rank: shape (%s) has %d dimensions, want %d%s",
                        absl::StrJoin(shape, ", "), shape.size(), required_rank,
                        required_rank == 4 ? " [batch, heads, seq, dim]" : ""));
  }
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d != 0 && elements > kNpyMaxElements / d) {
      return Bad(name,
                 absl::StrFormat("array too large: shape (%s) exceeds "
                                 "%d elements",
                                 absl::StrJoin(shape, ", "), kNpyMaxElements));
    }
    elements *= d;
  }
  h.shape = std::move(shape);
  h.elements = elements;
  h.data_bytes = elements * item;
  return h;
}

absl::StatusOr<Header> ParseHeader(absl::string_view bytes,
                                   absl::string_view name, int required_rank) {
  uint32_t header_len = 0;
  size_t preamble = 0;
  if (absl::Status s = ParsePreamble(bytes, name, &header_len, &preamble);
      !s.ok()) {
    return s;
  }
  if (bytes.size() < preamble + header_len) {
    return Bad(name, "truncated header");
  }
  absl::StatusOr<Header> h =
      ParseHeaderDict(bytes.substr(preamble, header_len), name, required_rank);
  if (!h.ok()) return h.status();
  h->data_offset = preamble + header_len;
  return h;
}

absl::Status SizeCheck(const Header& h, int64_t file_bytes,
                       absl::string_view name) {
  const int64_t have = file_bytes - static_cast<int64_t>(h.data_offset);
  if (have < h.data_bytes) {
    return Bad(name,
               absl::StrFormat(
                   "truncated data: shape (%s) needs %d bytes, file has %d",
                   absl::StrJoin(h.shape, ", "), h.data_bytes, have));
  }
  if (have > h.data_bytes) {
    return Bad(
        name,
        absl::StrFormat("size mismatch: shape (%s) needs %d bytes, file has %d "
                        "(%d extra)",
                        absl::StrJoin(h.shape, ", "), h.data_bytes, have,
                        have - h.data_bytes));
  }
  return absl::OkStatus();
}

void Decode(const Header& h, const char* src, std::vector<float>* out) {
  out->resize(static_cast<size_t>(h.elements));
  if (h.dtype == DType::kF4) {
    if (h.elements > 0) std::memcpy(out->data(), src, h.data_bytes);
    return;
  }
  for (int64_t i = 0; i < h.elements; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, 2);
    (*out)[i] = HalfToFloat(bits);
  }
}

std::string EncodeHeader(const std::vector<int64_t>& shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string dict = absl::StrCat(
      "{'descr': '<f4', 'fortran_order': False, "
      "'shape': (",
      dims, "), }");
  // Pad with spaces so that the data starts on a 64-byte boundary; the
  // header ends with '\n'.
  size_t preamble = 10;
  size_t total = preamble + dict.size() + 1;
  if (dict.size() + 1 + 63 > 65535) {
    preamble = 12;
    total = preamble + dict.size() + 1;
  }
  const size_t padded = (total + 63) / 64 * 64;
  const size_t header_len = padded - preamble;
  dict.append(header_len - dict.size() - 1, ' ');
  dict.push_back('\n');

  std::string out(kMagic, kMagicLen);
  if (preamble == 10) {
    out.push_back('\x01');
    out.push_back('\x00');
    out.push_back(static_cast<char>(header_len & 0xff));
    out.push_back(static_cast<char>((header_len >> 8) & 0xff));
  } else {
    out.push_back('\x02');
    out.push_back('\x00');
    for (int i = 0; i < 4; ++i) {
      out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
    }
  }
  out += dict;
  return out;
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(ErrnoText(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes,
                                  absl::string_view name, int required_rank) {
  absl::StatusOr<Header> h = ParseHeader(bytes, name, required_rank);
  if (!h.ok()) return h.status();
  if (absl::Status s = SizeCheck(*h, static_cast<int64_t>(bytes.size()), name);
      !s.ok()) {
    return s;
  }
  NpyArray a;
  a.shape = h->shape;
  Decode(*h, bytes.data() + h->data_offset, &a.data);
  return a;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path, int required_rank) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", ErrnoText(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    return absl::InvalidArgumentError(msg);
  }
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};

  struct stat st;
  if (fstat(fileno(f), &st) != 0) {
    return Bad(path, absl::StrCat("cannot stat: ", ErrnoText(errno)));
  }
  if (!S_ISREG(st.st_mode)) return Bad(path, "not a regular file");
  const int64_t file_bytes = static_cast<int64_t>(st.st_size);

  // Preamble (at most 12 bytes), then the header it announces.
  std::string head(12, '\0');
  head.resize(std::fread(head.data(), 1, head.size(), f));
  uint32_t header_len = 0;
  size_t preamble = 0;
  if (absl::Status s = ParsePreamble(head, path, &header_len, &preamble);
      !s.ok()) {
    return s;
  }
  const size_t want = preamble + header_len;
  if (head.size() < want) {
    const size_t had = head.size();
    head.resize(want);
    head.resize(had + std::fread(head.data() + had, 1, want - had, f));
  }
  absl::StatusOr<Header> h = ParseHeader(head, path, required_rank);
  if (!h.ok()) return h.status();
  // Check against the real file size before allocating anything.
  if (absl::Status s = SizeCheck(*h, file_bytes, path); !s.ok()) return s;

  if (std::fseek(f, static_cast<long>(h->data_offset), SEEK_SET) != 0) {
    return Bad(path, absl::StrCat("cannot seek: ", ErrnoText(errno)));
  }
  NpyArray a;
  a.shape = h->shape;
  if (h->dtype == DType::kF4) {
    a.data.resize(static_cast<size_t>(h->elements));
    const size_t got =
        h->elements ? std::fread(a.data.data(), 4, a.data.size(), f) : 0;
    if (got != a.data.size()) {
      return Bad(path, absl::StrFormat("truncated data: read %d of %d values",
                                       got, a.data.size()));
    }
  } else {
    std::string raw(static_cast<size_t>(h->data_bytes), '\0');
    const size_t got =
        raw.empty() ? 0 : std::fread(raw.data(), 1, raw.size(), f);
    if (got != raw.size()) {
      return Bad(path, absl::StrFormat("truncated data: read %d of %d bytes",
                                       got, raw.size()));
    }
    Decode(*h, raw.data(), &a.data);
  }
  return a;
}

std::string EncodeNpy(const std::vector<int64_t>& shape, const float* data) {
  std::string out = EncodeHeader(shape);
  const int64_t n = Product(shape);
  if (n > 0) {
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n) * 4);
  }
  return out;
}

absl::Status WriteNpy(const std::string& path,
                      const std::vector<int64_t>& shape, const float* data) {
  for (int64_t d : shape) {
    if (d < 0) return Bad(path, "negative dimension in shape");
  }
  const std::string header = EncodeHeader(shape);
  const int64_t n = Product(shape);
  if (n > 0 && data == nullptr) return Bad(path, "no data to write");

  // Temporary file next to the target so that rename() is atomic.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos
                              ? "."
                              : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base =
      slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = absl::StrCat(dir, "/.", base, ".tmp.XXXXXX");
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat(path, ": cannot create a temporary file in '", dir,
                     "': ", ErrnoText(errno)));
  }
  auto fail = [&](absl::string_view what, const absl::Status& s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": ", what, ": ", s.message()));
  };
  if (absl::Status s = WriteAll(fd, header.data(), header.size()); !s.ok()) {
    return fail("write failed", s);
  }
  if (n > 0) {
    if (absl::Status s = WriteAll(fd, reinterpret_cast<const char*>(data),
                                  static_cast<size_t>(n) * 4);
        !s.ok()) {
      return fail("write failed", s);
    }
  }
  // mkstemp creates 0600; give the file the usual permissions (umask applies).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  if (::fsync(fd) != 0) {
    return fail("fsync failed", absl::InternalError(ErrnoText(errno)));
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": close failed: ", ErrnoText(err)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": rename failed: ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

}  // namespace scatterbrain
