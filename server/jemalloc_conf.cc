// scatterbrain/server/jemalloc_conf.cc — jemalloc's settings for
// scatterbrain_server. Compiled only into that binary, and only when it links
// jemalloc (CMake option SB_JEMALLOC, on when libjemalloc-dev is installed).
// jemalloc reads this string when it starts; the MALLOC_CONF environment
// variable is read after it and overrides any setting (for example
// MALLOC_CONF=dirty_decay_ms:10000 to keep freed pages longer).
//
// Why jemalloc: the server's request buffers are large (a [1, 8, 16384, 64]
// float32 tensor is 32 MiB) and freed together at the end of a request, and
// gRPC's message buffers come and go on many threads. glibc's malloc kept
// most of that resident after a burst (three bursts of 16 such requests:
// 834 -> 930 -> 1220 MB resident afterwards, from 181 MB at rest), and
// calling malloc_trim twice a second still left 220-270 MB. With these
// settings jemalloc was back at 188-191 MB within 2 s of each burst
// (bench/burst_memory.py; figures in the README's "Security and limits").
//
//   background_thread:true  purging runs on jemalloc's own threads, on a
//       timer: memory freed as a burst ends goes back while the server is
//       idle. Without it purging happens only inside later malloc/free
//       calls (measured: 256-299 MB still resident 5 s after each burst).
//   dirty_decay_ms:1000     freed pages go back over about a second
//       instead of 10 s (the default): a burst's gigabytes do not linger,
//       while pages reused within a second under steady load still avoid
//       fresh page faults.
//   muzzy_decay_ms:0        no lazy MADV_FREE stage: pages are released
//       outright, so resident memory (what a container's limit and the OOM
//       killer count) drops at once rather than under memory pressure.

// NOLINTNEXTLINE(readability-identifier-naming): jemalloc's public symbol.
extern "C" const char* malloc_conf =
    "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";
