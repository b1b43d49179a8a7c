// scatterbrain/tools/accuracy_npy.h — the real-data mode of
// scatterbrain_accuracy: errors of every method against fp64 exact on a
// directory of stored Q/K/V .npy files (tools/README.md, accuracy_npy.cc).
#ifndef SCATTERBRAIN_TOOLS_ACCURACY_NPY_H_
#define SCATTERBRAIN_TOOLS_ACCURACY_NPY_H_

namespace scatterbrain {
namespace accuracy {

// True when the command line asks for the real-data mode (--npy_dir=...).
bool IsNpyMode(int argc, char** argv);

// Runs the real-data mode; prints Markdown tables on stdout, progress on
// stderr. Exit status: 0 unless a run or a file errors (1); 2 on bad flags.
// The targets are reported, not enforced.
int NpyMain(int argc, char** argv);

}  // namespace accuracy
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TOOLS_ACCURACY_NPY_H_
