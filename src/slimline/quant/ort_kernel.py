"""A one-node ONNX Runtime session running ``com.microsoft.MatMulNBits`` on a QuantLinear's codes.

MatMulNBits takes the weight as ``[N, n_blocks, block_bytes]`` (codes of one block of K, packed
low nibble first for 4 bits), ``scales [N * n_blocks]`` and optional packed zero points; absent
zero points mean ``2^(bits-1)``, our symmetric zero. A ragged last group is padded with zero
codes, which K (the true width) tells the kernel to ignore. Per-channel weights use one block
of the next power of two >= K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from slimline.quant.linear import QuantLinear


def _pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def nbits_session(layer: QuantLinear, int8_act: bool) -> Any:
    """Build the ORT session (numpy in/out) computing ``x @ W_q^T`` without the bias."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    bits, k, n = layer.scheme.bits, layer.in_features, layer.out_features
    block = layer.scheme.group_size or 1 << (k - 1).bit_length()
    block = max(block, 16)
    n_blocks = -(-k // block)
    codes = layer.codes()
    pad = n_blocks * block - k
    if pad:
        codes = torch.cat([codes, codes.new_zeros(n, pad)], 1)
    w = _pack_rows(codes.reshape(n, n_blocks, block), bits).contiguous().numpy()
    scales = layer.scale.float().contiguous().numpy()
    inits = [
        helper.make_tensor("w", TensorProto.UINT8, w.shape, w.tobytes(), raw=True),
        helper.make_tensor("s", TensorProto.FLOAT, scales.shape, scales.tobytes(), raw=True),
    ]
    inputs = ["x", "w", "s"]
    if not layer.scheme.symmetric:
        z = layer.zero
        if bits == 4:
            if z.shape[1] % 2:
                z = torch.cat([z, z.new_zeros(n, 1)], 1)
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        zn = z.contiguous().numpy()
        inits.append(helper.make_tensor("z", TensorProto.UINT8, zn.shape, zn.tobytes(), raw=True))
        inputs.append("z")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
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
