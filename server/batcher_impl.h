// scatterbrain/server/batcher_impl.h — template definitions of Batcher
// (included by batcher.h only).
#ifndef SCATTERBRAIN_SERVER_BATCHER_IMPL_H_
#define SCATTERBRAIN_SERVER_BATCHER_IMPL_H_
// Implementation pending (issue 3).
#endif  // SCATTERBRAIN_SERVER_BATCHER_IMPL_H_
