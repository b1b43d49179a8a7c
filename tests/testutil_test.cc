// tests/testutil_test.cc — the protobuf-free helpers of tests/testutil that
// other tests lean on: Process (output, waits, exit codes, signals),
// RunCommand, ScratchDir and the file helpers, FreePort / Listener /
// HttpGet. Children are /bin/sh one-liners, so nothing here needs the
// server.
#include <signal.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"
#include "tests/testutil/net.h"
#include "tests/testutil/process.h"

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using testutil::Process;

TEST(ProcessTest, OutputAndExitCode) {
  Process p({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"},
            "testutil_test");
  ASSERT_TRUE(p.started());
  EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 3);
  EXPECT_FALSE(p.running());
  EXPECT_EQ(p.output(), "out\nerr\n");
  EXPECT_EQ(p.ExitDescription(), "exit status 3");
  EXPECT_TRUE(testutil::Exists(p.log_path()));
}

TEST(ProcessTest, WaitForALineThenSignal) {
  Process p({"/bin/sh", "-c", "echo ready; exec sleep 30"}, "testutil_test");
  ASSERT_TRUE(p.WaitFor("ready\n", absl::Seconds(10))) << p.output();
  EXPECT_TRUE(p.running());
  EXPECT_EQ(p.WaitExit(absl::Milliseconds(50)), -1);  // still running
  EXPECT_EQ(p.ExitDescription(), "running");
  ASSERT_TRUE(p.Signal(SIGTERM));
  EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 128 + SIGTERM);
  EXPECT_EQ(p.ExitDescription(), "killed by signal 15");
  EXPECT_FALSE(p.Signal(SIGTERM));  // reaped: nothing to signal
}

TEST(ProcessTest, WaitForGivesUpWhenTheChildExitsOrTimeRunsOut) {
  Process quits({"/bin/sh", "-c", "echo something else"}, "testutil_test");
  const absl::Time start = absl::Now();
  EXPECT_FALSE(quits.WaitFor("ready", absl::Seconds(30)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));  // not the timeout
  Process silent({"/bin/sh", "-c", "exec sleep 30"}, "testutil_test");
  EXPECT_FALSE(silent.WaitFor("ready", absl::Milliseconds(100)));
  EXPECT_EQ(silent.Kill(), 128 + SIGKILL);
}

TEST(ProcessTest, ExecFailureExits127AndTheLogGoesWithTheProcess) {
  std::string log;
  {
    Process p({"/nonexistent/binary"}, "testutil_test");
    ASSERT_TRUE(p.started());
    EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 127);
    EXPECT_THAT(p.output(), HasSubstr("exec failed"));
    log = p.log_path();
  }
  EXPECT_FALSE(testutil::Exists(log));  // this test has not failed
}

TEST(RunCommandTest, SeparatesStdoutAndStderr) {
  testutil::ScratchDir dir("testutil_test");
  ASSERT_TRUE(dir.ok());
  const testutil::CommandResult r = testutil::RunCommand(
      {"/bin/sh", "-c", "printf 'a b'; printf 'c' >&2; exit 2", "ignored"},
      dir.path());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "a b");
  EXPECT_EQ(r.err, "c");
  // Arguments pass as they are: no shell quoting on the way.
  const testutil::CommandResult q = testutil::RunCommand(
      {"/bin/sh", "-c", "printf '%s' \"$1\"", "sh", "it's \"quoted\" $HOME"},
      dir.path());
  EXPECT_EQ(q.code, 0);
  EXPECT_EQ(q.out, "it's \"quoted\" $HOME");
}

TEST(FilesTest, ScratchDirReadWriteExists) {
  std::string path;
  {
    testutil::ScratchDir dir("testutil_test");
    ASSERT_TRUE(dir.ok());
    path = dir.path();
    EXPECT_TRUE(testutil::Exists(path));
    EXPECT_TRUE(dir.List().empty());
    ASSERT_TRUE(testutil::WriteFile(dir.File("a.bin"), std::string("x\0y", 3)));
    ASSERT_TRUE(testutil::WriteFile(dir.File("b.txt"), "hello"));
    ASSERT_TRUE(testutil::WriteFile(dir.File("b.txt"), "hi"));  // truncates
    EXPECT_EQ(testutil::ReadFile(dir.File("a.bin")), std::string("x\0y", 3));
    EXPECT_EQ(testutil::ReadFile(dir.File("b.txt")), "hi");
    EXPECT_EQ(testutil::ReadFile(dir.File("missing")), "");
    EXPECT_FALSE(testutil::Exists(dir.File("missing")));
    EXPECT_THAT(dir.List(), UnorderedElementsAre("a.bin", "b.txt"));
  }
  EXPECT_FALSE(testutil::Exists(path));  // removed with its contents
  EXPECT_TRUE(testutil::Exists(testutil::BinDir() + "/testutil_test"));
}

TEST(NetTest, FreePortListenerAndHttpGet) {
  const int port = testutil::FreePort();
  EXPECT_GT(port, 0);
  testutil::Listener busy;
  ASSERT_GT(busy.port(), 0);
  busy.Close();
  // Nothing listens there any more: an error is "".
  EXPECT_EQ(testutil::HttpGetResponse(busy.port(), "/metrics"), "");
  EXPECT_EQ(testutil::HttpGet(busy.port(), "/metrics"), "");
}

}  // namespace
}  // namespace scatterbrain
