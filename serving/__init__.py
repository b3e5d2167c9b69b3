"""What runs in or manages the Triton server (numpy and onnxruntime; torch only on the GPU profile).

contract     tensor names, dtypes, limits: the one source of truth
request      the ranker's request parameters and top_k, validated
composition  embedding -> user tower -> scorer inputs -> cascade, written once
ranker       the ranker's request path, one function per route; RankerConfig
routing      auto's plan and the online cost model; load_meter its load signal
arrays       the request path's array operations on NumPy or torch
onnx_session ONNX Runtime sessions; inprocess the composition without a server
triton/      the Python-backend lifecycle classes; server/ the local launcher and supervisor
"""
