// tests/shm_registry_test.cc — the system shared-memory registry on real
// POSIX shared-memory objects: bytes written by the "client" are read in
// place and the server's writes seen by the client (unaligned offsets),
// registration errors naming what is wrong, Triton's duplicate / unknown
// name behaviour, owner scoping, bounds checks that never hand out a
// pointer outside the region (overflowing offsets included), a mapping
// kept alive by a span across Unregister, an object shrunk after
// registration, the region limits, and concurrent use.
#include "server/shm_registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "tests/testutil/shm.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::ShmObject;
using testutil::StatusIs;

constexpr uint64_t kPage = 4096;

TEST(ShmRegistryTest, ReadsAndWritesInPlaceAtAnUnalignedOffset) {
  ShmObject obj(3 * kPage);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  // Starts mid-page: the registry maps from the page boundary below.
  const uint64_t offset = kPage + 12;
  ASSERT_THAT(reg.Register("r", obj.key(), offset, 1000, "alice"), IsOk());
  std::memcpy(obj.data() + offset + 8, "hello", 5);

  auto span = reg.Resolve("r", 8, 5, "alice", "input 'Q'");
  ASSERT_THAT(span, IsOk());
  EXPECT_EQ(span->size, 5u);
  EXPECT_EQ(std::string(span->data, 5), "hello");

  std::memcpy(span->data, "HELLO", 5);  // the server writes an output
  EXPECT_EQ(std::string(obj.data() + offset + 8, 5), "HELLO");
}

