"""scatterbrain_client — Python client of the scatterbrain attention service.

    import numpy as np
    import scatterbrain_client as sb

    out = sb.attend(q, k, v, method="scatterbrain", target="localhost:50051",
                    num_features=128, bucket_size=64)
    out, stats = sb.attend(q, k, v, method="exact", return_stats=True)

    with sb.Client("localhost:50051") as c:
        for r in c.attend_many([(q1, k1, v1), (q2, k2, v2, {"method": "exact"})]):
            print(r.request_id, r.error or r.output.shape, r.stats)

        with c.session(heads=8, dim=64, method="exact") as s:   # K/V on the server
            s.append(k, v)
            out = s.step(q1, k1, v1)                            # one token
"""

from .client import (AttendError, AttendResult, Client, HeadPlan, Request,
                     Session, attend, stats_to_dict)
from .client import pb as proto
from .client import pb_grpc as proto_grpc

__all__ = ["AttendError", "AttendResult", "Client", "HeadPlan", "Request",
           "Session", "attend", "stats_to_dict", "proto", "proto_grpc"]
__version__ = "0.1.0"
