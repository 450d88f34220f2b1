"""A one-node ONNX Runtime session running ``com.microsoft.MatMulNBits`` on a QuantLinear's codes.

MatMulNBits takes the weight as ``[N, n_blocks, block_bytes]`` (codes of one block of K, packed
low nibble first for 4 bits), ``scales [N * n_blocks]`` and optional packed zero points; absent
zero points mean ``2^(bits-1)``, our symmetric zero. A ragged last group is padded with zero
codes, which K (the true width) tells the kernel to ignore. Per-channel weights use one block
of the next power of two >= K. The packing is ``export.onnx_export.nbits_tensors``: the ONNX
export writes the same tensors into whole-model graphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from slimline.quant.linear import QuantLinear


def nbits_session(layer: QuantLinear, int8_act: bool) -> Any:
    """Build the ORT session (numpy in/out) computing ``x @ W_q^T`` without the bias."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from slimline.export.onnx_export import nbits_tensors

    t = nbits_tensors(layer)  # the packing the ONNX export writes, written once
    k, n = t["K"], t["N"]
    inits = [
        helper.make_tensor("w", TensorProto.UINT8, t["B"].shape, t["B"].tobytes(), raw=True),
        helper.make_tensor(
            "s", TensorProto.FLOAT, t["scales"].shape, t["scales"].tobytes(), raw=True
        ),
    ]
    inputs = ["x", "w", "s"]
    if "zero_points" in t:
        z = t["zero_points"]
        inits.append(helper.make_tensor("z", TensorProto.UINT8, z.shape, z.tobytes(), raw=True))
        inputs.append("z")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=t["bits"],
        block_size=t["block_size"],
        accuracy_level=4 if int8_act else 0,
    )
    graph = helper.make_graph(
        [node],
        "quant_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    # A model holds one session per layer (210 on SmolLM2), each with its own thread pool; with
    # spinning on, every pool's worker busy-waits after its run, so one decode step can leave
    # hundreds of threads spinning on 2 cores (217 threads seen in one bench process, which got
    # a fraction of its CPU share). Idle workers must sleep instead.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
