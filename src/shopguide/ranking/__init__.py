"""Protocol taobao-rank-v1: ranking queries from an event log and their metrics."""