TEST(ShmRegistryTest, RegisterErrorsNameWhatIsWrong) {
  ShmObject obj(64);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  EXPECT_THAT(reg.Register("", obj.key(), 0, 8, "a"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name")));
  EXPECT_THAT(reg.Register("r", "", 0, 8, "a"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key")));
  for (const char* bad : {"/../etc/passwd", "/a/b", "/", "/.."}) {
    EXPECT_THAT(reg.Register("r", bad, 0, 8, "a"),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("not a POSIX shared memory name")))
        << bad;
  }
  EXPECT_THAT(reg.Register("r", "/sb_test_no_such_object", 0, 8, "a"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("cannot open shared memory key "
                                 "'/sb_test_no_such_object'")));
  EXPECT_THAT(reg.Register("r", obj.key(), 0, 0, "a"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("byte_size must be positive")));
  EXPECT_THAT(reg.Register("r", obj.key(), 10, 60, "a"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("offset 10 + byte_size 60 is past the end "
                                 "of key '" +
                                 obj.key() + "' (64 bytes)")));
  EXPECT_THAT(
      reg.Register("r", obj.key(), std::numeric_limits<uint64_t>::max() - 1, 8,
                   "a"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out of range")));
  EXPECT_EQ(reg.region_count(), 0);
  // The whole object is fine.
  EXPECT_THAT(reg.Register("r", obj.key(), 0, 64, "a"), IsOk());
}

TEST(ShmRegistryTest, DuplicateNameIsAlreadyExistsPerOwner) {
  ShmObject obj(64);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  ASSERT_THAT(reg.Register("r", obj.key(), 0, 64, "alice"), IsOk());
  EXPECT_THAT(reg.Register("r", obj.key(), 0, 32, "alice"),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("'r' is already registered")));
  // Names are per owner: bob's "r" is another region.
  EXPECT_THAT(reg.Register("r", obj.key(), 0, 32, "bob"), IsOk());
  EXPECT_EQ(reg.region_count(), 2);
}

TEST(ShmRegistryTest, StatusListsTheOwnersRegionsOnly) {
  ShmObject obj(256);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  ASSERT_THAT(reg.Register("b", obj.key(), 16, 32, "alice"), IsOk());
  ASSERT_THAT(reg.Register("a", obj.key(), 0, 8, "alice"), IsOk());
  ASSERT_THAT(reg.Register("c", obj.key(), 0, 8, "bob"), IsOk());

  auto all = reg.Status("", "alice");
  ASSERT_THAT(all, IsOk());
  EXPECT_THAT(*all, ElementsAre(Field(&ShmRegionInfo::name, "a"),
                                Field(&ShmRegionInfo::name, "b")));
  auto one = reg.Status("b", "alice");
  ASSERT_THAT(one, IsOk());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].key, obj.key());
  EXPECT_EQ((*one)[0].offset, 16u);
  EXPECT_EQ((*one)[0].byte_size, 32u);

  EXPECT_THAT(reg.Status("zz", "alice"),
              StatusIs(absl::StatusCode::kNotFound,
                       "system shared memory region 'zz' is not registered"));
  // Bob's region is exactly as unknown to alice as one never registered.
  EXPECT_THAT(reg.Status("c", "alice"),
              StatusIs(absl::StatusCode::kNotFound,
                       "system shared memory region 'c' is not registered"));
  auto none = reg.Status("", "carol");
  ASSERT_THAT(none, IsOk());
  EXPECT_TRUE(none->empty());
}

TEST(ShmRegistryTest, UnregisterOneAllAndUnknown) {
  ShmObject obj(64);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  for (const char* n : {"a", "b", "c"}) {
    ASSERT_THAT(reg.Register(n, obj.key(), 0, 8, "alice"), IsOk());
  }
  ASSERT_THAT(reg.Register("a", obj.key(), 0, 8, "bob"), IsOk());

  EXPECT_THAT(reg.Unregister("nope", "alice"), IsOk());  // as Triton
  EXPECT_THAT(reg.Unregister("a", "alice"), IsOk());
  EXPECT_THAT(reg.Status("a", "alice"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(reg.region_count(), 3);

  EXPECT_THAT(reg.Unregister("", "alice"), IsOk());  // all of alice's
  EXPECT_EQ(reg.region_count(), 1);
  EXPECT_THAT(reg.Resolve("a", 0, 8, "bob", "input 'Q'"), IsOk());
  // The name is free again.
  EXPECT_THAT(reg.Register("b", obj.key(), 0, 8, "alice"), IsOk());
}

TEST(ShmRegistryTest, ResolveChecksRegistrationAndBounds) {
  ShmObject obj(kPage);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  ASSERT_THAT(reg.Register("r", obj.key(), 100, 64, "alice"), IsOk());

  EXPECT_THAT(reg.Resolve("x", 0, 4, "alice", "input 'Q'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "input 'Q': shared memory region 'x' is not "
                       "registered"));
  EXPECT_THAT(reg.Resolve("r", 0, 4, "bob", "input 'K'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "input 'K': shared memory region 'r' is not "
                       "registered"));
  EXPECT_THAT(reg.Resolve("r", 10, 100, "alice", "output 'OUT'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "output 'OUT': shared memory region 'r': offset 10 + "
                       "100 bytes past the region's 64"));
  EXPECT_THAT(reg.Resolve("r", 65, 0, "alice", "input 'V'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("offset 65 + 0 bytes")));
  // Sums that would wrap around 2^64 are refused, not wrapped into range.
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  EXPECT_THAT(reg.Resolve("r", 8, kMax - 4, "alice", "input 'V'"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(reg.Resolve("r", kMax, 2, "alice", "input 'V'"),
              StatusIs(absl::StatusCode::kInvalidArgument));

  // The exact edges are fine.
  obj.data()[100] = 'f';
  obj.data()[163] = 'l';
  auto whole = reg.Resolve("r", 0, 64, "alice", "input 'Q'");
  ASSERT_THAT(whole, IsOk());
  EXPECT_EQ(whole->data[0], 'f');  // the region's first byte: object's 100
  EXPECT_EQ(whole->data[63], 'l');
  auto end = reg.Resolve("r", 64, 0, "alice", "input 'Q'");
  ASSERT_THAT(end, IsOk());
  EXPECT_EQ(end->data, whole->data + 64);
  EXPECT_EQ(end->size, 0u);
}

TEST(ShmRegistryTest, SpanKeepsTheMappingAliveAcrossUnregister) {
  ShmObject obj(kPage);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  ASSERT_THAT(reg.Register("r", obj.key(), 0, kPage, "alice"), IsOk());
  auto span = reg.Resolve("r", 0, kPage, "alice", "output 'OUT'");
  ASSERT_THAT(span, IsOk());
  std::weak_ptr<const ShmMapping> watch = span->keep_alive;

  ASSERT_THAT(reg.Unregister("r", "alice"), IsOk());
  EXPECT_EQ(reg.region_count(), 0);
  EXPECT_THAT(reg.Resolve("r", 0, 4, "alice", "input 'Q'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not registered")));
  // The inference that resolved it still writes into mapped memory (were
  // it unmapped this would fault) and the client sees the bytes.
  ASSERT_FALSE(watch.expired());
  std::memcpy(span->data + 10, "late", 4);
  EXPECT_EQ(std::string(obj.data() + 10, 4), "late");

  span->keep_alive.reset();
  EXPECT_TRUE(watch.expired());  // unmapped once the last holder let go
}

TEST(ShmRegistryTest, ObjectShrunkAfterRegistrationIsRefused) {
  ShmObject obj(2 * kPage);
  ASSERT_TRUE(obj.ok());
  SystemShmRegistry reg;
  ASSERT_THAT(reg.Register("r", obj.key(), kPage, kPage, "alice"), IsOk());
  ASSERT_TRUE(obj.Resize(kPage / 2));
  // Touching the mapping now would raise SIGBUS in the server.
  EXPECT_THAT(reg.Resolve("r", 0, 8, "alice", "input 'Q'"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("has shrunk to 2048 bytes")));
  ASSERT_TRUE(obj.Resize(2 * kPage));
  EXPECT_THAT(reg.Resolve("r", 0, 8, "alice", "input 'Q'"), IsOk());
}

TEST(ShmRegistryTest, RegionLimits) {
  ShmObject obj(64);
  ASSERT_TRUE(obj.ok());
  ShmRegistryOptions options;
  options.max_regions = 3;
  options.max_regions_per_owner = 2;
  SystemShmRegistry reg(options);
  ASSERT_THAT(reg.Register("a", obj.key(), 0, 8, "alice"), IsOk());
  ASSERT_THAT(reg.Register("b", obj.key(), 0, 8, "alice"), IsOk());
  EXPECT_THAT(reg.Register("c", obj.key(), 0, 8, "alice"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_shm_regions_per_owner (2)")));
  ASSERT_THAT(reg.Register("a", obj.key(), 0, 8, "bob"), IsOk());
  EXPECT_THAT(reg.Register("a", obj.key(), 0, 8, "carol"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_shm_regions (3)")));
  ASSERT_THAT(reg.Unregister("", "alice"), IsOk());
  EXPECT_THAT(reg.Register("a", obj.key(), 0, 8, "carol"), IsOk());
  EXPECT_THAT(reg.Register("c", obj.key(), 0, 8, "alice"), IsOk());
}

TEST(ShmRegistryTest, ValidateOptions) {
  EXPECT_THAT(ValidateShmRegistryOptions({}), IsOk());
  ShmRegistryOptions o;
  o.max_regions = 0;
  EXPECT_THAT(ValidateShmRegistryOptions(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_shm_regions")));
  o = {};
  o.max_regions_per_owner = -1;
  EXPECT_THAT(ValidateShmRegistryOptions(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_shm_regions_per_owner")));
}

// Registrations, lookups and unregistrations from several threads: every
// resolved span reads the bytes its region holds, and nothing is left.
TEST(ShmRegistryTest, ConcurrentUse) {
  ShmObject obj(kPage);
  ASSERT_TRUE(obj.ok());
  for (uint64_t i = 0; i < kPage; ++i) obj.data()[i] = static_cast<char>(i);
  SystemShmRegistry reg;
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string owner = "owner" + std::to_string(t % 2);
      const std::string name = "r" + std::to_string(t);
      for (int i = 0; i < 200; ++i) {
        if (!reg.Register(name, obj.key(), 64 * t, 64, owner).ok()) ++bad;
        auto span = reg.Resolve(name, 1, 1, owner, "input 'Q'");
        if (!span.ok() || span->data[0] != static_cast<char>(64 * t + 1)) {
          ++bad;
        }
        if (!reg.Unregister(name, owner).ok()) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(reg.region_count(), 0);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
